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

/// Empty `properties`/`relations` are not sent, whichever side wrote them.
fn without_empty_maps(mut entity: Value) -> Value {
    if let Value::Object(map) = &mut entity {
        map.retain(|k, v| {
            !((k == "properties" || k == "relations")
                && v.as_object().is_some_and(|m| m.is_empty()))
        });
    }
    entity
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
            slot.entities.push(without_empty_maps(entity.clone()));
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
    assert_eq!(
        mapping.errors().count(),
        0,
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
                    .map(|e| without_empty_maps(serde_json::to_value(e).unwrap()))
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

#[test]
fn mappings_produce_the_entities_ocean_produces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/mappings");
    let mut cases = 0;
    for dir in std::fs::read_dir(&root).unwrap() {
        let case = dir.unwrap().path();
        cases += 1;
        let (want, got) = (expected(&case), actual(&case));
        assert!(!want.is_empty(), "{}: no expectations", case.display());
        assert_eq!(
            want.keys().collect::<Vec<_>>(),
            got.keys().collect::<Vec<_>>(),
            "{}: items and resources differ",
            case.display()
        );
        for (key, w) in &want {
            let g = &got[key];
            let name = format!("{} item {} resource {}", case.display(), key.0, key.1);
            assert_eq!(
                (w.dropped, w.selector_errors),
                (g.dropped, g.selector_errors),
                "{name}"
            );
            assert_eq!(
                w.entities.len(),
                g.entities.len(),
                "{name}: {:#?} vs {:#?}",
                w.entities,
                g.entities
            );
            for (a, b) in w.entities.iter().zip(&g.entities) {
                assert!(same(a, b), "{name}\n  Ocean/libjq: {a}\n  port-agent:  {b}");
            }
        }
    }
    assert!(cases >= 3);
}
