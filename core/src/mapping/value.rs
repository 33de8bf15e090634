//! Conversions between jaq's values and `serde_json` values, and raw JSON text into jaq values.

use jaq_json::{Num, Val};
use serde_json::{Map, Number, Value};

/// jq's name for the type of `value`, as its error messages use it.
pub(crate) fn type_name(value: &Val) -> &'static str {
    match value {
        Val::Null => "null",
        Val::Bool(_) => "boolean",
        Val::Num(_) => "number",
        Val::TStr(_) | Val::BStr(_) => "string",
        Val::Arr(_) => "array",
        Val::Obj(_) => "object",
    }
}

/// Parses raw JSON text straight into a jaq value, keeping number literals as written (so that
/// `1.0 | tostring` is `"1.0"` and big integers survive, as in jq 1.7).
pub fn parse_raw(text: &[u8]) -> Result<Val, String> {
    jaq_json::read::parse_single(text).map_err(|e| e.to_string())
}

/// A `serde_json` value as a jaq value (for items that arrive already parsed).
pub fn from_json(value: &Value) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) if isize::try_from(i).is_ok() => Val::from(i as isize),
            _ => jaq_json::read::parse_single_num(n.to_string().as_bytes())
                .map(Val::Num)
                .unwrap_or(Val::Null),
        },
        Value::String(s) => Val::from(s.clone()),
        Value::Array(items) => items.iter().map(from_json).collect(),
        Value::Object(map) => {
            let mut out = jaq_json::Map::default();
            for (k, v) in map {
                out.insert(Val::from(k.clone()), from_json(v));
            }
            Val::obj(out)
        }
    }
}

fn number_from_text(text: &str) -> Value {
    match text.parse::<Number>() {
        Ok(n) => Value::Number(n),
        Err(_) => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::Null),
    }
}

/// A jaq value as JSON, as jq prints it: NaN is null, infinities are the largest doubles.
pub fn to_json(value: &Val) -> Value {
    match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(Num::Int(i)) => Value::from(*i as i64),
        Val::Num(Num::Float(f)) if f.is_nan() => Value::Null,
        Val::Num(Num::Float(f)) if f.is_infinite() => Value::from(f64::MAX.copysign(*f)),
        Val::Num(Num::Float(f)) => Value::from(*f),
        Val::Num(Num::Dec(text)) => number_from_text(text),
        Val::Num(Num::BigInt(big)) => number_from_text(&big.to_string()),
        Val::TStr(bytes) | Val::BStr(bytes) => {
            Value::String(String::from_utf8_lossy(bytes).into_owned())
        }
        Val::Arr(items) => Value::Array(items.iter().map(to_json).collect()),
        Val::Obj(map) => {
            let mut out = Map::new();
            for (k, v) in map.iter() {
                let key = match k {
                    Val::TStr(bytes) | Val::BStr(bytes) => {
                        String::from_utf8_lossy(bytes).into_owned()
                    }
                    other => other.to_string(),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_json() {
        let value = json!({"a": [1, -2, 1.5, "x", null, true], "b": {"c": 12345678901234u64}});
        assert_eq!(to_json(&from_json(&value)), value);
        let raw = parse_raw(br#"{"n": 1.0, "big": 100000000000000000000}"#).unwrap();
        let back = to_json(&raw);
        assert_eq!(back["n"].as_f64(), Some(1.0));
        assert_eq!(back["big"].as_f64(), Some(1e20));
    }
}
