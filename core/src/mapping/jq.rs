//! The jq engine: jaq, with a prelude and natives that make it behave as the libjq that Ocean
//! runs (regexes through Oniguruma, jq's date formats and edge cases, `$ENV`, `$__loc__`).

use jaq_core::data::{DataT, HasLut};
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars};
use jaq_json::Val;

use super::budget::{self, Exceeded};
use super::interpolation::route_through_text_format;
use super::quotes::rewrite_single_quotes;
use super::value::type_name;
use super::{dates, natives, regex};

/// The data every filter runs with: plain values, and the lookup table behind the budget
/// check (see [`budget`]).
#[derive(Debug)]
pub struct Data;

impl DataT for Data {
    type V<'a> = Val;
    type Data<'a> = Guarded<'a>;
}

/// The lookup table; every term jaq evaluates asks for it, so the budget is checked there.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // jaq's lookup table has no Debug
pub struct Guarded<'a>(&'a jaq_core::Lut<Data>);

impl<'a> HasLut<'a, Data> for Guarded<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Data> {
        budget::check();
        self.0
    }
}

/// Why an expression gave no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// jq raised an error, as libjq would: the field is null, with a warning.
    Jq(String),
    /// The item's budget ran out (or the engine failed): the whole item fails.
    Budget(Exceeded),
}

impl std::fmt::Display for EvalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvalError::Jq(message) => f.write_str(message),
            EvalError::Budget(why) => write!(f, "{why}"),
        }
    }
}

type Filter = jaq_core::Filter<Data>;

const PRELUDE: &str = include_str!("prelude.jq");

/// A compile failure: where in the expression, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    /// Byte offset into the expression as written.
    pub offset: usize,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at offset {})", self.message, self.offset)
    }
}

/// One compiled jq expression.
pub struct Program(Compiled);

enum Compiled {
    /// A general expression, run by jaq.
    Jaq {
        filter: Filter,
        /// The line of each `$__loc__`, bound as globals `{"file": "<top-level>", "line": N}`.
        location_lines: Vec<usize>,
    },
    /// `.a.b.c`: most mapping fields are plain paths, evaluated without the interpreter.
    Path(Vec<Val>),
    /// A literal such as `"service"`, `true` or `3`.
    Const(Val),
}

/// A plain path (`.a`, `.a.b_c`) as its keys, or a literal without escapes, when `code` is one.
fn fast_path(code: &str) -> Option<Compiled> {
    let code = code.trim();
    let ident = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if let Some(path) = code.strip_prefix('.')
        && !path.is_empty()
    {
        let keys: Vec<&str> = path.split('.').collect();
        // jq keywords are not path keys in this position (`.and` is fine in jq 1.7, but keep it simple).
        if keys.iter().all(|k| ident(k)) {
            return Some(Compiled::Path(
                keys.into_iter().map(|k| Val::from(k.to_owned())).collect(),
            ));
        }
        return None;
    }
    let literal = code.len() >= 2
        && code.starts_with('"')
        && code.ends_with('"')
        && !code[1..code.len() - 1].contains(['"', '\\']);
    if literal || matches!(code, "true" | "false" | "null") {
        return jaq_json::read::parse_single(code.as_bytes())
            .ok()
            .map(Compiled::Const);
    }
    None
}

/// `.a.b` as jq evaluates it: null through null, an error on anything but objects.
fn follow(keys: &[Val], mut value: Val) -> Result<Val, String> {
    for key in keys {
        value = match &value {
            Val::Null => return Ok(Val::Null),
            Val::Obj(map) => map.get(key).cloned().unwrap_or(Val::Null),
            other => return Err(format!("Cannot index {} with {key}", type_name(other))),
        };
    }
    Ok(value)
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").finish_non_exhaustive()
    }
}

/// Compiles expressions and runs them with the same `$ENV`. One per thread: values are `Rc`.
#[derive(Debug, Clone)]
pub struct Jq {
    env: Val,
}

fn prelude() -> impl Iterator<Item = load::parse::Def<&'static str>> {
    let ours = load::parse(PRELUDE, |p| p.defs()).expect("the prelude parses");
    jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .chain(ours)
}

fn natives() -> impl Iterator<Item = jaq_core::native::Fun<Data>> {
    jaq_core::funs()
        // jaq's regex natives stay (its std definitions name them), but the prelude's jq
        // definitions shadow every filter built on them.
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .chain(regex::funs())
        .chain(natives::funs())
        .chain(dates::funs())
}

