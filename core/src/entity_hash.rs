//! The canonical form of a mapped entity and its blake3 hash: what the state remembers to tell
//! "unchanged" from "must be sent again".
//!
//! Canonical means: object keys sorted at every depth, one number format (an integral value is
//! an integer, `-0` is `0`), team lists sorted. Equal entities hash equal however the raw data
//! ordered its keys; any change to identifier, blueprint, title, icon, team, properties or
//! relations changes the hash. A field the mapping does not produce differs from a null one,
//! since Port treats them differently (merge keeps the old value, null clears it).

use std::fmt;

use serde_json::{Map, Number, Value};

use crate::port::Entity;

/// blake3 of an entity's canonical JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityHash(pub [u8; 32]);

impl fmt::Display for EntityHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for EntityHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityHash({self})")
    }
}

/// Largest integer a double holds exactly; beyond it, integral doubles stay doubles.
const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0;

/// `value` with keys sorted and numbers in one format, so that equal data compares equal.
pub fn canonical_value(value: &Value) -> Value {
    match value {
        Value::Number(n) => Value::Number(canonical_number(n)),
        Value::Array(items) => Value::Array(items.iter().map(canonical_value).collect()),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut out = Map::new();
            for key in keys {
                out.insert(key.clone(), canonical_value(&map[key]));
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

fn canonical_number(n: &Number) -> Number {
    if n.is_i64() || n.is_u64() {
        return n.clone();
    }
    match n.as_f64() {
        // -0.0 matches too: float patterns compare with ==.
        Some(0.0) => Number::from(0),
        Some(f) if f.fract() == 0.0 && f.abs() < EXACT_INTEGER_LIMIT => Number::from(f as i64),
        _ => n.clone(),
    }
}

/// The entity as one canonical JSON value.
pub fn canonical(entity: &Entity) -> Value {
    let mut out = Map::new();
    out.insert(
        "blueprint".to_owned(),
        Value::from(entity.blueprint.clone()),
    );
    out.insert("identifier".to_owned(), canonical_value(&entity.identifier));
    if let Some(title) = &entity.title {
        out.insert("title".to_owned(), canonical_value(title));
    }
    if let Some(icon) = &entity.icon {
        out.insert("icon".to_owned(), canonical_value(icon));
    }
    if let Some(team) = &entity.team {
        let mut team = canonical_value(team);
        if let Value::Array(members) = &mut team {
            members.sort_by_cached_key(|m| m.to_string());
        }
        out.insert("team".to_owned(), team);
    }
    // Declared empty or not declared: the same to Port, so the same hash (and an upgrade
    // that now sends `properties: {}` re-sends nothing).
    out.insert(
        "properties".to_owned(),
        canonical_value(&Value::Object(entity.properties().clone())),
    );
    out.insert(
        "relations".to_owned(),
        canonical_value(&Value::Object(entity.relations().clone())),
    );
    canonical_value(&Value::Object(out))
}

/// The hash of `entity`'s canonical form.
pub fn hash_entity(entity: &Entity) -> EntityHash {
    hash_entity_sized(entity).0
}

/// The hash of `entity`'s canonical form, and that form's size in bytes (about what the
/// entity takes in a request).
pub fn hash_entity_sized(entity: &Entity) -> (EntityHash, usize) {
    let bytes = serde_json::to_vec(&canonical(entity)).expect("canonical entities are plain JSON");
    (EntityHash(*blake3::hash(&bytes).as_bytes()), bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The digest of one entity, pinned: a change to the canonical form would re-send every
    /// entity of every user after an upgrade. If this fails, the change needs a state
    /// migration that rehashes (or a very good reason).
    #[test]
    fn the_digest_of_a_known_entity_never_changes() {
        let mut entity = Entity::new("service", "payments-api");
        entity.title = Some(json!("Payments API"));
        entity.team = Some(json!(["payments", "core"]));
        entity.properties = json!({"language": "rust", "stars": 42, "ratio": 0.5, "tags": ["a", "b"], "meta": {"z": 1, "a": null}})
            .as_object()
            .cloned();
        entity.relations = json!({"team": "payments"}).as_object().cloned();
        let hex: String = hash_entity(&entity)
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, PINNED);
    }

    const PINNED: &str = "eec55f2876384b47c8631b59cd4a2b44e966c3bf60b7dea43a00aeaf1951ac8a";

    fn entity(properties: Value) -> Entity {
        let mut e = Entity::new("service", "api");
        e.title = Some(json!("API"));
        e.team = Some(json!(["b", "a"]));
        e.properties = properties.as_object().cloned();
        e
    }

    /// A small deterministic generator, so the property tests need no extra crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn value(&mut self, depth: u32) -> Value {
            match (self.next() % if depth == 0 { 4 } else { 6 }, self.next()) {
                (0, n) => json!(n % 1000),
                (1, n) => json!(format!("s{}", n % 50)),
                (2, n) => json!(n % 2 == 0),
                (3, n) => json!((n % 1000) as f64 / 8.0),
                (4, n) => Value::Array((0..n % 4).map(|_| self.value(depth - 1)).collect()),
                (_, n) => {
                    let mut map = Map::new();
                    for i in 0..n % 5 {
                        map.insert(format!("k{i}"), self.value(depth - 1));
                    }
                    Value::Object(map)
                }
            }
        }
    }

    /// The same JSON with every object's keys inserted in reverse order.
    fn reordered(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut out = Map::new();
                for (k, v) in map.iter().rev() {
                    out.insert(k.clone(), reordered(v));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(reordered).collect()),
            other => other.clone(),
        }
    }

    #[test]
    fn key_order_and_number_format_do_not_change_the_hash() {
        let a = entity(json!({"x": 1, "y": {"b": 2.0, "a": [1, 2]}}));
        let b = entity(json!({"y": {"a": [1.0, 2], "b": 2}, "x": 1.0}));
        assert_eq!(hash_entity(&a), hash_entity(&b));
        let mut swapped_team = a.clone();
        swapped_team.team = Some(json!(["a", "b"]));
        assert_eq!(hash_entity(&a), hash_entity(&swapped_team));
        assert_eq!(
            hash_entity(&entity(json!({"z": -0.0}))),
            hash_entity(&entity(json!({"z": 0})))
        );
    }

    #[test]
    fn equal_entities_hash_equal_for_random_shapes() {
        let mut rng = Lcg(42);
        for _ in 0..500 {
            let properties =
                Value::Object((0..6).map(|i| (format!("p{i}"), rng.value(3))).collect());
            let a = entity(properties.clone());
            let b = entity(reordered(&properties));
            assert_eq!(hash_entity(&a), hash_entity(&b), "{properties}");
        }
    }

    #[test]
    fn any_change_changes_the_hash() {
        let mut rng = Lcg(7);
        let base = entity(json!({"url": "u", "stars": 3}));
        let h = hash_entity(&base);
        let mut changes: Vec<Entity> = Vec::new();
        let mut e = base.clone();
        e.identifier = json!("api2");
        changes.push(e);
        let mut e = base.clone();
        e.blueprint = "other".into();
        changes.push(e);
        let mut e = base.clone();
        e.title = Some(json!("Api"));
        changes.push(e);
        let mut e = base.clone();
        e.title = None;
        changes.push(e);
        let mut e = base.clone();
        e.title = Some(Value::Null);
        changes.push(e);
        let mut e = base.clone();
        e.icon = Some(json!("Github"));
        changes.push(e);
        let mut e = base.clone();
        e.team = Some(json!(["a"]));
        changes.push(e);
        let mut e = base.clone();
        e.set_relation("owner", json!("t"));
        changes.push(e);
        for _ in 0..300 {
            let mut e = base.clone();
            let v = rng.value(2);
            if v == json!(3) || v == json!(3.0) {
                continue;
            }
            e.set_property("stars", v);
            changes.push(e);
        }
        for changed in &changes {
            assert_ne!(hash_entity(changed), h, "{:?}", changed);
        }
    }
}
