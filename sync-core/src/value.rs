//! Field values: the JSON-like data a document field holds.
//!
//! A list or map is one opaque field value: writing it replaces the whole
//! value, and merge never looks inside it.

use core::fmt;
use std::collections::BTreeMap;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Deepest nesting of lists and maps a value may have. Deeper values are
/// refused when written locally and when decoded, so no recursion over a
/// value can exhaust the stack.
pub const MAX_VALUE_DEPTH: usize = 64;

/// A field value.
///
/// Floats compare by bit pattern, so `NaN == NaN` and `0.0 != -0.0`: equality
/// means "the same stored value", which is what merge and tests need.
#[derive(Clone, Debug, Default)]
pub enum Value {
    /// No value.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    String(String),
    /// Raw bytes.
    Bytes(Vec<u8>),
    /// A list of values, stored and replaced as a whole.
    List(Vec<Value>),
    /// A map from string keys to values, stored and replaced as a whole.
    Map(BTreeMap<String, Value>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Value::String(a), Value::String(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            (Value::Map(a), Value::Map(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Value {
    /// Nesting depth: 0 for scalars, 1 for a list of scalars, and so on.
    pub fn depth(&self) -> usize {
        match self {
            Value::List(items) => 1 + items.iter().map(Value::depth).max().unwrap_or(0),
            Value::Map(entries) => 1 + entries.values().map(Value::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Bytes of payload this value carries (string and byte contents, 8 per
    /// number), a rough measure used for batch limits and memory reports.
    pub fn payload_len(&self) -> usize {
        match self {
            Value::Null | Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 8,
            Value::String(s) => s.len(),
            Value::Bytes(b) => b.len(),
            Value::List(items) => items.iter().map(Value::payload_len).sum(),
            Value::Map(entries) => entries.iter().map(|(k, v)| k.len() + v.payload_len()).sum(),
        }
    }

    /// An upper bound on the value's encoded size in bytes (every length
    /// prefix and tag counted at its widest), used to keep batches and
    /// frames within their limits without encoding twice.
    pub fn encoded_len_bound(&self) -> usize {
        const TAG_AND_LEN: usize = 11;
        match self {
            Value::Null | Value::Bool(_) => 2,
            Value::Int(_) => TAG_AND_LEN,
            Value::Float(_) => 9,
            Value::String(s) => TAG_AND_LEN + s.len(),
            Value::Bytes(b) => TAG_AND_LEN + b.len(),
            Value::List(items) => {
                TAG_AND_LEN + items.iter().map(Value::encoded_len_bound).sum::<usize>()
            }
            Value::Map(entries) => {
                TAG_AND_LEN
                    + entries
                        .iter()
                        .map(|(k, v)| 10 + k.len() + v.encoded_len_bound())
                        .sum::<usize>()
            }
        }
    }

    /// Converts to JSON.
    ///
    /// Bytes become `{"$bytes": "<base64>"}`; a map whose only key starts
    /// with `$` is wrapped as `{"$map": {...}}` so it cannot be mistaken for
    /// such a marker. Non-finite floats have no JSON form and are refused.
    pub fn to_json(&self) -> Result<serde_json::Value, JsonError> {
        use serde_json::Value as J;
        Ok(match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => {
                J::Number(serde_json::Number::from_f64(*f).ok_or(JsonError::NonFiniteFloat(*f))?)
            }
            Value::String(s) => J::String(s.clone()),
            Value::Bytes(b) => single_key_object(BYTES_MARKER, J::String(crate::base64::encode(b))),
            Value::List(items) => {
                J::Array(items.iter().map(Value::to_json).collect::<Result<_, _>>()?)
            }
            Value::Map(entries) => {
                let object: serde_json::Map<String, J> = entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.to_json()?)))
                    .collect::<Result<_, JsonError>>()?;
                let looks_like_marker =
                    entries.len() == 1 && entries.keys().all(|k| k.starts_with('$'));
                if looks_like_marker {
                    single_key_object(MAP_MARKER, J::Object(object))
                } else {
                    J::Object(object)
                }
            }
        })
    }

    /// Converts from JSON, the inverse of [`Value::to_json`].
    ///
    /// Integers that fit `i64` become [`Value::Int`], other numbers
    /// [`Value::Float`]; integers beyond `i64` are refused rather than rounded.
    pub fn from_json(json: &serde_json::Value) -> Result<Value, JsonError> {
        from_json_at(json, 0)
    }
}

const BYTES_MARKER: &str = "$bytes";
const MAP_MARKER: &str = "$map";

fn single_key_object(key: &str, value: serde_json::Value) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    object.insert(key.into(), value);
    serde_json::Value::Object(object)
}

fn from_json_at(json: &serde_json::Value, depth: usize) -> Result<Value, JsonError> {
    use serde_json::Value as J;
    let nested = |d: usize| {
        if d > MAX_VALUE_DEPTH {
            Err(JsonError::TooDeep)
        } else {
            Ok(d)
        }
    };
    Ok(match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if n.is_u64() {
                return Err(JsonError::IntegerOutOfRange(n.to_string()));
            } else {
                Value::Float(
                    n.as_f64()
                        .ok_or_else(|| JsonError::IntegerOutOfRange(n.to_string()))?,
                )
            }
        }
        J::String(s) => Value::String(s.clone()),
        J::Array(items) => {
            let d = nested(depth + 1)?;
            Value::List(
                items
                    .iter()
                    .map(|v| from_json_at(v, d))
                    .collect::<Result<_, _>>()?,
            )
        }
        J::Object(object) => {
            let d = nested(depth + 1)?;
            if object.len() == 1 {
                if let Some(J::String(b64)) = object.get(BYTES_MARKER) {
                    return crate::base64::decode(b64)
                        .map(Value::Bytes)
                        .ok_or(JsonError::InvalidBase64);
                }
                if let Some(J::Object(inner)) = object.get(MAP_MARKER) {
                    return map_from_json(inner, d);
                }
            }
            return map_from_json(object, d);
        }
    })
}

fn map_from_json(
    object: &serde_json::Map<String, serde_json::Value>,
    depth: usize,
) -> Result<Value, JsonError> {
    object
        .iter()
        .map(|(k, v)| Ok((k.clone(), from_json_at(v, depth)?)))
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map(Value::Map)
}

/// Why a value could not be converted to or from JSON.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// NaN and the infinities have no JSON representation.
    #[error("float {0} is not finite and has no JSON representation")]
    NonFiniteFloat(f64),
    /// A JSON integer does not fit in a signed 64-bit integer.
    #[error("integer {0} does not fit in a signed 64-bit integer")]
    IntegerOutOfRange(String),
    /// A `{"$bytes": ...}` marker did not hold valid base64.
    #[error("\"$bytes\" must hold standard padded base64")]
    InvalidBase64,
    /// Lists and maps nest deeper than [`MAX_VALUE_DEPTH`].
    #[error("value nests lists and maps deeper than {MAX_VALUE_DEPTH} levels")]
    TooDeep,
}

macro_rules! impl_from {
    ($($from:ty => |$v:ident| $body:expr),* $(,)?) => {
        $(impl From<$from> for Value {
            fn from($v: $from) -> Value { $body }
        })*
    };
}

impl_from! {
    bool => |v| Value::Bool(v),
    i64 => |v| Value::Int(v),
    i32 => |v| Value::Int(v.into()),
    u32 => |v| Value::Int(v.into()),
    f64 => |v| Value::Float(v),
    String => |v| Value::String(v),
    &str => |v| Value::String(v.into()),
    Vec<u8> => |v| Value::Bytes(v),
    Vec<Value> => |v| Value::List(v),
    BTreeMap<String, Value> => |v| Value::Map(v),
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

impl fmt::Display for Value {
    /// Shows the JSON form, or the debug form when JSON cannot carry it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_json() {
            Ok(json) => write!(f, "{json}"),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

// The binary encoding (docs/PROTOCOL.md, "Value"): a variant index, then the
// payload. Written by hand so decoding can bound the nesting depth.
const VARIANTS: &[&str] = &[
    "Null", "Bool", "Int", "Float", "String", "Bytes", "List", "Map",
];

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit_variant("Value", 0, "Null"),
            Value::Bool(v) => s.serialize_newtype_variant("Value", 1, "Bool", v),
            Value::Int(v) => s.serialize_newtype_variant("Value", 2, "Int", v),
            Value::Float(v) => s.serialize_newtype_variant("Value", 3, "Float", v),
            Value::String(v) => s.serialize_newtype_variant("Value", 4, "String", v),
            Value::Bytes(v) => s.serialize_newtype_variant("Value", 5, "Bytes", &RawBytes(v)),
            Value::List(v) => s.serialize_newtype_variant("Value", 6, "List", &ListRef(v)),
            Value::Map(v) => s.serialize_newtype_variant("Value", 7, "Map", &MapRef(v)),
        }
    }
}

