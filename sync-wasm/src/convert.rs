//! The number rule shared with JavaScript, and plain objects for the
//! API's small results (status, changes, errors).
//!
//! Document values cross the boundary packed (see `packed.rs`): numbers
//! that are safe integers become Int, other numbers Float; back in
//! JavaScript, Ints within ±2^53 are numbers and larger ones bigints.

use sync_core::Value;
use wasm_bindgen::JsValue;

/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE: f64 = 9_007_199_254_740_991.0;

/// Whether `n` is an integer a JavaScript number holds exactly (as
/// `Number.isSafeInteger`): those numbers are stored as Int.
pub fn is_safe_integer(n: f64) -> bool {
    n.fract() == 0.0 && n.abs() <= MAX_SAFE
}

/// A number from JavaScript as a Concord value: a safe integer is an Int,
/// any other number a Float.
pub(crate) fn number_value(n: f64) -> Value {
    if is_safe_integer(n) {
        Value::Int(n as i64)
    } else {
        Value::Float(n)
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
