//! jq's regular expressions: Oniguruma with Perl-NT syntax, as libjq uses it, behind one native
//! filter, `_match_impl(re; flags; test)`. The prelude defines `match`, `test`, `capture`,
//! `scan`, `split`, `splits`, `sub` and `gsub` on top of it, as jq's own builtin.jq does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use jaq_core::ValT as _;
use jaq_core::native::{Fun, bome, run, v};
use jaq_core::{Cv, Error, ValR};
use jaq_json::{Map, Val};
use onig::{Regex, RegexOptions, Region, SearchOptions, Syntax};

use super::jq::Data;

/// Compiled regexes are cached per thread: jq mappings call `gsub` with the same pattern on
/// every item, and compiling dominates otherwise.
const CACHE_LIMIT: usize = 512;

thread_local! {
    static CACHE: RefCell<HashMap<(String, u32), Rc<Regex>>> = RefCell::new(HashMap::new());
}

pub fn funs() -> impl Iterator<Item = Fun<Data>> {
    [run(("_match_impl", v(3), |mut cv: Cv<Data>| {
        let test = cv.0.pop_var();
        let flags = cv.0.pop_var();
        let re = cv.0.pop_var();
        bome(match_impl(&cv.1, &re, &flags, test.as_bool()))
    }))]
    .into_iter()
}

fn type_name(v: &Val) -> &'static str {
    match v {
        Val::Null => "null",
        Val::Bool(_) => "boolean",
        Val::Num(_) => "number",
        Val::TStr(_) | Val::BStr(_) => "string",
        Val::Arr(_) => "array",
        Val::Obj(_) => "object",
    }
}

/// The text of a jq string value.
fn as_str(value: &Val) -> Option<&str> {
    jaq_std::ValT::as_utf8_bytes(value).and_then(|b| std::str::from_utf8(b).ok())
}

fn fail(message: String) -> Error<Val> {
    Error::str(message)
}

/// jq's mode letters, as libjq maps them to Oniguruma options.
fn parse_flags(flags: &Val) -> Result<(RegexOptions, bool), Error<Val>> {
    let text = match flags {
        Val::Null => return Ok((RegexOptions::REGEX_OPTION_CAPTURE_GROUP, false)),
        other => as_str(other)
            .ok_or_else(|| fail(format!("{other} ({}) is not a string", type_name(other))))?,
    };
    let mut options = RegexOptions::REGEX_OPTION_CAPTURE_GROUP;
    let mut global = false;
    for c in text.chars() {
        match c {
            'g' => global = true,
            'i' => options |= RegexOptions::REGEX_OPTION_IGNORECASE,
            'x' => options |= RegexOptions::REGEX_OPTION_EXTEND,
            'n' => options |= RegexOptions::REGEX_OPTION_FIND_NOT_EMPTY,
            's' => options |= RegexOptions::REGEX_OPTION_SINGLELINE,
            'p' => {
                options |=
                    RegexOptions::REGEX_OPTION_MULTILINE | RegexOptions::REGEX_OPTION_SINGLELINE
            }
            'l' => options |= RegexOptions::REGEX_OPTION_FIND_LONGEST,
            _ => return Err(fail(format!("{text} is not a valid modifier string"))),
        }
    }
    Ok((options, global))
}

fn compiled(pattern: &str, options: RegexOptions) -> Result<Rc<Regex>, Error<Val>> {
    let key = (pattern.to_owned(), options.bits());
    if let Some(hit) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(hit);
    }
    let regex = Regex::with_options(pattern, options, Syntax::perl_ng()).map_err(|e| {
        fail(format!(
            "{pattern} (at offset 0) is not a valid regex: {}",
            e.description()
        ))
    })?;
    let regex = Rc::new(regex);
    CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, regex.clone());
    });
    Ok(regex)
}

fn chars_before(text: &str, byte: usize) -> isize {
    text[..byte].chars().count() as isize
}