/// Replaces each `$__loc__` with a variable of its own (`$__loc__N`) and returns the lines.
fn bind_locations(code: &str) -> (String, Vec<usize>) {
    const TOKEN: &str = "$__loc__";
    let mut out = String::with_capacity(code.len());
    let mut lines = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(TOKEN) {
        let after = &rest[at + TOKEN.len()..];
        if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            out.push_str(&rest[..at + TOKEN.len()]);
            rest = after;
            continue;
        }
        let consumed = code.len() - rest.len() + at;
        lines.push(1 + code[..consumed].matches('\n').count());
        out.push_str(&rest[..at]);
        out.push_str(&format!("$__loc__{}", lines.len() - 1));
        rest = after;
    }
    out.push_str(rest);
    (out, lines)
}

impl Jq {
    /// `env` is what `$ENV` and `env` return: the process environment, or `{}` when mappings
    /// may not read it.
    pub fn new(env: Val) -> Self {
        Self { env }
    }

    /// `$ENV` from the process environment.
    pub fn process_env() -> Val {
        let mut map = jaq_json::Map::default();
        for (k, v) in std::env::vars() {
            map.insert(Val::from(k), Val::from(v));
        }
        Val::obj(map)
    }

    /// Compiles `expression` after Ocean's single-quote rewrite.
    pub fn compile(&self, expression: &str) -> Result<Program, CompileError> {
        let rewritten = route_through_text_format(&rewrite_single_quotes(expression));
        if let Some(fast) = fast_path(&rewritten) {
            return Ok(Program(fast));
        }
        let (code, lines) = bind_locations(&rewritten);
        let location_names: Vec<String> =
            (0..lines.len()).map(|i| format!("$__loc__{i}")).collect();
        let arena = Arena::default();
        let loader = Loader::new(prelude());
        let modules = loader
            .load(
                &arena,
                File {
                    code: code.as_str(),
                    path: (),
                },
            )
            .map_err(|errors| load_error(&code, errors))?;
        let globals = std::iter::once("$ENV").chain(location_names.iter().map(String::as_str));
        let filter = Compiler::default()
            .with_funs(natives())
            .with_global_vars(globals)
            .compile(modules)
            .map_err(|errors| {
                let (name, undefined) = errors
                    .into_iter()
                    .flat_map(|(_, errs)| errs)
                    .next()
                    .expect("a failed compile reports an error");
                CompileError {
                    offset: offset_in(&code, name),
                    message: format!("undefined {} `{name}`", undefined.as_str()),
                }
            })?;
        Ok(Program(Compiled::Jaq {
            filter,
            location_lines: lines,
        }))
    }

    /// The first output of `program` on `input`: `Ok(None)` when it yields nothing.
    pub fn first(&self, program: &Program, input: Val) -> Result<Option<Val>, EvalError> {
        let (filter, location_lines) = match &program.0 {
            Compiled::Path(keys) => return follow(keys, input).map(Some).map_err(EvalError::Jq),
            Compiled::Const(value) => return Ok(Some(value.clone())),
            Compiled::Jaq {
                filter,
                location_lines,
            } => (filter, location_lines),
        };
        let mut globals = Vec::with_capacity(1 + location_lines.len());
        globals.push(self.env.clone());
        globals.extend(location_lines.iter().map(|&line| location(line)));
        let ctx = Ctx::<Data>::new(Guarded(&filter.lut), Vars::new(globals));
        // Not `jaq_core::unwrap_valr`: it exits the process on `halt`. A mapping must never stop
        // the agent; as in libjq, `halt` and `halt_error` just end the outputs.
        let first = budget::guarded(|| match filter.id.run((ctx, input)).next() {
            None => Ok(None),
            Some(Ok(value)) => Ok(Some(value)),
            Some(Err(exception)) => match exception.get_err() {
                Ok(error) => Err(EvalError::Jq(error.to_string())),
                Err(_halt) => Ok(None),
            },
        });
        first.unwrap_or_else(|why| Err(EvalError::Budget(why)))
    }
}

/// One jq expression of an integration's own (Ocean Custom's `data_path`, a path parameter's
/// `field`), compiled once, run without `$ENV`. Not `Send` (jq values are `Rc`): use it on one
/// thread.
#[derive(Debug)]
pub struct Query {
    jq: Jq,
    program: Program,
}

impl Query {
    pub fn new(expression: &str) -> Result<Self, CompileError> {
        let jq = Jq::new(Val::obj(jaq_json::Map::default()));
        let program = jq.compile(expression)?;
        Ok(Self { jq, program })
    }

