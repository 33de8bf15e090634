//! Raw items as text: a JSON array, or JSON lines. Items stay raw JSON text so that the jq
//! engine sees number literals exactly as written.

use serde_json::value::RawValue;

/// Why a file of raw items does not parse: the line, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RawItemsError {
    pub line: usize,
    pub message: String,
}

/// Splits `text` into raw items. A text starting with `[` is one JSON array; anything else is
/// JSON lines (blank lines skipped).
pub fn parse_raw_items(text: &str) -> Result<Vec<Box<RawValue>>, RawItemsError> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str::<Vec<Box<RawValue>>>(text).map_err(|e| RawItemsError {
            line: e.line(),
            message: e.to_string(),
        });
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<Box<RawValue>>(line).map_err(|e| RawItemsError {
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_lines_keep_item_text() {
        let array = parse_raw_items("[{\"a\": 1.0}, 2]").unwrap();
        assert_eq!(
            array.iter().map(|r| r.get()).collect::<Vec<_>>(),
            ["{\"a\": 1.0}", "2"]
        );
        let lines =
            parse_raw_items("{\"a\": 1.0}\n\n  \n{\"b\": 100000000000000000000}\n").unwrap();
        assert_eq!(lines[1].get(), "{\"b\": 100000000000000000000}");
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse_raw_items("{}\n{\"a\": }\n").unwrap_err().line, 2);
        assert_eq!(parse_raw_items("[1,\n2,\n}").unwrap_err().line, 3);
    }
}