/// A field value as the state stores it: a [`Value`] in 24 bytes instead of
/// 32 (boxed slices and a boxed map instead of growable vectors and an
/// inline map), since every stored field carries one. It compares and
/// encodes exactly as the `Value` it was made from; the public API converts
/// at its edges.
#[derive(Clone, Debug)]
pub(crate) enum StoredValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(Box<str>),
    Bytes(Box<[u8]>),
    List(Box<[Value]>),
    // An inline map is 24 bytes, which would make every stored value 32;
    // maps are rare enough that the extra allocation is the cheaper side.
    #[allow(clippy::box_collection)]
    Map(Box<BTreeMap<String, Value>>),
}

// On 64-bit targets; wasm32's pointers are half as wide.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<Option<StoredValue>>() == 24);

impl From<Value> for StoredValue {
    // Inlined: every field a local write stores converts once, and a call
    // cost more than the scalars' conversion.
    #[inline]
    fn from(value: Value) -> StoredValue {
        match value {
            Value::Null => StoredValue::Null,
            Value::Bool(v) => StoredValue::Bool(v),
            Value::Int(v) => StoredValue::Int(v),
            Value::Float(v) => StoredValue::Float(v),
            Value::String(v) => StoredValue::String(v.into_boxed_str()),
            Value::Bytes(v) => StoredValue::Bytes(v.into_boxed_slice()),
            Value::List(v) => StoredValue::List(v.into_boxed_slice()),
            Value::Map(v) => StoredValue::Map(Box::new(v)),
        }
    }
}

