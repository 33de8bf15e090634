//! Live events (webhooks, pushed items) applied through the same write path as a resync: mapped
//! with every resource of their kind, compared with the state, sent only when changed, recorded
//! after Port's answer. Each event is a run of its own in the state (trigger `live-event`).
//!
//! An updated item becomes an upsert where its resource's selector takes it, and a deletion
//! candidate where it does not (it left the mapping's scope); a deleted item is a deletion
//! candidate whatever the selector says. A candidate the same event upserts is kept, and only
//! entities the state records as this integration's are deleted.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use port_agent_state::{EntityKey, RunRecord, RunStatus, StateStore};
use serde_json::value::RawValue;

use crate::entity_hash::EntityHash;
use crate::mapping::budget::Limits;
use crate::mapping::{CompiledMapping, EnvAccess, PortAppConfig, map_batch};
use crate::port::{Entity, PortClient, UpsertOptions};
use crate::resync::{ResyncError, with_state};
use crate::write::{DeletionOutcome, Source, Vanished, Writer};

/// One live event: raw items of one kind, updated and deleted.
#[derive(Debug, Clone, Default)]
pub struct LiveEvent {
    pub kind: String,
    pub upsert: Vec<Box<RawValue>>,
    pub delete: Vec<Box<RawValue>>,
}

/// What applying an event did.
#[derive(Debug, Clone)]
pub struct LiveOutcome {
    /// The event's run, as recorded in the state (counters and notes included).
    pub run: RunRecord,
    /// Items that failed to map (by position in `upsert`); the others were applied.
    pub item_errors: Vec<String>,
}

/// An event mapped: what each resource upserts, and the deletion candidates.
#[derive(Default)]
struct Mapped {
    upserts: Vec<(Source, Vec<(Entity, EntityHash)>)>,
    candidates: Vec<EntityKey>,
    item_errors: Vec<String>,
}

/// Maps `event` with every compiled resource of its kind (on the calling thread: jq values are
/// not `Send`).
fn map_event(config: &PortAppConfig, env: EnvAccess, limits: &Limits, event: &LiveEvent) -> Mapped {
    let mapping = CompiledMapping::compile(config, env.value());
    let mut out = Mapped::default();
    for index in mapping.resources_of_kind(&event.kind, config) {
        let Ok(resource) = &mapping.resources[index] else {
            out.item_errors.push(format!(
                "resources[{index}] (kind {}) does not compile",
                event.kind
            ));
            continue;
        };
        let batch = match map_batch(&mapping, index, &event.upsert, limits) {
            Ok(batch) => batch,
            Err(e) => {
                out.item_errors.push(e.to_string());
                continue;
            }
        };
        out.item_errors.extend(
            batch
                .errors
                .iter()
                .map(|(item, e)| format!("upsert item #{}: {e}", item + 1)),
        );
        // What an updated item names but does not upsert has left this resource's scope.
        let made: HashSet<EntityKey> = batch
            .entities
            .iter()
            .map(|(e, _)| crate::write::key_of(e))
            .collect();
        for raw in &event.upsert {
            out.candidates.extend(
                mapping
                    .keys_of(resource, raw.get().as_bytes(), limits)
                    .into_iter()
                    .filter(|key| !made.contains(key)),
            );
        }
        for raw in &event.delete {
            out.candidates
                .extend(mapping.keys_of(resource, raw.get().as_bytes(), limits));
        }
        let source = Source {
            kind: event.kind.as_str().into(),
            resource: index as u32,
        };
        out.upserts.push((source, batch.entities));
    }
    out
}

/// Applies `event` to Port and the state. `Err` when Port or the state failed, and a run
/// status `failed` when a deletion failed: the caller retries the event (what Port acknowledged
/// is recorded, so it is not sent again).
pub async fn apply(
    client: &PortClient,
    state: &Arc<StateStore>,
    config: &PortAppConfig,
    env: EnvAccess,
    limits: Limits,
    event: LiveEvent,
) -> Result<LiveOutcome, ResyncError> {
    let kind = event.kind.clone();
    let owned_config = config.clone();
    let mapped =
        tokio::task::spawn_blocking(move || map_event(&owned_config, env, &limits, &event))
            .await
            .map_err(|e| ResyncError::Blocking(e.to_string()))?;
    let mut run = with_state(state, |s| s.start_run("live-event")).await?;
    let options = UpsertOptions {
        merge: config.enable_merge_entity,
        create_missing_related_entities: config.create_missing_related_entities,
    };
    let mut writer = Writer::new(client, Some(state.clone()), run.id, options, false);
    let written = write(
        &mut writer,
        state,
        config,
        mapped.upserts,
        mapped.candidates,
    )
    .await;
    let mut counters = writer.take_counters();
    run.status = match &written {
        Err(e) => {
            run.notes.push(format!("the live event stopped: {e}"));
            RunStatus::Failed
        }
        Ok(deletions) => {
            counters.deleted += deletions.deleted.values().sum::<u64>();
            run.notes.extend(deletions.notes.iter().cloned());
            run.notes.extend(
                writer
                    .refused_kinds()
                    .iter()
                    .map(|(kind, n)| format!("Port refused {n} entities of kind {kind}")),
            );
            if deletions.failed {
                RunStatus::Failed
            } else if !mapped.item_errors.is_empty() || !writer.refused_kinds().is_empty() {
                RunStatus::CompletedWithErrors
            } else {
                RunStatus::Completed
            }
        }
    };
    run.kinds.insert(kind, counters);
    run.totals += counters;
    let record = run.clone();
    with_state(state, move |s| s.finish_run(&record)).await?;
    written?;
    Ok(LiveOutcome {
        run,
        item_errors: mapped.item_errors,
    })
}

/// Sends the event's upserts, then deletes its candidates that the state owns and the event
/// does not upsert.
async fn write(
    writer: &mut Writer<'_>,
    state: &Arc<StateStore>,
    config: &PortAppConfig,
    upserts: Vec<(Source, Vec<(Entity, EntityHash)>)>,
    candidates: Vec<EntityKey>,
) -> Result<DeletionOutcome, ResyncError> {
    let mut upserted: HashSet<EntityKey> = HashSet::new();
    for (source, entities) in upserts {
        upserted.extend(entities.iter().map(|(e, _)| crate::write::key_of(e)));
        writer.submit(&source, entities).await?;
    }
    writer.settle().await?;
    // Each once, in key order.
    let candidates: Vec<EntityKey> = candidates
        .into_iter()
        .filter(|key| !upserted.contains(key))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if candidates.is_empty() {
        return Ok(DeletionOutcome::default());
    }
    let lookup = candidates.clone();
    let records = with_state(state, move |s| s.get_many(&lookup)).await?;
    let owned: Vec<Vanished> = candidates
        .into_iter()
        .zip(records)
        .filter_map(|(key, record)| {
            Some(Vanished {
                key,
                kind: record?.kind,
            })
        })
        .collect();
    if owned.is_empty() {
        return Ok(DeletionOutcome::default());
    }
    writer.delete(owned, config.delete_dependent_entities).await
}
