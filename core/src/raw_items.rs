//! Raw items as text: a JSON array, or JSON lines, read one item at a time (a file of a million
//! items is never held whole). Items stay raw JSON text so that the jq engine sees number
//! literals exactly as written.

use std::io::{BufRead, Read};

use serde_json::value::RawValue;

/// Why a file of raw items does not read: the line, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RawItemsError {
    pub line: usize,
    pub message: String,
}

/// Larger raw items are refused (the kind fails, naming the line) rather than read into memory.
pub const MAX_ITEM_BYTES: usize = 64 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Not looked at yet.
    Unknown,
    Array,
    Lines,
    Done,
}

/// The raw items of a JSON array or of JSON lines (blank lines skipped), one at a time. A
/// UTF-8 byte-order mark at the start is skipped.
#[derive(Debug)]
pub struct RawItemReader<R> {
    reader: R,
    shape: Shape,
    /// The line the reader is on (1-based).
    line: usize,
    max_item_bytes: usize,
}

impl<R: BufRead> RawItemReader<R> {
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            shape: Shape::Unknown,
            line: 1,
            max_item_bytes: MAX_ITEM_BYTES,
        }
    }

    /// Refuses items larger than `bytes` (default [`MAX_ITEM_BYTES`]).
    pub fn with_max_item_bytes(mut self, bytes: usize) -> Self {
        self.max_item_bytes = bytes;
        self
    }

    fn error(&self, message: impl Into<String>) -> RawItemsError {
        RawItemsError {
            line: self.line,
            message: message.into(),
        }
    }

    fn io(&self, error: std::io::Error) -> RawItemsError {
        self.error(format!("cannot read: {error}"))
    }

    /// The next byte, without taking it.
    fn peek(&mut self) -> Result<Option<u8>, RawItemsError> {
        match self.reader.fill_buf() {
            Ok(buffer) => Ok(buffer.first().copied()),
            Err(e) => Err(self.io(e)),
        }
    }

    fn take(&mut self) -> Result<Option<u8>, RawItemsError> {
        let byte = self.peek()?;
        if let Some(b) = byte {
            self.reader.consume(1);
            if b == b'\n' {
                self.line += 1;
            }
        }
        Ok(byte)
    }

    fn skip_whitespace(&mut self) -> Result<Option<u8>, RawItemsError> {
        while let Some(b) = self.peek()? {
            if !b.is_ascii_whitespace() {
                return Ok(Some(b));
            }
            self.take()?;
        }
        Ok(None)
    }

    /// Looks at the start: a byte-order mark is skipped, `[` opens an array.
    fn start(&mut self) -> Result<(), RawItemsError> {
        let line = self.line;
        let buffer = self.reader.fill_buf().map_err(|e| RawItemsError {
            line,
            message: format!("cannot read: {e}"),
        })?;
        if buffer.starts_with(BOM) {
            self.reader.consume(BOM.len());
        }
        self.shape = match self.skip_whitespace()? {
            Some(b'[') => {
                self.take()?;
                Shape::Array
            }
            Some(_) => Shape::Lines,
            None => Shape::Done,
        };
        Ok(())
    }

    fn item(&self, bytes: Vec<u8>) -> Result<Box<RawValue>, RawItemsError> {
        let text = String::from_utf8(bytes).map_err(|_| self.error("not valid UTF-8"))?;
        RawValue::from_string(text).map_err(|e| self.error(e.to_string()))
    }

    fn next_line(&mut self) -> Result<Option<Box<RawValue>>, RawItemsError> {
        loop {
            let mut bytes = Vec::new();
            let read = (&mut self.reader)
                .take(self.max_item_bytes as u64 + 1)
                .read_until(b'\n', &mut bytes)
                .map_err(|e| self.io(e))?;
            if read == 0 {
                self.shape = Shape::Done;
                return Ok(None);
            }
            if bytes.len() > self.max_item_bytes {
                self.shape = Shape::Done;
                return Err(
                    self.error(format!("an item larger than {} bytes", self.max_item_bytes))
                );
            }
            let text = bytes.trim_ascii();
            if text.is_empty() {
                self.line += 1;
                continue;
            }
            let item = self.item(text.to_vec());
            self.line += 1;
            return item.map(Some);
        }
    }

    /// The next element of the array: its bytes, from the first to the last, found without
    /// recursion (depth and strings tracked byte by byte).
    fn next_element(&mut self) -> Result<Option<Box<RawValue>>, RawItemsError> {
        match self.skip_whitespace()? {
            None => return Err(self.error("the array is not closed")),
            Some(b']') => {
                self.take()?;
                self.shape = Shape::Done;
                // JSON lines whose first item is an array read as an array: what follows it
                // must not be dropped unread.
                if self.skip_whitespace()?.is_some() {
                    return Err(self.error(
                        "more follows the array that began the file (one JSON array, or JSON lines of objects)",
                    ));
                }
                return Ok(None);
            }
            Some(_) => {}
        }
        let start_line = self.line;
        let mut bytes = Vec::new();
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        loop {
            let Some(b) = self.peek()? else {
                return Err(self.error("the array is not closed"));
            };
            if !in_string && depth == 0 && !bytes.is_empty() && matches!(b, b',' | b']') {
                break;
            }
            if !in_string && depth == 0 && !bytes.is_empty() && b.is_ascii_whitespace() {
                break;
            }
            self.take()?;
            bytes.push(b);
            if bytes.len() > self.max_item_bytes {
                self.shape = Shape::Done;
                return Err(
                    self.error(format!("an item larger than {} bytes", self.max_item_bytes))
                );
            }
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_string = true,
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            if !in_string && depth == 0 && matches!(b, b']' | b'}' | b'"') {
                break;
            }
        }
        let line = self.line;
        self.line = start_line;
        let item = self.item(bytes);
        self.line = line;
        let item = item?;
        match self.skip_whitespace()? {
            Some(b',') => {
                self.take()?;
            }
            Some(b']') => {}
            Some(other) => {
                return Err(self.error(format!(
                    "expected , or ] after an item, found {:?}",
                    other as char
                )));
            }
            None => return Err(self.error("the array is not closed")),
        }
        Ok(Some(item))
    }
}

