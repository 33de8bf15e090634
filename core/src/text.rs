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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("svc \"a\" é"), "svc \"a\" é");
        assert_eq!(
            printable("a\nINFO forged\r\u{1b}[31m"),
            "a\\nINFO forged\\r\\u{1b}[31m"
        );
    }
}
