//! Every jq expression of the golden corpus, evaluated by port-agent's engine, must give what
//! libjq gave (core/tests/golden/generate.py wrote the expectations with PyPI `jq`, the binding
//! Ocean uses): the same first output, or nothing, or an error.

use port_agent_core::mapping::jq::Jq;
use port_agent_core::mapping::value::{parse_raw, to_json};
use serde::Deserialize;
use serde_json::Value;
use support::same;

mod support;
use serde_json::value::RawValue;

#[derive(Deserialize)]
struct Case {
    expr: String,
    input: Box<RawValue>,
    expected: Expected,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Expected {
    Value {
        value: Value,
    },
    Empty {
        #[allow(dead_code)]
        empty: bool,
    },
    Error {
        #[allow(dead_code)]
        error: bool,
    },
}

/// Outputs that differ from run to run, compared by type only.
const NONDETERMINISTIC: &[&str] = &["now | type", "env | type", "$ENV | type"];

/// Builtins this libjq build lacks but jq 1.7/1.8 document and Ocean mappings written for them
/// use: libjq fails to compile them, port-agent evaluates them. Checked to stay that way.
const SUPERSET: &[&str] = &["[leaf_paths]", "[.[] | toarray]", "[.[] | ascii]", "ascii"];

/// Known gaps, each checked to still differ so that a fix must remove it from here.
const KNOWN_GAPS: &[&str] = &[];

#[test]
fn engine_matches_libjq_on_the_golden_corpus() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/golden/expressions.expected.json"
    ))
    .unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() > 200, "the corpus lost its cases");
    let jq = Jq::new(Jq::process_env());
    let mut failures = Vec::new();
    for case in &cases {
        let input = parse_raw(case.input.get().as_bytes()).unwrap();
        let actual = jq
            .compile(&case.expr)
            .map_err(|e| e.to_string())
            .and_then(|program| jq.first(&program, input).map_err(|e| e.to_string()));
        let expr = case.expr.as_str();
        if SUPERSET.contains(&expr) {
            assert!(
                matches!(case.expected, Expected::Error { .. }) && matches!(actual, Ok(Some(_))),
                "{expr}: {actual:?}"
            );
            continue;
        }
        let ok = match (&case.expected, &actual) {
            (Expected::Value { value }, Ok(Some(got))) => {
                same(value, &to_json(got)) || NONDETERMINISTIC.contains(&case.expr.as_str())
            }
            (Expected::Empty { .. }, Ok(None)) => true,
            (Expected::Error { .. }, Err(_)) => true,
            _ => false,
        };
        if KNOWN_GAPS.contains(&expr) {
            assert!(!ok, "{expr} now matches libjq: remove it from KNOWN_GAPS");
            continue;
        }
        if !ok {
            let got = match &actual {
                Ok(Some(v)) => to_json(v).to_string(),
                Ok(None) => "(empty)".to_owned(),
                Err(e) => format!("error: {e}"),
            };
            let want = match &case.expected {
                Expected::Value { value } => value.to_string(),
                Expected::Empty { .. } => "(empty)".to_owned(),
                Expected::Error { .. } => "error".to_owned(),
            };
            failures.push(format!(
                "{}  on {}\n    libjq: {want}\n    ours:  {got}",
                case.expr,
                case.input.get()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from libjq:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
