//! Values and documents as foreign code sees them.

use std::collections::HashMap;

/// A stored value: a JSON-like tree, plus raw bytes. Integers and floats
/// stay distinct (`1` is not `1.0`). The idiomatic layers map it to the
/// language's own types (Kotlin `Any?`, Python objects, a Swift `Codable` enum).
#[derive(Clone, Debug, PartialEq, uniffi::Enum)]
pub enum Value {
    /// No value.
    NullValue,
    /// A boolean.
    BoolValue {
        /// The boolean.
        value: bool,
    },
    /// A signed 64-bit integer.
    IntValue {
        /// The integer.
        value: i64,
    },
    /// A 64-bit float (finite: NaN and infinities are refused on write).
    FloatValue {
        /// The float.
        value: f64,
    },
    /// A UTF-8 string.
    StringValue {
        /// The string.
        value: String,
    },
    /// Raw bytes.
    BytesValue {
        /// The bytes.
        value: Vec<u8>,
    },
    /// A list, stored and replaced as a whole.
    ListValue {
        /// The items, in order.
        items: Vec<Value>,
    },
    /// A map from string keys, stored and replaced as a whole.
    MapValue {
        /// The entries.
        entries: HashMap<String, Value>,
    },
}

impl From<Value> for sync_ffi::Value {
    fn from(value: Value) -> sync_ffi::Value {
        use sync_ffi::Value as V;
        match value {
            Value::NullValue => V::Null,
            Value::BoolValue { value } => V::Bool(value),
            Value::IntValue { value } => V::Int(value),
            Value::FloatValue { value } => V::Float(value),
            Value::StringValue { value } => V::String(value),
            Value::BytesValue { value } => V::Bytes(value),
            Value::ListValue { items } => V::List(items.into_iter().map(Into::into).collect()),
            Value::MapValue { entries } => {
                V::Map(entries.into_iter().map(|(k, v)| (k, v.into())).collect())
            }
        }
    }
}

impl From<sync_ffi::Value> for Value {
    fn from(value: sync_ffi::Value) -> Value {
        use sync_ffi::Value as V;
        match value {
            V::Null => Value::NullValue,
            V::Bool(value) => Value::BoolValue { value },
            V::Int(value) => Value::IntValue { value },
            V::Float(value) => Value::FloatValue { value },
            V::String(value) => Value::StringValue { value },
            V::Bytes(value) => Value::BytesValue { value },
            V::List(items) => Value::ListValue {
                items: items.into_iter().map(Into::into).collect(),
            },
            V::Map(entries) => Value::MapValue {
                entries: entries.into_iter().map(|(k, v)| (k, v.into())).collect(),
            },
        }
    }
}

/// A document: its id, its fields and its revision (for `put_if`).
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct Document {
    /// The document id.
    pub id: String,
    /// Its fields, by name.
    pub fields: HashMap<String, Value>,
    /// Its revision: pass it to `put_if` to write only if nobody wrote since.
    pub revision: String,
}

impl From<sync_ffi::Document> for Document {
    fn from(doc: sync_ffi::Document) -> Document {
        Document {
            id: doc.id,
            fields: doc.fields.into_iter().map(|(k, v)| (k, v.into())).collect(),
            revision: doc.revision.to_string(),
        }
    }
}

/// Fields for a write, in the Rust API's form.
pub(crate) fn to_fields(
    fields: HashMap<String, Value>,
) -> impl Iterator<Item = (String, sync_ffi::Value)> {
    fields.into_iter().map(|(k, v)| (k, v.into()))
}
