//! Native filters where jaq's output text differs from jq's: `_tojson` (jq's number and string
//! formatting, which `tostring`, `tojson` and the `@` formats build on) and `_base64d`.

use jaq_core::native::{Fun, bome, run, v};
use jaq_core::{Cv, Error, ValR};
use jaq_json::{Num, Val};

use super::value::type_name;

use super::jq::Data;

pub fn funs() -> impl Iterator<Item = Fun<Data>> {
    [
        run(("_tojson", v(0), |cv: Cv<Data>| {
            let mut out = String::new();
            write_json(&mut out, &cv.1);
            bome(Ok(Val::from(out)))
        })),
        run(("_base64d", v(0), |cv: Cv<Data>| bome(base64_decode(&cv.1)))),
        run(("_join", v(1), |mut cv: Cv<Data>| {
            let separator = cv.0.pop_var();
            bome(join(&cv.1, &separator))
        })),
        run(("_tonumber", v(0), |cv: Cv<Data>| bome(to_number(&cv.1)))),
        run(("_tostring", v(0), |cv: Cv<Data>| {
            let text = match &cv.1 {
                Val::TStr(_) => return bome(Ok(cv.1)),
                other => {
                    let mut out = String::new();
                    write_json(&mut out, other);
                    out
                }
            };
            bome(Ok(Val::from(text)))
        })),
    ]
    .into_iter()
}

/// Appends `value` as jq prints it compactly.
pub fn write_json(out: &mut String, value: &Val) {
    match value {
        Val::Null => out.push_str("null"),
        Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Val::Num(n) => out.push_str(&number_text(n)),
        Val::TStr(bytes) | Val::BStr(bytes) => write_string(out, &String::from_utf8_lossy(bytes)),
        Val::Arr(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item);
            }
            out.push(']');
        }
        Val::Obj(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match k {
                    Val::TStr(bytes) | Val::BStr(bytes) => {
                        write_string(out, &String::from_utf8_lossy(bytes))
                    }
                    other => write_json(out, other),
                }
                out.push(':');
                write_json(out, v);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A number as jq prints it: literals in decNumber's canonical form (`1.0`, `1E+2`), computed
/// doubles in the shortest form that reads back, switching to `1e+17` / `1e-05` as jq does.
pub fn number_text(n: &Num) -> String {
    match n {
        Num::Int(i) => i.to_string(),
        Num::BigInt(big) => big.to_string(),
        Num::Float(f) => double_text(*f),
        Num::Dec(text) => decimal_text(text),
    }
}

fn double_text(f: f64) -> String {
    if f.is_nan() {
        return "null".to_owned();
    }
    let f = if f.is_infinite() {
        f64::MAX.copysign(f)
    } else {
        f
    };
    if f == 0.0 {
        return "0".to_owned();
    }
    // `{:e}` gives the shortest round-trip digits: "1.2345e16".
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').expect("`{:e}` has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exponent
        .parse::<i32>()
        .expect("`{:e}` exponents are integers")
        + 1;
    let sign = if f < 0.0 { "-" } else { "" };
    let n = digits.len() as i32;
    // David Gay's g_fmt, as jq's jvp_dtoa_fmt uses it.
    if decpt <= -4 || decpt > n + 15 {
        let mut text = format!("{sign}{}", &digits[..1]);
        if n > 1 {
            text.push('.');
            text.push_str(&digits[1..]);
        }
        let e = decpt - 1;
        text.push_str(&format!("e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs()));
        text
    } else if decpt <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{sign}{digits}{}", "0".repeat((decpt - n) as usize))
    } else {
        format!(
            "{sign}{}.{}",
            &digits[..decpt as usize],
            &digits[decpt as usize..]
        )
    }
}

/// decNumber's to-scientific-string of a JSON number literal.
fn decimal_text(literal: &str) -> String {
    let (negative, body) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], body[at + 1..].parse::<i64>().unwrap_or(0)),
        None => (body, 0),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut coefficient: String = format!("{int_part}{frac_part}");
    let exponent = exp - frac_part.len() as i64;
    let trimmed = coefficient.trim_start_matches('0');
    coefficient = if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    };
    let digits = coefficient.len() as i64;
    let adjusted = exponent + digits - 1;
    // decNumber keeps the sign of a negative zero literal.
    let sign = if negative { "-" } else { "" };
    if exponent <= 0 && adjusted >= -6 {
        if exponent == 0 {
            return format!("{sign}{coefficient}");
        }
        let point = digits + exponent;
        if point > 0 {
            let (a, b) = coefficient.split_at(point as usize);
            format!("{sign}{a}.{b}")
        } else {
            format!("{sign}0.{}{coefficient}", "0".repeat((-point) as usize))
        }
    } else {
        let mut text = format!("{sign}{}", &coefficient[..1]);
        if digits > 1 {
            text.push('.');
            text.push_str(&coefficient[1..]);
        }
        text.push_str(&format!(
            "E{}{}",
            if adjusted < 0 { '-' } else { '+' },
            adjusted.abs()
        ));
        text
    }
}