fn object(fields: Vec<(&str, Val)>) -> Val {
    let mut map = Map::default();
    for (k, v) in fields {
        map.insert(Val::from(k.to_owned()), v);
    }
    Val::obj(map)
}

fn string(s: &str) -> Val {
    Val::from(s.to_owned())
}

/// `_match_impl`: with `test`, whether the regex matches; else the array of match objects,
/// shaped exactly as libjq's (`offset`/`length` in code points, unmatched groups at offset -1).
fn match_impl(input: &Val, re: &Val, flags: &Val, test: bool) -> ValR<Val> {
    let text = as_str(input).ok_or_else(|| {
        fail(format!(
            "{input} ({}) cannot be matched, as it is not a string",
            type_name(input)
        ))
    })?;
    let pattern = as_str(re).ok_or_else(|| {
        fail(format!(
            "{re} ({}) cannot be matched, as it is not a string",
            type_name(re)
        ))
    })?;
    let (options, global) = parse_flags(flags)?;
    let regex = compiled(pattern, options)?;

    let mut names: Vec<Option<String>> = vec![None; regex.captures_len() + 1];
    regex.foreach_name(|name, groups| {
        for &g in groups {
            if let Some(slot) = names.get_mut(g as usize) {
                *slot = Some(name.to_owned());
            }
        }
        true
    });
    let name_of = |i: usize| names[i].as_ref().map(|n| string(n)).unwrap_or(Val::Null);

    let end = text.len();
    let mut start = 0usize;
    let mut matches = Vec::new();
    let mut region = Region::new();
    loop {
        region.clear();
        if start > end
            || regex
                .search_with_options(
                    text,
                    start,
                    end,
                    SearchOptions::SEARCH_OPTION_NONE,
                    Some(&mut region),
                )
                .is_none()
        {
            break;
        }
        if test {
            return Ok(Val::Bool(true));
        }
        let (beg, fin) = region.pos(0).expect("a match has a whole-match group");
        let offset = chars_before(text, beg);
        if beg == fin {
            // libjq gives a zero-width match empty captures at the same offset, then steps one on.
            let captures: Vec<Val> = (1..region.len())
                .map(|i| {
                    object(vec![
                        ("offset", Val::from(offset)),
                        ("string", string("")),
                        ("length", Val::from(0isize)),
                        ("name", name_of(i)),
                    ])
                })
                .collect();
            matches.push(object(vec![
                ("offset", Val::from(offset)),
                ("length", Val::from(0isize)),
                ("string", string("")),
                ("captures", captures.into_iter().collect()),
            ]));
            start = fin + text[fin..].chars().next().map_or(1, char::len_utf8);
        } else {
            let captures: Vec<Val> = (1..region.len())
                .map(|i| match region.pos(i) {
                    None => object(vec![
                        ("offset", Val::from(-1isize)),
                        ("string", Val::Null),
                        ("length", Val::from(0isize)),
                        ("name", name_of(i)),
                    ]),
                    Some((b, e)) if b == e => object(vec![
                        ("offset", Val::from(chars_before(text, b))),
                        ("string", string("")),
                        ("length", Val::from(0isize)),
                        ("name", name_of(i)),
                    ]),
                    Some((b, e)) => object(vec![
                        ("offset", Val::from(chars_before(text, b))),
                        ("length", Val::from(text[b..e].chars().count() as isize)),
                        ("string", string(&text[b..e])),
                        ("name", name_of(i)),
                    ]),
                })
                .collect();
            matches.push(object(vec![
                ("offset", Val::from(offset)),
                ("length", Val::from(text[beg..fin].chars().count() as isize)),
                ("string", string(&text[beg..fin])),
                ("captures", captures.into_iter().collect()),
            ]));
            start = fin;
        }
        // jq 1.8 keeps searching up to and including the end, so a zero-width match there counts.
        if !global || start > end {
            break;
        }
    }
    if test {
        return Ok(Val::Bool(false));
    }
    Ok(matches.into_iter().collect())
}