impl StoredValue {
    /// A copy as the public type.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            StoredValue::Null => Value::Null,
            StoredValue::Bool(v) => Value::Bool(*v),
            StoredValue::Int(v) => Value::Int(*v),
            StoredValue::Float(v) => Value::Float(*v),
            StoredValue::String(v) => Value::String(v.to_string()),
            StoredValue::Bytes(v) => Value::Bytes(v.to_vec()),
            StoredValue::List(v) => Value::List(v.to_vec()),
            StoredValue::Map(v) => Value::Map((**v).clone()),
        }
    }
}

/// A field value borrowed from the state: what the read API
/// ([`crate::State::get_field`], [`crate::state::DocumentRef`]) hands out
/// without copying. Scalars are copied out, strings, bytes, lists and maps
/// are borrowed; [`ValueRef::to_value`] makes an owned [`Value`].
///
/// It compares as [`Value`] does (floats by bit pattern), with other
/// `ValueRef`s and with `Value`s.
///
/// ```
/// use sync_core::{Timestamp, Replica, ReplicaConfig, ReplicaId, Value, value::ValueRef};
///
/// let mut replica = Replica::new(ReplicaId(1), ReplicaConfig::default());
/// replica.put(Timestamp::from_unix_ms(1_000), "todos", "milk", [("title", Value::from("Buy milk"))])?;
/// let title = replica.get_field("todos", "milk", "title");
/// assert_eq!(title, Some(ValueRef::String("Buy milk")));
/// assert_eq!(title.and_then(|v| v.as_str()), Some("Buy milk"));
/// assert_eq!(title.unwrap(), Value::from("Buy milk"));
/// # Ok::<(), sync_core::WriteError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub enum ValueRef<'a> {
    /// No value.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    String(&'a str),
    /// Raw bytes.
    Bytes(&'a [u8]),
    /// A list of values.
    List(&'a [Value]),
    /// A map from string keys to values.
    Map(&'a BTreeMap<String, Value>),
}

impl<'a> ValueRef<'a> {
    /// An owned copy.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(v) => Value::Bool(v),
            ValueRef::Int(v) => Value::Int(v),
            ValueRef::Float(v) => Value::Float(v),
            ValueRef::String(v) => Value::String(v.to_owned()),
            ValueRef::Bytes(v) => Value::Bytes(v.to_vec()),
            ValueRef::List(v) => Value::List(v.to_vec()),
            ValueRef::Map(v) => Value::Map(v.clone()),
        }
    }

    /// Whether it is [`ValueRef::Null`].
    pub fn is_null(self) -> bool {
        matches!(self, ValueRef::Null)
    }

    /// The boolean, if it is one.
    pub fn as_bool(self) -> Option<bool> {
        match self {
            ValueRef::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The integer, if it is one.
    pub fn as_i64(self) -> Option<i64> {
        match self {
            ValueRef::Int(v) => Some(v),
            _ => None,
        }
    }

    /// The number as a float, if it is a float or an integer.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            ValueRef::Float(v) => Some(v),
            ValueRef::Int(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The string, if it is one.
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            ValueRef::String(v) => Some(v),
            _ => None,
        }
    }

    /// The bytes, if it is a byte string.
    pub fn as_bytes(self) -> Option<&'a [u8]> {
        match self {
            ValueRef::Bytes(v) => Some(v),
            _ => None,
        }
    }

    /// The items, if it is a list.
    pub fn as_list(self) -> Option<&'a [Value]> {
        match self {
            ValueRef::List(v) => Some(v),
            _ => None,
        }
    }

    /// The entries, if it is a map.
    pub fn as_map(self) -> Option<&'a BTreeMap<String, Value>> {
        match self {
            ValueRef::Map(v) => Some(v),
            _ => None,
        }
    }
}

