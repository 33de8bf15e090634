//! The raw-item cache: an item whose bytes and resource mapping are the same as when its
//! entities were recorded (and the state still holds them, settled, with those hashes) is taken
//! as unchanged without running jq.

use std::collections::HashMap;
use std::sync::Arc;

use port_agent_state::{EntityKey, StateStore};
use serde_json::Value;

use super::{ResyncError, with_state};
use crate::integration::RawBatch;
use crate::write::key_fingerprint;

/// For each submitted item, its fingerprint when it may be remembered.
pub(crate) type Fingerprints = Vec<Option<[u8; 32]>>;

/// Builtins whose output depends on more than the item: a resource using one is always mapped.
const NONDETERMINISTIC: &[&str] = &[
    "now",
    "env",
    "$ENV",
    "input",
    "inputs",
    "input_line_number",
    "input_filename",
    "localtime",
    "strflocaltime",
    "$__prog_args",
];

fn uses_nondeterminism(text: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    NONDETERMINISTIC.iter().any(|name| {
        text.match_indices(name).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + name.len()..].chars().next();
            !before.is_some_and(|c| word(c) || (c == '$' && !name.starts_with('$')))
                && !after.is_some_and(word)
        })
    })
}

/// blake3 of the item under the resource's fingerprint.
fn item_fingerprint(resource: &[u8; 32], raw: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(resource);
    hasher.update(raw.as_bytes());
    *hasher.finalize().as_bytes()
}

/// blake3 of a whole batch: its items' fingerprints, in order.
fn block_fingerprint(resource: &[u8; 32], items: &[[u8; 32]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_keyed(resource);
    hasher.update(b"block");
    for item in items {
        hasher.update(item);
    }
    *hasher.finalize().as_bytes()
}

/// A batch after the cache: the items to map and what the cache vouched for.
pub(super) struct Split {
    pub(super) to_map: RawBatch,
    /// Each item to map's fingerprint and its position in the fetched batch.
    pub(super) fingerprints: Fingerprints,
    pub(super) positions: Vec<usize>,
    /// Key fingerprints of the entities the unchanged items produced.
    pub(super) cached: Vec<u64>,
    /// The batch's block fingerprint, to remember it by.
    pub(super) block: [u8; 32],
    /// When its block vouched for the whole batch: the batch and its items' fingerprints, kept
    /// until it is applied (see [`Recheck`]).
    pub(super) recheck: Option<Recheck>,
}

/// A batch its block vouched for when it was fetched. Batches are looked up ahead of the
/// writes of the batches before them: if by the time this one is applied those wrote a record,
/// or queued a change, the block may no longer hold (they may share an entity with it, whose
/// later contributions must follow a changed first one) and the batch is mapped after all.
pub(crate) struct Recheck {
    pub(super) batch: RawBatch,
    pub(super) fingerprints: Vec<[u8; 32]>,
    /// The first item's number in the kind's stream (1-based), for error messages.
    pub(super) first_number: u64,
    pub(super) block: [u8; 32],
}

/// Splits a batch into items the cache vouches for and items to map. A whole batch unchanged
/// since a completed run is vouched for by one lookup (its block); otherwise each item is looked
/// up, and vouched for only if the state still holds its entities, settled, with the hashes it
/// produced.
pub(super) async fn split_cached(
    state: &Arc<StateStore>,
    run: u64,
    resource: &[u8; 32],
    batch: RawBatch,
    first_number: u64,
) -> Result<Split, ResyncError> {
    let fingerprints: Vec<[u8; 32]> = batch
        .iter()
        .map(|raw| item_fingerprint(resource, raw.get()))
        .collect();
    let block = block_fingerprint(resource, &fingerprints);
    let lookup = fingerprints.clone();
    let known = with_state(state, move |s| {
        if let Some(keys) = s.raw_block(&block)? {
            return Ok(Err(keys));
        }
        let hits = s.raw_lookup(&lookup)?;
        let keys: Vec<EntityKey> = hits
            .iter()
            .flatten()
            .flatten()
            .map(|(key, _)| key.clone())
            .collect();
        let records = s.get_many(&keys)?;
        // Entities with several contributions are always mapped (their order matters), and so
        // are entities in doubt (Port may not hold what the item produced).
        let recorded: HashMap<EntityKey, [u8; 32]> = keys
            .into_iter()
            .zip(records)
            .filter_map(|(k, r)| {
                let r = r?;
                (r.later.is_empty() && r.doubt.is_none() && r.position_in(run) == 0)
                    .then_some((k, r.hash))
            })
            .collect();
        // A hit counts only if the state still holds each entity with the hash the item produced.
        Ok(Ok(hits
            .into_iter()
            .map(|hit| {
                hit.filter(|produced| produced.iter().all(|(k, h)| recorded.get(k) == Some(h)))
            })
            .collect::<Vec<_>>()))
    })
    .await?;
    let known = match known {
        Err(cached) => {
            return Ok(Split {
                to_map: Vec::new(),
                fingerprints: Vec::new(),
                positions: Vec::new(),
                cached,
                block,
                recheck: Some(Recheck {
                    batch,
                    fingerprints,
                    first_number,
                    block,
                }),
            });
        }
        Ok(known) => known,
    };
    let mut split = Split {
        to_map: Vec::with_capacity(batch.len()),
        fingerprints: Vec::with_capacity(batch.len()),
        positions: Vec::with_capacity(batch.len()),
        cached: Vec::new(),
        block,
        recheck: None,
    };
    for (position, ((raw, fingerprint), hit)) in
        batch.into_iter().zip(fingerprints).zip(known).enumerate()
    {
        match hit {
            Some(produced) => split
                .cached
                .extend(produced.iter().map(|(key, _)| key_fingerprint(key))),
            None => {
                split.to_map.push(raw);
                split.fingerprints.push(Some(fingerprint));
                split.positions.push(position);
            }
        }
    }
    Ok(split)
}

/// What makes resource `index`'s output for an item: its mapping text and this engine.
/// `None` when it uses builtins that depend on more than the item.
pub(super) fn resource_fingerprint(mapping: &Value, index: usize) -> Option<[u8; 32]> {
    let text = mapping.get("resources")?.get(index)?.to_string();
    if uses_nondeterminism(&text) {
        return None;
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"port-agent raw item cache\0");
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    hasher.update(text.as_bytes());
    Some(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_reading_the_clock_or_environment_are_never_cached() {
        for text in [
            r#"{"q":"now | todate"}"#,
            r#"{"q":"env.REGION"}"#,
            r#"{"q":"$ENV.X"}"#,
            r#"{"q":"[inputs]"}"#,
            r#"{"q":"localtime"}"#,
        ] {
            assert!(uses_nondeterminism(text), "{text}");
        }
        for text in [
            r#"{"q":".known | ascii_downcase"}"#,
            r#"{"q":".environment"}"#,
            r#"{"q":".snow"}"#,
            r#"{"q":"$now_ish"}"#,
        ] {
            assert!(!uses_nondeterminism(text), "{text}");
        }
    }
}