/// jq's `tonumber`: a number as it is; a string only when the whole of it is a number as
/// libjq reads one (a sign, digits with at most one point, an exponent; `nan`, `inf`,
/// `infinity` in any case), kept as the literal it is (`"1.50" | tonumber | tostring` is
/// `"1.50"`). No spaces, no hexadecimal, no thousands separators.
fn to_number(value: &Val) -> ValR<Val> {
    let text = match value {
        Val::Num(_) => return Ok(value.clone()),
        Val::TStr(bytes) | Val::BStr(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => {
            let mut shown = String::new();
            write_json(&mut shown, other);
            return Err(Error::str(format!(
                "{} ({shown}) cannot be parsed as a number",
                type_name(other)
            )));
        }
    };
    number_literal(&text).ok_or_else(|| {
        Error::str(format!(
            "string ({}) cannot be parsed as a number",
            serde_json::Value::from(text.clone())
        ))
    })
}

/// The number `text` spells, in full, as libjq's strtod reads it.
fn number_literal(text: &str) -> Option<Val> {
    let (negative, body) = match text.as_bytes().first()? {
        b'+' => (false, &text[1..]),
        b'-' => (true, &text[1..]),
        _ => (false, text),
    };
    let sign = if negative { -1.0 } else { 1.0 };
    match body.to_ascii_lowercase().as_str() {
        "nan" => return Some(Val::Num(Num::Float(f64::NAN))),
        "inf" | "infinity" => return Some(Val::Num(Num::Float(sign * f64::INFINITY))),
        _ => {}
    }
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => {
            let exponent = &body[at + 1..];
            let unsigned = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if unsigned.is_empty() || !digits(unsigned) {
                return None;
            }
            (&body[..at], Some(exponent))
        }
        None => (body, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.len() + fraction.len() == 0 || !digits(whole) || !digits(fraction) {
        return None;
    }
    // The same number as a JSON literal, which jaq keeps as written.
    let whole = whole.trim_start_matches('0');
    let mut json = String::from(if negative { "-" } else { "" });
    json.push_str(if whole.is_empty() { "0" } else { whole });
    if !fraction.is_empty() {
        json.push('.');
        json.push_str(fraction);
    }
    if let Some(exponent) = exponent {
        json.push('e');
        json.push_str(exponent);
    }
    jaq_json::read::parse_single_num(json.as_bytes()).map(Val::Num)
}

/// jq's `join`: null is "", booleans and numbers print as `tostring` does, strings as they are;
/// arrays and objects cannot be joined.
fn join(input: &Val, separator: &Val) -> ValR<Val> {
    let items: Vec<&Val> = match input {
        Val::Arr(items) => items.iter().collect(),
        Val::Obj(map) => map.values().collect(),
        other => {
            return Err(Error::str(format!(
                "Cannot iterate over {}",
                type_name(other)
            )));
        }
    };
    let separator = match separator {
        Val::TStr(bytes) | Val::BStr(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Val::Null => String::new(),
        other => {
            return Err(Error::str(format!(
                "string (\"\") and {} ({other}) cannot be added",
                type_name(other)
            )));
        }
    };
    let mut out: Option<String> = None;
    for item in items {
        let text = match item {
            Val::Null => String::new(),
            Val::TStr(bytes) | Val::BStr(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Val::Bool(_) | Val::Num(_) => {
                let mut text = String::new();
                write_json(&mut text, item);
                text
            }
            other => {
                let sofar = out.clone().unwrap_or_default() + &separator;
                return Err(Error::str(format!(
                    "string ({}) and {} ({other}) cannot be added",
                    serde_json::Value::from(sofar),
                    type_name(other)
                )));
            }
        };
        out = Some(match out {
            None => text,
            Some(acc) => acc + &separator + &text,
        });
    }
    Ok(Val::from(out.unwrap_or_default()))
}

fn base64_decode(value: &Val) -> ValR<Val> {
    let text = match value {
        Val::TStr(bytes) | Val::BStr(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => {
            return Err(Error::str(format!(
                "{other} cannot be base64-decoded, as it is not a string"
            )));
        }
    };
    let invalid = || {
        Error::str(format!(
            "string ({}) is not valid base64 data",
            serde_json::Value::from(text.clone())
        ))
    };
    let mut bits = 0u32;
    let mut count = 0u32;
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for c in text.trim_end_matches('=').bytes() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(invalid()),
        };
        bits = (bits << 6) | u32::from(sextet);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    if !text.is_empty() && out.is_empty() {
        return Err(invalid());
    }
    Ok(Val::from(String::from_utf8_lossy(&out).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_as_jq_prints_them() {
        let cases = [
            (3.0, "3"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e-5, "1e-05"),
            (1e17, "1e+17"),
            (2e20, "2e+20"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1e-7, "1e-07"),
            (123456.789, "123456.789"),
            (-0.0, "0"),
            (f64::INFINITY, "1.7976931348623157e+308"),
            (0.0001, "0.0001"),
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000"),
            (123456789012345678.0, "123456789012345680"),
            (0.00012, "0.00012"),
            (-2.5, "-2.5"),
        ];
        for (f, want) in cases {
            assert_eq!(double_text(f), want, "{f}");
        }
    }

    #[test]
    fn tonumber_reads_what_libjq_reads_and_nothing_else() {
        for text in [
            "3.2.1", "12abc", "1,000", " 12 ", "0x10", "", "-", "1e", "1_000", ".e1",
        ] {
            assert!(number_literal(text).is_none(), "{text:?}");
        }
        let cases = [
            (".5", "0.5"),
            ("5.", "5"),
            ("+5", "5"),
            ("0012", "12"),
            ("1.50", "1.50"),
            ("5.e2", "5E+2"),
            ("nan", "null"),
            ("-Infinity", "-1.7976931348623157e+308"),
        ];
        for (text, printed) in cases {
            let Some(Val::Num(n)) = number_literal(text) else {
                panic!("{text:?} is a number")
            };
            assert_eq!(number_text(&n), printed, "{text:?}");
        }
    }

    #[test]
    fn literals_print_in_decnumber_form() {
        let cases = [
            ("1e2", "1E+2"),
            ("1E+2", "1E+2"),
            ("1.50", "1.50"),
            ("0.00001", "0.00001"),
            ("1e-7", "1E-7"),
            ("1.0e3", "1.0E+3"),
            ("12345678901234567890123", "12345678901234567890123"),
            ("-0.0", "-0.0"),
            ("1e1000", "1E+1000"),
            ("1.5e300", "1.5E+300"),
            ("1.0", "1.0"),
            ("-12.5", "-12.5"),
        ];
        for (literal, want) in cases {
            assert_eq!(decimal_text(literal), want, "{literal}");
        }
    }
}