impl<'a> From<&'a Value> for ValueRef<'a> {
    fn from(value: &'a Value) -> ValueRef<'a> {
        match value {
            Value::Null => ValueRef::Null,
            Value::Bool(v) => ValueRef::Bool(*v),
            Value::Int(v) => ValueRef::Int(*v),
            Value::Float(v) => ValueRef::Float(*v),
            Value::String(v) => ValueRef::String(v),
            Value::Bytes(v) => ValueRef::Bytes(v),
            Value::List(v) => ValueRef::List(v),
            Value::Map(v) => ValueRef::Map(v),
        }
    }
}

impl From<ValueRef<'_>> for Value {
    fn from(value: ValueRef<'_>) -> Value {
        value.to_value()
    }
}

impl PartialEq for ValueRef<'_> {
    /// As [`Value`]'s: floats by bit pattern.
    fn eq(&self, other: &Self) -> bool {
        match (*self, *other) {
            (ValueRef::Null, ValueRef::Null) => true,
            (ValueRef::Bool(a), ValueRef::Bool(b)) => a == b,
            (ValueRef::Int(a), ValueRef::Int(b)) => a == b,
            (ValueRef::Float(a), ValueRef::Float(b)) => a.to_bits() == b.to_bits(),
            (ValueRef::String(a), ValueRef::String(b)) => a == b,
            (ValueRef::Bytes(a), ValueRef::Bytes(b)) => a == b,
            (ValueRef::List(a), ValueRef::List(b)) => a == b,
            (ValueRef::Map(a), ValueRef::Map(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for ValueRef<'_> {}

impl PartialEq<Value> for ValueRef<'_> {
    fn eq(&self, other: &Value) -> bool {
        *self == ValueRef::from(other)
    }
}

impl PartialEq<ValueRef<'_>> for Value {
    fn eq(&self, other: &ValueRef<'_>) -> bool {
        ValueRef::from(self) == *other
    }
}

impl fmt::Display for ValueRef<'_> {
    /// As [`Value`]'s: the JSON form (this copies the value).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.to_value(), f)
    }
}

impl StoredValue {
    /// The value borrowed, as the read API hands it out.
    pub(crate) fn view(&self) -> ValueRef<'_> {
        match self {
            StoredValue::Null => ValueRef::Null,
            StoredValue::Bool(v) => ValueRef::Bool(*v),
            StoredValue::Int(v) => ValueRef::Int(*v),
            StoredValue::Float(v) => ValueRef::Float(*v),
            StoredValue::String(v) => ValueRef::String(v),
            StoredValue::Bytes(v) => ValueRef::Bytes(v),
            StoredValue::List(v) => ValueRef::List(v),
            StoredValue::Map(v) => ValueRef::Map(v),
        }
    }
}

