//! jq's regular expressions: Oniguruma with Perl-NT syntax, as libjq uses it, behind one native
//! filter, `_match_impl(re; flags; test)`. The prelude defines `match`, `test`, `capture`,
//! `scan`, `split`, `splits`, `sub` and `gsub` on top of it, as jq's own builtin.jq does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use jaq_core::ValT as _;
use jaq_core::native::{Fun, bome, run, v};
use jaq_core::{Bind, Cv, DataT, Error, ValR, ValXs};
use jaq_json::{Map, Val};
use onig::{MatchParam, Regex, RegexOptions, Region, SearchOptions, Syntax};

use super::budget::{self, Exceeded};
use super::jq::Data;
use super::value::type_name;

/// Compiled regexes are cached per thread: jq mappings call `gsub` with the same pattern on
/// every item, and compiling dominates otherwise.
const CACHE_LIMIT: usize = 512;

thread_local! {
    static CACHE: RefCell<HashMap<(String, u32), Rc<Regex>>> = RefCell::new(HashMap::new());
}

pub fn funs() -> impl Iterator<Item = Fun<Data>> {
    [
        run(("_match_impl", v(3), |mut cv: Cv<Data>| {
            let test = cv.0.pop_var();
            let flags = cv.0.pop_var();
            let re = cv.0.pop_var();
            bome(match_impl(&cv.1, &re, &flags, test.as_bool()))
        })),
        run::<Data>((
            "_sub",
            [Bind::Var(()), Bind::Fun(()), Bind::Var(())].into(),
            sub as jaq_core::RunPtr<Data>,
        )),
    ]
    .into_iter()
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

/// One match: the whole match and each group, as byte ranges (`None`: the group took no part).
struct Found {
    whole: (usize, usize),
    groups: Vec<Option<(usize, usize)>>,
}

/// Oniguruma's `ONIGERR_RETRY_LIMIT_IN_MATCH_OVER` (oniguruma.h).
const RETRY_LIMIT_IN_MATCH_OVER: i32 = -17;

/// One search from `start` to `end` of `text`. A regex that backtracks past Oniguruma's retry
/// limit (jq's catastrophic patterns) stops the item's evaluation instead of panicking.
fn search(regex: &Regex, text: &str, start: usize, region: Option<&mut Region>) -> bool {
    match regex.search_with_param(
        text,
        start,
        text.len(),
        SearchOptions::SEARCH_OPTION_NONE,
        region,
        MatchParam::default(),
    ) {
        Ok(found) => found.is_some(),
        Err(e) if e.code() == RETRY_LIMIT_IN_MATCH_OVER => budget::exceed(Exceeded::Backtracking),
        Err(e) => budget::exceed(Exceeded::Panic(format!("Oniguruma: {}", e.description()))),
    }
}

/// Every match as libjq finds them: non-global stops at the first; a zero-width match steps
/// one character on; jq 1.8 searches up to and including the end of the text.
fn find_all(text: &str, regex: &Regex, global: bool) -> Vec<Found> {
    let end = text.len();
    let mut start = 0usize;
    let mut found = Vec::new();
    let mut region = Region::new();
    while start <= end {
        region.clear();
        if !search(regex, text, start, Some(&mut region)) {
            break;
        }
        let whole = region.pos(0).expect("a match has a whole-match group");
        let groups = (1..region.len()).map(|i| region.pos(i)).collect();
        found.push(Found { whole, groups });
        start = if whole.0 == whole.1 {
            whole.1 + text[whole.1..].chars().next().map_or(1, char::len_utf8)
        } else {
            whole.1
        };
        if !global {
            break;
        }
    }
    found
}

/// The name of each group (index 0 is the whole match), from the regex.
fn group_names(regex: &Regex) -> Vec<Option<String>> {
    let mut names: Vec<Option<String>> = vec![None; regex.captures_len() + 1];
    regex.foreach_name(|name, groups| {
        for &g in groups {
            if let Some(slot) = names.get_mut(g as usize) {
                *slot = Some(name.to_owned());
            }
        }
        true
    });
    names
}

/// Regex and flags from `_match_impl`'s arguments, including jq's one-argument `[re, flags]`.
fn regex_and_flags(re: &Val, flags: &Val) -> Result<(Rc<Regex>, bool), Error<Val>> {
    let (re, flags) = match (re, flags) {
        (Val::Arr(parts), Val::Null) => match parts.as_slice() {
            [re, flags, ..] => (re.clone(), flags.clone()),
            [re] => (re.clone(), Val::Null),
            [] => return Err(fail("array not a string or array".to_owned())),
        },
        (re @ (Val::TStr(_) | Val::BStr(_)), flags) => (re.clone(), flags.clone()),
        (other, Val::Null) => {
            return Err(fail(format!("{} not a string or array", type_name(other))));
        }
        (other, _) => {
            return Err(fail(format!(
                "{other} ({}) cannot be matched, as it is not a string",
                type_name(other)
            )));
        }
    };
    let pattern = as_str(&re).ok_or_else(|| {
        fail(format!(
            "{re} ({}) cannot be matched, as it is not a string",
            type_name(&re)
        ))
    })?;
    let (options, global) = parse_flags(&flags)?;
    Ok((compiled(pattern, options)?, global))
}

fn input_text(input: &Val) -> Result<&str, Error<Val>> {
    as_str(input).ok_or_else(|| {
        fail(format!(
            "{input} ({}) cannot be matched, as it is not a string",
            type_name(input)
        ))
    })
}

/// `_match_impl`: with `test`, whether the regex matches; else the array of match objects,
/// shaped exactly as libjq's (`offset`/`length` in code points, unmatched groups at offset -1).
fn match_impl(input: &Val, re: &Val, flags: &Val, test: bool) -> ValR<Val> {
    let text = input_text(input)?;
    let (regex, global) = regex_and_flags(re, flags)?;
    if test {
        return Ok(Val::Bool(search(&regex, text, 0, None)));
    }
    let names = group_names(&regex);
    let name_of = |i: usize| names[i].as_ref().map(|n| string(n)).unwrap_or(Val::Null);
    let matches = find_all(text, &regex, global).into_iter().map(|found| {
        let (beg, fin) = found.whole;
        let offset = chars_before(text, beg);
        let captures: Vec<Val> = found
            .groups
            .iter()
            .enumerate()
            .map(|(g, pos)| {
                let i = g + 1;
                match (beg == fin, pos) {
                    // libjq gives a zero-width match empty captures at the match's offset.
                    (true, _) => object(vec![
                        ("offset", Val::from(offset)),
                        ("string", string("")),
                        ("length", Val::from(0isize)),
                        ("name", name_of(i)),
                    ]),
                    (false, None) => object(vec![
                        ("offset", Val::from(-1isize)),
                        ("string", Val::Null),
                        ("length", Val::from(0isize)),
                        ("name", name_of(i)),
                    ]),
                    (false, Some((b, e))) if b == e => object(vec![
                        ("offset", Val::from(chars_before(text, *b))),
                        ("string", string("")),
                        ("length", Val::from(0isize)),
                        ("name", name_of(i)),
                    ]),
                    (false, Some((b, e))) => object(vec![
                        ("offset", Val::from(chars_before(text, *b))),
                        ("length", Val::from(text[*b..*e].chars().count() as isize)),
                        ("string", string(&text[*b..*e])),
                        ("name", name_of(i)),
                    ]),
                }
            })
            .collect();
        object(vec![
            ("offset", Val::from(offset)),
            ("length", Val::from(text[beg..fin].chars().count() as isize)),
            ("string", string(&text[beg..fin])),
            ("captures", captures.into_iter().collect()),
        ])
    });
    Ok(matches.collect())
}

/// The object `sub`'s replacement filter sees: each named group's text (null when unmatched).
fn capture_object(text: &str, found: &Found, names: &[Option<String>]) -> Val {
    let mut map = Map::default();
    for (g, pos) in found.groups.iter().enumerate() {
        let Some(name) = &names[g + 1] else { continue };
        let value = match (found.whole.0 == found.whole.1, pos) {
            (true, _) => string(""),
            (false, Some((b, e))) => string(&text[*b..*e]),
            (false, None) => Val::Null,
        };
        map.insert(string(name), value);
    }
    Val::obj(map)
}

/// `sub`/`gsub` as jq's definition behaves, natively: each match's gap and the replacement
/// filter's outputs accumulate per output index, so a filter with several outputs gives
/// several strings, and no match (or no output at all) gives the input.
fn sub<'a>(mut cv: Cv<'a, Data>) -> ValXs<'a, <Data as DataT>::V<'a>> {
    let flags = cv.0.pop_var();
    let (replacement, ctx) = cv.0.pop_fun();
    let re = cv.0.pop_var();
    let input = cv.1;
    let run = || -> Result<Vec<Val>, jaq_core::Exn<'a, Val>> {
        let text = input_text(&input)?;
        let (regex, global) = regex_and_flags(&re, &flags)?;
        let names = group_names(&regex);
        let mut results: Vec<String> = Vec::new();
        let mut previous = 0usize;
        for found in find_all(text, &regex, global) {
            let gap = &text[previous..found.whole.0];
            let captures = capture_object(text, &found, &names);
            let mut inserts = Vec::new();
            for insert in replacement.run((ctx.clone(), captures)) {
                let insert = insert?;
                match insert {
                    Val::Null => inserts.push(String::new()),
                    ref s @ (Val::TStr(_) | Val::BStr(_)) => {
                        inserts.push(as_str(s).unwrap_or_default().to_owned())
                    }
                    other => {
                        return Err(fail(format!(
                            "string ({}) and {} ({other}) cannot be added",
                            serde_json::Value::from(gap),
                            type_name(&other)
                        ))
                        .into());
                    }
                }
            }
            for (ix, insert) in inserts.iter().enumerate() {
                if ix == results.len() {
                    results.push(String::new());
                }
                results[ix].push_str(gap);
                results[ix].push_str(insert);
            }
            previous = found.whole.1;
        }
        if results.is_empty() {
            return Ok(vec![input.clone()]);
        }
        let tail = &text[previous..];
        Ok(results
            .into_iter()
            .map(|mut r| {
                r.push_str(tail);
                Val::from(r)
            })
            .collect())
    };
    match run() {
        Ok(values) => Box::new(values.into_iter().map(Ok)),
        Err(exception) => Box::new(std::iter::once(Err(exception))),
    }
}
