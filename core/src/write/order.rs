//! The order writes must reach Port in: contributions to one entity one after the other, and
//! relation targets before the entities that point at them.

use std::collections::HashMap;

use port_agent_state::EntityKey;
use serde_json::Value;

use crate::entity_hash::EntityHash;
use crate::port::Entity;

pub(crate) fn key_of(entity: &Entity) -> EntityKey {
    (entity.blueprint.clone(), entity.identifier_label())
}

/// Splits a batch so that an entity produced more than once comes once per round: each
/// contribution is compared and sent after the one before it.
pub(crate) fn occurrence_rounds(
    entities: Vec<(Entity, EntityHash)>,
) -> Vec<Vec<(Entity, EntityHash)>> {
    let mut occurrences: HashMap<EntityKey, usize> = HashMap::with_capacity(entities.len());
    let mut rounds: Vec<Vec<(Entity, EntityHash)>> = vec![Vec::with_capacity(entities.len())];
    for entry in entities {
        let seen = occurrences.entry(key_of(&entry.0)).or_default();
        if *seen == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*seen].push(entry);
        *seen += 1;
    }
    rounds.retain(|round| !round.is_empty());
    rounds
}

/// Identifiers an entity's relations point at (plain identifiers; search queries are Port's).
fn relation_targets(entity: &Entity) -> impl Iterator<Item = &str> {
    entity.relations().values().flat_map(|value| match value {
        Value::String(id) => vec![id.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    })
}

/// Orders items so that relation targets among them come in an earlier layer (Kahn's
/// algorithm). Items caught in a cycle share the last layer: Port decides for them.
pub(crate) fn dependency_layers<T>(pending: Vec<T>, entity: impl Fn(&T) -> &Entity) -> Vec<Vec<T>> {
    let position: HashMap<String, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, p)| (entity(p).identifier_label(), i))
        .collect();
    let mut waiting_on: Vec<usize> = vec![0; pending.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); pending.len()];
    for (i, p) in pending.iter().enumerate() {
        let mut targets: Vec<usize> = relation_targets(entity(p))
            .filter_map(|t| position.get(t).copied())
            .filter(|&t| t != i)
            .collect();
        targets.sort_unstable();
        targets.dedup();
        waiting_on[i] = targets.len();
        for t in targets {
            dependents[t].push(i);
        }
    }
    let mut layer_of = vec![usize::MAX; pending.len()];
    let mut current: Vec<usize> = (0..pending.len()).filter(|&i| waiting_on[i] == 0).collect();
    let mut depth = 0;
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            layer_of[i] = depth;
            for &d in &dependents[i] {
                waiting_on[d] -= 1;
                if waiting_on[d] == 0 {
                    next.push(d);
                }
            }
        }
        current = next;
        depth += 1;
    }
    let mut layers: Vec<Vec<T>> = (0..=depth).map(|_| Vec::new()).collect();
    for (i, p) in pending.into_iter().enumerate() {
        let layer = if layer_of[i] == usize::MAX {
            depth
        } else {
            layer_of[i]
        };
        layers[layer].push(p);
    }
    layers.retain(|l| !l.is_empty());
    layers
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entity(id: &str, relations: Value) -> Entity {
        let mut entity = Entity::new("svc", id);
        entity.relations = relations.as_object().cloned();
        entity
    }

    fn ids(layers: &[Vec<Entity>]) -> Vec<Vec<String>> {
        layers
            .iter()
            .map(|l| l.iter().map(Entity::identifier_label).collect())
            .collect()
    }

    #[test]
    fn targets_come_before_the_entities_that_point_at_them() {
        let layers = dependency_layers(
            vec![
                entity("api", json!({"team": "core", "depends": ["db", "cache"]})),
                entity("db", json!({"team": "core"})),
                entity("core", json!({})),
                entity("cache", json!({"outside": "not-in-batch"})),
            ],
            |e| e,
        );
        assert_eq!(
            ids(&layers),
            [vec!["core", "cache"], vec!["db"], vec!["api"]]
        );
    }

    #[test]
    fn cycles_are_tolerated_and_sent_last() {
        let layers = dependency_layers(
            vec![
                entity("a", json!({"next": "b"})),
                entity("b", json!({"next": "a"})),
                entity("c", json!({})),
                entity("self", json!({"me": "self"})),
            ],
            |e| e,
        );
        assert_eq!(ids(&layers), [vec!["c", "self"], vec!["a", "b"]]);
    }

    #[test]
    fn each_contribution_to_an_entity_gets_its_own_round() {
        let hash = EntityHash([0; 32]);
        let rounds = occurrence_rounds(vec![
            (entity("a", json!({})), hash),
            (entity("b", json!({})), hash),
            (entity("a", json!({})), hash),
        ]);
        assert_eq!(
            rounds
                .iter()
                .map(|r| r.iter().map(|(e, _)| e.identifier_label()).collect())
                .collect::<Vec<Vec<String>>>(),
            [vec!["a", "b"], vec!["a"]]
        );
    }
}