impl PartialEq for StoredValue {
    /// As [`Value`]'s: floats by bit pattern.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (StoredValue::Null, StoredValue::Null) => true,
            (StoredValue::Bool(a), StoredValue::Bool(b)) => a == b,
            (StoredValue::Int(a), StoredValue::Int(b)) => a == b,
            (StoredValue::Float(a), StoredValue::Float(b)) => a.to_bits() == b.to_bits(),
            (StoredValue::String(a), StoredValue::String(b)) => a == b,
            (StoredValue::Bytes(a), StoredValue::Bytes(b)) => a == b,
            (StoredValue::List(a), StoredValue::List(b)) => a == b,
            (StoredValue::Map(a), StoredValue::Map(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for StoredValue {}

impl Serialize for StoredValue {
    /// Byte for byte as [`Value`]'s encoding of the same value.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StoredValue::Null => s.serialize_unit_variant("Value", 0, "Null"),
            StoredValue::Bool(v) => s.serialize_newtype_variant("Value", 1, "Bool", v),
            StoredValue::Int(v) => s.serialize_newtype_variant("Value", 2, "Int", v),
            StoredValue::Float(v) => s.serialize_newtype_variant("Value", 3, "Float", v),
            StoredValue::String(v) => s.serialize_newtype_variant("Value", 4, "String", &**v),
            StoredValue::Bytes(v) => s.serialize_newtype_variant("Value", 5, "Bytes", &RawBytes(v)),
            StoredValue::List(v) => s.serialize_newtype_variant("Value", 6, "List", &ListRef(v)),
            StoredValue::Map(v) => s.serialize_newtype_variant("Value", 7, "Map", &MapRef(v)),
        }
    }
}

struct RawBytes<'a>(&'a [u8]);
impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct ListRef<'a>(&'a [Value]);
impl Serialize for ListRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(item)?;
        }
        seq.end()
    }
}

struct MapRef<'a>(&'a BTreeMap<String, Value>);
impl Serialize for MapRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        ValueSeed { depth: 0 }.deserialize(d)
    }
}

/// Decodes one value `depth` levels below the top.
#[derive(Clone, Copy)]
struct ValueSeed {
    depth: usize,
}

impl ValueSeed {
    fn child<E: de::Error>(self) -> Result<ValueSeed, E> {
        if self.depth >= MAX_VALUE_DEPTH {
            return Err(E::custom(format_args!(
                "value nests deeper than {MAX_VALUE_DEPTH} levels"
            )));
        }
        Ok(ValueSeed {
            depth: self.depth + 1,
        })
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_enum("Value", VARIANTS, self)
    }
}

impl<'de> Visitor<'de> for ValueSeed {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Concord value")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, variant) = data.variant::<VariantTag>()?;
        Ok(match tag.0 {
            0 => {
                variant.unit_variant()?;
                Value::Null
            }
            1 => Value::Bool(variant.newtype_variant()?),
            2 => Value::Int(variant.newtype_variant()?),
            3 => Value::Float(variant.newtype_variant()?),
            4 => Value::String(variant.newtype_variant()?),
            5 => Value::Bytes(variant.newtype_variant_seed(BytesSeed)?),
            6 => Value::List(variant.newtype_variant_seed(ListSeed(self.child()?))?),
            _ => Value::Map(variant.newtype_variant_seed(MapSeed(self.child()?))?),
        })
    }
}

/// A variant index, accepted as a number (binary formats) or a name.
struct VariantTag(u8);

impl<'de> Deserialize<'de> for VariantTag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TagVisitor;
        impl Visitor<'_> for TagVisitor {
            type Value = VariantTag;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value variant index 0..=7")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<VariantTag, E> {
                u8::try_from(v)
                    .ok()
                    .filter(|&i| usize::from(i) < VARIANTS.len())
                    .map(VariantTag)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<VariantTag, E> {
                VARIANTS
                    .iter()
                    .position(|name| *name == v)
                    .and_then(|i| u8::try_from(i).ok())
                    .map(VariantTag)
                    .ok_or_else(|| E::unknown_variant(v, VARIANTS))
            }
        }
        d.deserialize_identifier(TagVisitor)
    }
}

struct BytesSeed;
impl<'de> DeserializeSeed<'de> for BytesSeed {
    type Value = Vec<u8>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(self)
    }
}
impl<'de> Visitor<'de> for BytesSeed {
    type Value = Vec<u8>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
        Ok(v.to_vec())
    }
    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(v)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        let mut out = Vec::new();
        while let Some(b) = seq.next_element()? {
            out.push(b);
        }
        Ok(out)
    }
}

