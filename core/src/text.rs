//! Text from outside (identifiers, item values, Port's messages) made safe to print: a line of
//! log or terminal output must not be forged by a newline or an escape code inside it.

use std::borrow::Cow;

/// `text` with control characters (newlines, escape codes, ...) written as escapes, and
/// everything else as it is.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// An error and its causes on one line ("a: b: c"), each said once: reqwest repeats its own
/// message as its first cause.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// What kind of JSON value `value` is, for an error that must not show the value itself.
pub fn value_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "nothing",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a map",
    }
}

/// A serde error message without the value it quotes: configuration values (a secret, a file's
/// content) never reach an error. `invalid type: string "…", expected u64` becomes
/// `expected u64, found a string`.
pub fn without_values(message: &str) -> String {
    let kind = |found: &str| {
        found
            .split(['"', '`'])
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    if let Some(rest) = message.strip_prefix("invalid type: ")
        && let Some((found, expected)) = rest.rsplit_once(", expected ")
    {
        return format!("expected {expected}, found a {}", kind(found));
    }
    if let Some(rest) = message.strip_prefix("invalid value: ")
        && let Some((found, expected)) = rest.rsplit_once(", expected ")
    {
        return format!("expected {expected}, found another {}", kind(found));
    }
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((_, expected)) = rest.rsplit_once(", expected ")
    {
        return format!("unknown value, expected {expected}");
    }
    if message.starts_with("invalid length") || message.starts_with("invalid type") {
        return "has a value of the wrong kind".to_owned();
    }
    message.to_owned()
}

/// A JSON value as text for a person or a query string: a string as it is (no quotes),
/// anything else as JSON (`true`, `3`, `{"a":1}`).
pub fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `url` without the `user:password@` part.
pub fn redact_url(url: &str) -> Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Cow::Borrowed(url);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{scheme}://[redacted]@{}", &rest[at + 1..])),
        None => Cow::Borrowed(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_lose_their_values() {
        assert_eq!(
            without_values(
                r#"invalid type: string "{\"client_secret\": \"s3cr3t\", expected u64", expected struct PortSettings"#
            ),
            "expected struct PortSettings, found a string"
        );
        assert_eq!(
            without_values("invalid value: integer `-1`, expected u64"),
            "expected u64, found another integer"
        );
        assert_eq!(
            without_values("unknown variant `s3cr3t`, expected `a` or `b`"),
            "unknown value, expected `a` or `b`"
        );
        assert_eq!(
            without_values("missing field `client_id`"),
            "missing field `client_id`"
        );
    }

    #[test]
    fn url_credentials_are_redacted() {
        assert_eq!(
            redact_url("https://user:pa@ss@port.example/v1?x=@"),
            "https://[redacted]@port.example/v1?x=@"
        );
        assert_eq!(redact_url("http://127.0.0.1:5555"), "http://127.0.0.1:5555");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("svc \"a\" é"), "svc \"a\" é");
        assert_eq!(
            printable("a\nINFO forged\r\u{1b}[31m"),
            "a\\nINFO forged\\r\\u{1b}[31m"
        );
    }
}
