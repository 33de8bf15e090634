//! Whole mappings over real-shaped raw items: port-agent must produce the entities that Ocean's
//! algorithm over libjq produces (core/tests/golden/mapping.py wrote expected.jsonl), item by
//! item and resource by resource, including drops and selector errors.

use std::collections::BTreeMap;
use std::path::Path;

use port_agent_core::mapping::jq::Jq;
use port_agent_core::mapping::value::parse_raw;
use port_agent_core::mapping::{CompiledMapping, PortAppConfig};
use serde_json::Value;
use support::same;

mod support;

#[derive(Debug, Default, PartialEq)]
struct Outcome {
    entities: Vec<Value>,
    /// Entities left out for an empty identifier or blueprint: Ocean drops them silently;
    /// port-agent fails the item (so that its kind deletes nothing), naming the field.
    dropped: usize,
    selector_errors: usize,
}

fn is_empty_identity_error(error: &str) -> bool {
    error.contains(".port.entity.mappings.identifier ")
        || error.contains(".port.entity.mappings.blueprint ")
}

fn expected(case: &Path) -> BTreeMap<(usize, usize), Outcome> {
    let mut out: BTreeMap<(usize, usize), Outcome> = BTreeMap::new();
    for line in std::fs::read_to_string(case.join("expected.jsonl"))
        .unwrap()
        .lines()
    {
        let v: Value = serde_json::from_str(line).unwrap();
        let key = (
            v["item"].as_u64().unwrap() as usize,
            v["resource"].as_u64().unwrap() as usize,
        );
        let slot = out.entry(key).or_default();
        if let Some(entity) = v.get("entity") {
            slot.entities.push(entity.clone());
        } else if v.get("dropped").is_some() {
            slot.dropped += 1;
        } else if v.get("selector_error").is_some() {
            slot.selector_errors += 1;
        }
    }
    out
}

fn actual(case: &Path) -> BTreeMap<(usize, usize), Outcome> {
    let config = PortAppConfig::from_file(&case.join("mapping.yaml")).unwrap();
    let mapping = CompiledMapping::compile(&config, Jq::process_env());
    // Fields that do not compile (GitLab's `readme: file://README.md`) are null, as in Ocean;
    // nothing else may fail to compile.
    assert!(
        mapping.resources.iter().all(Result::is_ok),
        "{:?}",
        mapping.errors().collect::<Vec<_>>()
    );
    let kind = std::fs::read_to_string(case.join("kind"))
        .unwrap()
        .trim()
        .to_owned();
    let mut out = BTreeMap::new();
    for (item, line) in std::fs::read_to_string(case.join("input.jsonl"))
        .unwrap()
        .lines()
        .enumerate()
    {
        if line.trim().is_empty() {
            continue;
        }
        let raw = parse_raw(line.as_bytes()).unwrap();
        for index in mapping.resources_of_kind(&kind, &config) {
            let resource = mapping.resources[index].as_ref().unwrap();
            let result = mapping.map_item(resource, &raw);
            let outcome = Outcome {
                entities: result
                    .entities
                    .iter()
                    .map(|e| serde_json::to_value(e).unwrap())
                    .collect(),
                dropped: result
                    .errors
                    .iter()
                    .filter(|e| is_empty_identity_error(e))
                    .count(),
                selector_errors: result
                    .errors
                    .iter()
                    .filter(|e| !is_empty_identity_error(e))
                    .count(),
            };
            if outcome != Outcome::default() {
                out.insert((item, index), outcome);
            }
        }
    }
    out
}

/// How `case`'s entities differ from Ocean's, one line each (none: the same).
fn differences(case: &Path) -> Vec<String> {
    let (want, got) = (expected(case), actual(case));
    if want.is_empty() {
        return vec![format!("{}: no expectations", case.display())];
    }
    if want.keys().ne(got.keys()) {
        return vec![format!(
            "{}: items and resources differ: Ocean {:?}, port-agent {:?}",
            case.display(),
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>()
        )];
    }
    let mut out = Vec::new();
    for (key, w) in &want {
        let g = &got[key];
        let name = format!("{} item {} resource {}", case.display(), key.0, key.1);
        if (w.dropped, w.selector_errors) != (g.dropped, g.selector_errors) {
            out.push(format!("{name}: drops and selector errors {w:?} vs {g:?}"));
        } else if w.entities.len() != g.entities.len() {
            out.push(format!("{name}: {:?} vs {:?}", w.entities, g.entities));
        }
        for (a, b) in w.entities.iter().zip(&g.entities) {
            if !same(a, b) {
                out.push(format!("{name}\n  Ocean/libjq: {a}\n  port-agent:  {b}"));
            }
        }
    }
    out
}

#[test]
fn mappings_produce_the_entities_ocean_produces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mappings");
    let mut cases = 0;
    let mut failures = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        cases += 1;
        failures.extend(differences(&dir.unwrap().path()));
    }
    assert!(cases >= 17, "the corpus lost cases: {cases}");
    assert!(
        failures.is_empty(),
        "{} differences from Ocean:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
