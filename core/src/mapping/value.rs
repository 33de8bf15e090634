//! Conversions between jaq's values and `serde_json` values, and raw JSON text into jaq values.

use jaq_json::{Num, Val};
use serde_json::{Map, Value};

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

/// A number's value as a double, as libjq reads it (a literal too big for a double is infinite).
fn as_double(n: &Num) -> f64 {
    match n {
        Num::Int(i) => *i as f64,
        Num::Float(f) => *f,
        Num::Dec(text) => text.parse().unwrap_or(f64::NAN),
        Num::BigInt(big) => big.to_string().parse().unwrap_or(f64::NAN),
    }
}

/// A number as Ocean's jq binding hands it over (`_jv_to_python`): its double, an integer when
/// whole (`99.0` → `99`, `-0.0` → `0`, `1785612345678901234` → `1785612345678901248`), else a
/// float; NaN is null and infinities are the largest doubles. Whole doubles beyond 64 bits stay
/// floats here (the same double Port stores; Ocean prints all their digits).
fn ocean_number(n: &Num) -> Value {
    let f = as_double(n);
    if f.is_nan() {
        return Value::Null;
    }
    if f.is_infinite() {
        return Value::from(f64::MAX.copysign(f));
    }
    if f.fract() == 0.0 {
        // 2^63 and 2^64: whole doubles in these ranges convert exactly.
        if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
            return Value::from(f as i64);
        }
        if (0.0..1.844_674_407_370_955_2e19).contains(&f) {
            return Value::from(f as u64);
        }
    }
    Value::from(f)
}

/// A jaq value as JSON, as Ocean's jq binding hands a mapping's output over (and so as Ocean
/// sends it): numbers as [`ocean_number`] says, at any depth. Inside jq nothing changes:
/// `1.0 | tostring` is still `"1.0"`.
pub fn to_json(value: &Val) -> Value {
    match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => ocean_number(n),
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
        assert_eq!(back["n"], json!(1));
        assert_eq!(back["big"].as_f64(), Some(1e20));
    }

    #[test]
    fn numbers_leave_as_oceans_binding_hands_them_over() {
        let cases = [
            ("99.0", json!(99)),
            ("-0.0", json!(0)),
            ("2.5", json!(2.5)),
            ("1785612345678901234", json!(1785612345678901248u64)),
            ("-9007199254740993", json!(-9007199254740992i64)),
            ("12345678901234567890.0", json!(12345678901234567168u64)),
            ("1e1000", json!(f64::MAX)),
            ("-1e1000", json!(-f64::MAX)),
            ("1e-300", json!(1e-300)),
        ];
        for (text, want) in cases {
            assert_eq!(
                to_json(&parse_raw(text.as_bytes()).unwrap()),
                want,
                "{text}"
            );
        }
    }
}
