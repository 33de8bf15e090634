//! Shared by the golden tests.

use serde_json::Value;

/// JSON equality, numbers included: an integer equals only an integer (Ocean sends a whole
/// double as an integer: `99`, never `99.0`, and the state's hash must agree), a float only a
/// float of the same value (integers beyond 64 bits are read as floats on both sides).
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