struct ListSeed(ValueSeed);
impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = Vec<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Value>, D::Error> {
        d.deserialize_seq(self)
    }
}
impl<'de> Visitor<'de> for ListSeed {
    type Value = Vec<Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of values")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Value>, A::Error> {
        // Never trust a length prefix for preallocation: the items must arrive.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element_seed(self.0)? {
            out.push(item);
        }
        Ok(out)
    }
}

struct MapSeed(ValueSeed);
impl<'de> DeserializeSeed<'de> for MapSeed {
    type Value = BTreeMap<String, Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}
impl<'de> Visitor<'de> for MapSeed {
    type Value = BTreeMap<String, Value>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from strings to values")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.0)?;
            if out.insert(key, value).is_some() {
                return Err(de::Error::custom("duplicate key in map value"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_list(depth: usize) -> Value {
        (0..depth).fold(Value::Int(1), |v, _| Value::List(vec![v]))
    }

    /// The state's compact form encodes, compares and converts back exactly
    /// as the value it was made from, for every kind.
    #[test]
    fn stored_values_encode_and_compare_as_values() {
        let mut map = BTreeMap::new();
        map.insert("k".to_string(), Value::Float(-0.0));
        let values = [
            Value::Null,
            Value::Bool(true),
            Value::Int(-7),
            Value::Float(f64::NAN),
            Value::Float(0.0),
            Value::String("héllo".into()),
            Value::Bytes(vec![0, 255]),
            Value::List(vec![Value::Int(1), "x".into(), nested_list(3)]),
            Value::Map(map),
        ];
        for value in &values {
            let stored = StoredValue::from(value.clone());
            assert_eq!(
                postcard::to_allocvec(&stored).unwrap(),
                postcard::to_allocvec(value).unwrap()
            );
            assert_eq!(stored.to_value(), *value);
            for other in &values {
                let other_stored = StoredValue::from(other.clone());
                assert_eq!(
                    stored == other_stored,
                    value == other,
                    "{value:?} vs {other:?}"
                );
            }
        }
    }

    #[test]
    fn json_round_trip_of_every_kind() {
        let mut map = BTreeMap::new();
        map.insert("n".to_string(), Value::Null);
        map.insert("b".to_string(), Value::Bytes(vec![0, 1, 2, 255]));
        map.insert("f".to_string(), Value::Float(1.0));
        map.insert("i".to_string(), Value::Int(i64::MIN));
        map.insert(
            "l".to_string(),
            Value::List(vec![Value::Bool(true), "s".into()]),
        );
        let value = Value::Map(map);
        assert_eq!(Value::from_json(&value.to_json().unwrap()).unwrap(), value);
    }

    #[test]
    fn marker_lookalike_maps_survive_json() {
        let mut map = BTreeMap::new();
        map.insert("$bytes".to_string(), Value::String("AAAA".into()));
        let value = Value::Map(map);
        assert_eq!(Value::from_json(&value.to_json().unwrap()).unwrap(), value);
    }

    #[test]
    fn json_refuses_what_it_cannot_carry() {
        assert!(matches!(
            Value::Float(f64::NAN).to_json(),
            Err(JsonError::NonFiniteFloat(_))
        ));
        let big: serde_json::Value = serde_json::from_str("18446744073709551615").unwrap();
        assert!(matches!(
            Value::from_json(&big),
            Err(JsonError::IntegerOutOfRange(_))
        ));
        let bad: serde_json::Value = serde_json::from_str(r#"{"$bytes":"!!"}"#).unwrap();
        assert_eq!(Value::from_json(&bad), Err(JsonError::InvalidBase64));
    }

    #[test]
    fn binary_round_trip_and_depth_bound() {
        let ok = nested_list(MAX_VALUE_DEPTH);
        let bytes = postcard::to_allocvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), ok);
        let too_deep = postcard::to_allocvec(&nested_list(MAX_VALUE_DEPTH + 1)).unwrap();
        assert!(postcard::from_bytes::<Value>(&too_deep).is_err());
    }

    #[test]
    fn floats_compare_by_bits() {
        assert_eq!(Value::Float(f64::NAN), Value::Float(f64::NAN));
        assert_ne!(Value::Float(0.0), Value::Float(-0.0));
    }
}