impl<R: BufRead> Iterator for RawItemReader<R> {
    type Item = Result<Box<RawValue>, RawItemsError>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = match self.shape {
            Shape::Unknown => match self.start() {
                Ok(()) => return self.next(),
                Err(e) => Err(e),
            },
            Shape::Array => self.next_element(),
            Shape::Lines => self.next_line(),
            Shape::Done => return None,
        };
        if next.is_err() {
            // One error ends the reading: what follows cannot be trusted to line up.
            self.shape = Shape::Done;
        }
        next.transpose()
    }
}

/// Splits `text` into raw items (see [`RawItemReader`]).
pub fn parse_raw_items(text: &str) -> Result<Vec<Box<RawValue>>, RawItemsError> {
    RawItemReader::new(text.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(items: Vec<Box<RawValue>>) -> Vec<String> {
        items.iter().map(|r| r.get().to_owned()).collect()
    }

    #[test]
    fn arrays_and_lines_keep_item_text() {
        let array = parse_raw_items("[{\"a\": 1.0}, 2, \"s]\", [3,\n[4]] ,true]").unwrap();
        assert_eq!(
            texts(array),
            ["{\"a\": 1.0}", "2", "\"s]\"", "[3,\n[4]]", "true"]
        );
        let lines =
            parse_raw_items("{\"a\": 1.0}\n\n  \n{\"b\": 100000000000000000000}\r\n").unwrap();
        assert_eq!(lines[1].get(), "{\"b\": 100000000000000000000}");
        assert!(parse_raw_items("[]").unwrap().is_empty());
        assert!(parse_raw_items("  \n").unwrap().is_empty());
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped() {
        let items = parse_raw_items("\u{feff}{\"a\": 1}\n{\"a\": 2}\n").unwrap();
        assert_eq!(texts(items), ["{\"a\": 1}", "{\"a\": 2}"]);
        let items = parse_raw_items("\u{feff}[1, 2]").unwrap();
        assert_eq!(texts(items), ["1", "2"]);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse_raw_items("{}\n{\"a\": }\n").unwrap_err().line, 2);
        assert_eq!(parse_raw_items("[1,\n2,\n}").unwrap_err().line, 3);
        assert_eq!(parse_raw_items("[1,\n2\n").unwrap_err().line, 3);
        assert!(
            parse_raw_items("[1 2]")
                .unwrap_err()
                .message
                .contains("expected , or ]")
        );
        // Lines of arrays would read as one array and drop the rest: refused instead.
        let error = parse_raw_items("[1]\n[2]\n").unwrap_err();
        assert_eq!(error.line, 2);
        assert!(error.message.contains("more follows"), "{error}");
    }

    #[test]
    fn deep_items_are_read_without_recursion_and_big_ones_refused() {
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(parse_raw_items(&deep).unwrap().len(), 1);
        let big = format!("{{\"a\": \"{}\"}}\n", "x".repeat(100));
        let error = RawItemReader::new(big.as_bytes())
            .with_max_item_bytes(50)
            .next()
            .unwrap()
            .unwrap_err();
        assert!(error.message.contains("larger than 50 bytes"), "{error}");
        let in_array = format!("[{}]", big.trim());
        let error = RawItemReader::new(in_array.as_bytes())
            .with_max_item_bytes(50)
            .next()
            .unwrap()
            .unwrap_err();
        assert!(error.message.contains("larger than 50 bytes"), "{error}");
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::super::*;

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                // Integers only: floats would test serde_json's float parsing, not the reader,
                // which keeps each item's text as written.
                any::<i64>().prop_map(Value::from),
                ".{0,8}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(".{0,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn any_bytes_give_items_or_an_error_naming_a_line(
                bytes in proptest::collection::vec(any::<u8>(), 0..400)
            ) {
                let mut reader = RawItemReader::new(bytes.as_slice());
                let mut items = 0;
                for item in reader.by_ref() {
                    match item {
                        Ok(_) => items += 1,
                        Err(e) => prop_assert!(e.line >= 1),
                    }
                    prop_assert!(items <= bytes.len());
                }
                prop_assert!(reader.next().is_none(), "a finished reader stays finished");
            }

            /// Raw items are objects (a line starting with `[` would begin an array file).
            #[test]
            fn items_come_back_as_written_as_lines_or_as_an_array(
                values in proptest::collection::vec(
                    proptest::collection::btree_map(".{0,6}", json(), 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                    0..8,
                ),
                as_array in any::<bool>(),
                pretty in any::<bool>(),
            ) {
                let text = if as_array {
                    if pretty {
                        serde_json::to_string_pretty(&values).unwrap()
                    } else {
                        serde_json::to_string(&values).unwrap()
                    }
                } else {
                    values.iter().map(|v| format!("{v}\n\n")).collect()
                };
                let read: Vec<Value> = parse_raw_items(&text)
                    .unwrap()
                    .iter()
                    .map(|raw| serde_json::from_str(raw.get()).unwrap())
                    .collect();
                prop_assert_eq!(read, values);
            }
        }
    }
}