    /// The first output on `input`, as JSON (`None` when there is none).
    pub fn first(&self, input: &serde_json::Value) -> Result<Option<serde_json::Value>, EvalError> {
        let output = self
            .jq
            .first(&self.program, super::value::from_json(input))?;
        Ok(output.as_ref().map(super::value::to_json))
    }
}

/// Where `part` starts inside `whole`, when it is a slice of it (errors in the prelude are not).
fn offset_in(whole: &str, part: &str) -> usize {
    let start = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    if start <= whole.len() { start } else { 0 }
}

fn location(line: usize) -> Val {
    let mut map = jaq_json::Map::default();
    map.insert(
        Val::from("file".to_owned()),
        Val::from("<top-level>".to_owned()),
    );
    map.insert(Val::from("line".to_owned()), Val::from(line));
    Val::obj(map)
}

fn load_error(code: &str, errors: load::Errors<&str, ()>) -> CompileError {
    for (_, error) in errors {
        match error {
            load::Error::Lex(errs) => {
                if let Some((expected, rest)) = errs.into_iter().next() {
                    return CompileError {
                        offset: offset_in(code, rest),
                        message: format!("expected {}", expected.as_str()),
                    };
                }
            }
            load::Error::Parse(errs) => {
                if let Some((expected, rest)) = errs.into_iter().next() {
                    let found = if rest.is_empty() {
                        "end of input".to_owned()
                    } else {
                        format!("`{rest}`")
                    };
                    return CompileError {
                        offset: offset_in(code, rest),
                        message: format!("expected {}, found {found}", expected.as_str()),
                    };
                }
            }
            load::Error::Io(errs) => {
                if let Some((path, message)) = errs.into_iter().next() {
                    return CompileError {
                        offset: 0,
                        message: format!("cannot import {path}: {message}"),
                    };
                }
            }
        }
    }
    CompileError {
        offset: 0,
        message: "the expression does not compile".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(expr: &str, input: &str) -> Result<Option<String>, String> {
        let jq = Jq::new(Val::obj(jaq_json::Map::default()));
        let program = jq.compile(expr).map_err(|e| e.to_string())?;
        let input = jaq_json::read::parse_single(input.as_bytes()).unwrap();
        jq.first(&program, input)
            .map(|v| v.map(|v| v.to_string()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn halt_error_ends_the_outputs_and_never_exits_the_process() {
        // Regression: jaq's unwrap_valr calls process::exit on halt, which would kill the agent.
        assert_eq!(run("halt_error", "\"x\""), Ok(None));
        assert_eq!(run("1, halt", "null"), Ok(Some("1".into())));
    }

    #[test]
    fn compile_errors_point_into_the_expression() {
        let jq = Jq::new(Val::Null);
        let error = jq.compile(".a | foo(1)").unwrap_err();
        assert_eq!(error.offset, 5);
        assert!(error.message.contains("foo"), "{error}");
        assert_eq!(jq.compile(".a | [").unwrap_err().offset, 6);
    }

    #[test]
    fn fast_paths_behave_as_jq() {
        assert_eq!(run(".a.b", r#"{"a": {"b": 1.0}}"#), Ok(Some("1.0".into())));
        assert_eq!(run(".a.b", r#"{"a": null}"#), Ok(Some("null".into())));
        assert_eq!(run(".a", "null"), Ok(Some("null".into())));
        assert_eq!(
            run(".a.b", r#"{"a": "s"}"#),
            Err(r#"Cannot index string with "b""#.into())
        );
        assert_eq!(run(r#""service""#, "null"), Ok(Some(r#""service""#.into())));
        assert!(matches!(fast_path(".a.b"), Some(Compiled::Path(_))));
        assert!(matches!(fast_path(" \"x\" "), Some(Compiled::Const(_))));
        for general in [".a[0]", ".a | .b", ".", "\"a\\(1)\"", ".a?", "1 + 1"] {
            assert!(fast_path(general).is_none(), "{general}");
        }
    }

    #[test]
    fn loc_reports_each_line() {
        assert_eq!(
            run("[$__loc__.line,\n $__loc__.line]", "null"),
            Ok(Some("[1,2]".into()))
        );
    }

    #[test]
    fn env_is_bound_to_what_the_engine_was_given() {
        let mut map = jaq_json::Map::default();
        map.insert(Val::from("REGION".to_owned()), Val::from("eu".to_owned()));
        let jq = Jq::new(Val::obj(map));
        let program = jq.compile("[$ENV.REGION, env.REGION]").unwrap();
        assert_eq!(
            jq.first(&program, Val::Null).unwrap().unwrap().to_string(),
            r#"["eu","eu"]"#
        );
    }
}
