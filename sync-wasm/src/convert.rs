//! JavaScript values to Concord values and back.
//!
//! null and undefined → Null; booleans; numbers that are safe integers →
//! Int, other numbers → Float; bigints that fit in 64 bits → Int; strings;
//! `Uint8Array`/`ArrayBuffer` → Bytes; arrays → List; plain objects → Map.
//! Anything else (functions, symbols, class instances such as `Date`) is
//! refused with a message naming the field. Back in JavaScript, Ints within
//! ±2^53 are numbers and larger ones bigints.

use std::collections::BTreeMap;

use sync_core::Value;
use wasm_bindgen::JsCast;
use wasm_bindgen::JsValue;

/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE: f64 = 9_007_199_254_740_991.0;

/// Whether `n` is an integer a JavaScript number holds exactly (as
/// `Number.isSafeInteger`): those numbers are stored as Int.
pub fn is_safe_integer(n: f64) -> bool {
    n.fract() == 0.0 && n.abs() <= MAX_SAFE
}

/// Nesting deeper than this is refused (a cycle would otherwise recurse
/// forever); sync-core's own limit is lower still.
const MAX_DEPTH: usize = 64;

/// `value` as a Concord value; `path` names it in errors.
pub(crate) fn to_value(value: &JsValue, path: &str) -> Result<Value, String> {
    to_value_at(value, path, 0)
}

fn to_value_at(value: &JsValue, path: &str, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path} is nested too deeply"));
    }
    if value.is_null() || value.is_undefined() {
        return Ok(Value::Null);
    }
    if let Some(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Some(n) = value.as_f64() {
        return Ok(if is_safe_integer(n) {
            Value::Int(n as i64)
        } else {
            Value::Float(n)
        });
    }
    if let Some(s) = value.as_string() {
        return Ok(Value::String(s));
    }
    if value.is_bigint() {
        let big: &js_sys::BigInt = value.unchecked_ref();
        return i64::try_from(big.clone())
            .map(Value::Int)
            .map_err(|_| format!("{path} is a bigint outside the 64-bit range"));
    }
    if let Some(array) = value.dyn_ref::<js_sys::Uint8Array>() {
        return Ok(Value::Bytes(array.to_vec()));
    }
    if value.is_instance_of::<js_sys::ArrayBuffer>() {
        return Ok(Value::Bytes(js_sys::Uint8Array::new(value).to_vec()));
    }
    if let Some(array) = value.dyn_ref::<js_sys::Array>() {
        let mut list = Vec::with_capacity(array.length() as usize);
        for (i, item) in array.iter().enumerate() {
            list.push(to_value_at(&item, &format!("{path}[{i}]"), depth + 1)?);
        }
        return Ok(Value::List(list));
    }
    if is_plain_object(value) {
        let mut map = BTreeMap::new();
        for (key, item) in entries(value) {
            if item.is_undefined() {
                continue;
            }
            let inner = to_value_at(&item, &format!("{path}.{key}"), depth + 1)?;
            map.insert(key, inner);
        }
        return Ok(Value::Map(map));
    }
    Err(format!(
        "{path} cannot be stored: only null, booleans, numbers, bigints, strings, Uint8Array, arrays and plain objects can (convert dates to numbers or strings)"
    ))
}

/// Whether `value` is an object made by `{}` or `Object.create(null)`.
fn is_plain_object(value: &JsValue) -> bool {
    if !value.is_object() || value.is_function() {
        return false;
    }
    let proto = js_sys::Object::get_prototype_of(value);
    proto.is_null() || proto == js_sys::Object::get_prototype_of(&js_sys::Object::new().into())
}

/// The own enumerable string-keyed properties of an object.
fn entries(value: &JsValue) -> Vec<(String, JsValue)> {
    let object: &js_sys::Object = value.unchecked_ref();
    js_sys::Object::entries(object)
        .iter()
        .filter_map(|pair| {
            let pair: js_sys::Array = pair.unchecked_into();
            Some((pair.get(0).as_string()?, pair.get(1)))
        })
        .collect()
}

/// A document's fields from a plain object: each property one field
/// (properties set to `undefined` are left out, as JSON does).
pub(crate) fn to_fields(value: &JsValue) -> Result<Vec<(String, Value)>, String> {
    if !is_plain_object(value) {
        return Err("a document must be a plain object of fields".into());
    }
    let mut fields = Vec::new();
    for (key, item) in entries(value) {
        if item.is_undefined() {
            continue;
        }
        let inner = to_value(&item, &key)?;
        fields.push((key, inner));
    }
    Ok(fields)
}

/// `value` as a JavaScript value.
pub(crate) fn from_value(value: &Value) -> JsValue {
    match value {
        Value::Null => JsValue::NULL,
        Value::Bool(b) => JsValue::from_bool(*b),
        Value::Int(i) if (*i as f64).abs() <= MAX_SAFE => JsValue::from_f64(*i as f64),
        Value::Int(i) => js_sys::BigInt::from(*i).into(),
        Value::Float(f) => JsValue::from_f64(*f),
        Value::String(s) => JsValue::from_str(s),
        Value::Bytes(b) => js_sys::Uint8Array::from(&b[..]).into(),
        Value::List(items) => items
            .iter()
            .map(from_value)
            .collect::<js_sys::Array>()
            .into(),
        Value::Map(map) => object(map.iter().map(|(k, v)| (k.as_str(), from_value(v)))),
    }
}

/// A plain object with these properties.
pub(crate) fn object<'a>(props: impl IntoIterator<Item = (&'a str, JsValue)>) -> JsValue {
    let object = js_sys::Object::new();
    for (key, value) in props {
        let _ = js_sys::Reflect::set(&object, &JsValue::from_str(key), &value);
    }
    object.into()
}
