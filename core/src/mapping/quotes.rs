//! Ocean rewrites single-quoted string delimiters to double quotes before compiling, so that
//! mappings such as `.x // ''` work although jq has no single-quoted strings.
//!
//! The rule, applied to each `'` of the original text: it becomes `"` when it stands at the start
//! or after whitespace and is not followed by whitespace or `"`, or when it does not stand after
//! whitespace or `"` and is followed by whitespace or the end. Other quotes (`it's`) stay.

pub fn rewrite_single_quotes(expression: &str) -> String {
    let chars: Vec<char> = expression.chars().collect();
    let mut out = String::with_capacity(expression.len());
    for (i, &c) in chars.iter().enumerate() {
        if c != '\'' {
            out.push(c);
            continue;
        }
        let before = i.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i + 1).copied();
        let opens = before.is_none_or(char::is_whitespace)
            && !after.is_some_and(|a| a.is_whitespace() || a == '"');
        let closes = !before.is_some_and(|b| b.is_whitespace() || b == '"')
            && after.is_none_or(char::is_whitespace);
        out.push(if opens || closes { '"' } else { '\'' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::rewrite_single_quotes as r;

    #[test]
    fn rewrites_delimiters_only() {
        assert_eq!(r(".x // ''"), ".x // \"\"");
        assert_eq!(r("'abc'"), "\"abc\"");
        assert_eq!(r(".name // 'unknown'"), ".name // \"unknown\"");
        assert_eq!(r("\"it's\""), "\"it's\"");
        assert_eq!(r("'service' | ascii_upcase"), "\"service\" | ascii_upcase");
        // A quote between spaces is neither opening nor closing: Ocean leaves it, so do we.
        assert_eq!(r(".a + ' - ' + .b"), ".a + ' - ' + .b");
    }
}
