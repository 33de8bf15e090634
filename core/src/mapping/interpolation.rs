//! jaq turns `"\(f)"` into its own fixed conversion, which prints `3.0` where jq prints `3`.
//! A string under an explicit format (`@text "\(f)"`) goes through the named format instead,
//! which the prelude defines as jq does; so interpolating strings get `@text ` put before them.

/// Puts `@text ` before every string literal that interpolates and has no format yet.
pub fn route_through_text_format(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len() + 16);
    let mut i = 0;
    copy_code(&chars, &mut i, &mut out, false);
    out
}

/// Copies code up to the end, or (when `nested`) up to the `)` closing an interpolation.
fn copy_code(src: &[char], i: &mut usize, out: &mut String, nested: bool) {
    let mut depth = 0usize;
    while *i < src.len() {
        let c = src[*i];
        match c {
            '#' => {
                while *i < src.len() && src[*i] != '\n' {
                    out.push(src[*i]);
                    *i += 1;
                }
                continue;
            }
            '"' => {
                let formatted = preceded_by_format(out);
                let mut literal = String::new();
                if copy_string(src, i, &mut literal) && !formatted {
                    out.push_str("@text ");
                }
                out.push_str(&literal);
                continue;
            }
            '(' => depth += 1,
            ')' if nested && depth == 0 => return,
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(c);
        *i += 1;
    }
}

/// Copies the string literal starting at `src[*i]` (a `"`); true when it interpolates.
fn copy_string(src: &[char], i: &mut usize, out: &mut String) -> bool {
    out.push('"');
    *i += 1;
    let mut interpolates = false;
    while *i < src.len() {
        let c = src[*i];
        if c == '\\' && *i + 1 < src.len() {
            if src[*i + 1] == '(' {
                interpolates = true;
                out.push_str("\\(");
                *i += 2;
                copy_code(src, i, out, true);
                if *i < src.len() {
                    out.push(')');
                    *i += 1;
                }
            } else {
                out.push(c);
                out.push(src[*i + 1]);
                *i += 2;
            }
            continue;
        }
        out.push(c);
        *i += 1;
        if c == '"' {
            break;
        }
    }
    interpolates
}

/// Whether the code before a string ends in a format name such as `@base64`.
fn preceded_by_format(before: &str) -> bool {
    let trimmed = before.trim_end();
    let word_len = trimmed
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .count();
    word_len > 0 && trimmed[..trimmed.len() - word_len].ends_with('@')
}

#[cfg(test)]
mod tests {
    use super::route_through_text_format as r;

    #[test]
    fn only_interpolating_unformatted_strings_change() {
        assert_eq!(r(r#""x\(.a)""#), r#"@text "x\(.a)""#);
        assert_eq!(r(r#""plain" + .a"#), r#""plain" + .a"#);
        assert_eq!(r(r#"@base64 "x\(.a)""#), r#"@base64 "x\(.a)""#);
        assert_eq!(
            r(r#""a\"\(.b | "in\(.c)")""#),
            r#"@text "a\"\(.b | @text "in\(.c)")""#
        );
        assert_eq!(
            r(r#""\((1 + 2) * 3)" # "\(.x)""#),
            r#"@text "\((1 + 2) * 3)" # "\(.x)""#
        );
    }
}
