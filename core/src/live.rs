//! Live events (webhooks, pushed items) applied through the same write path as a resync: mapped
//! with every resource of their kind, compared with the state, sent only when changed, recorded
//! after Port's answer. Events waiting together are applied as one run (trigger `live-event`):
//! one set of state commits for all of them, and their order kept.
//!
//! An updated item becomes an upsert where its resource's selector takes it, and a deletion
//! candidate where it does not (it left the mapping's scope); a deleted item is a deletion
//! candidate whatever the selector says. A candidate the same event upserts is kept, and only
//! entities the state records as this integration's are deleted. Where several events of a run
//! touch one entity, the last in arrival order decides it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use port_agent_state::{
    EntityKey, LIVE_EVENT_TRIGGER, RunCounters, RunRecord, RunStatus, StateStore,
};
use serde_json::value::RawValue;
use tracing::Instrument;

use crate::entity_hash::EntityHash;
use crate::mapping::budget::Limits;
use crate::mapping::{CompiledMapping, EnvAccess, PortAppConfig, map_batch};
use crate::port::{Entity, PortClient, UpsertOptions};
use crate::resync::{ResyncError, with_state};
use crate::write::{DeletionOutcome, Source, Vanished, Writer, key_of};

/// One live event: raw items updated and deleted, per kind (and resource).
#[derive(Debug, Clone, Default)]
pub struct LiveEvent {
    pub items: Vec<LiveItems>,
}

impl LiveEvent {
    /// An event of items of one kind, for every resource of the kind.
    pub fn of_kind(
        kind: impl Into<String>,
        upsert: Vec<Box<RawValue>>,
        delete: Vec<Box<RawValue>>,
    ) -> Self {
        Self {
            items: vec![LiveItems {
                kind: kind.into(),
                resource: None,
                upsert,
                delete,
            }],
        }
    }
}

/// Raw items of one kind that an event updates and deletes.
#[derive(Debug, Clone, Default)]
pub struct LiveItems {
    pub kind: String,
    /// The resource (index in the mapping) the items are for; `None`: every resource of the
    /// kind.
    pub resource: Option<usize>,
    pub upsert: Vec<Box<RawValue>>,
    pub delete: Vec<Box<RawValue>>,
}

/// What applying events did.
#[derive(Debug, Clone)]
pub struct LiveOutcome {
    /// The events' run, as recorded in the state (counters and notes included).
    pub run: RunRecord,
    /// Per event (in the order given): its items that failed to map and its entities Port
    /// refused. The rest of it was applied.
    pub event_errors: Vec<Vec<String>>,
}

/// What one resource upserts, with each entity's hash.
type SourceUpserts = (Source, Vec<(Entity, EntityHash)>);
/// One kind's upserts, by resource.
type KindUpserts = (String, Vec<SourceUpserts>);

/// An event mapped: what each resource upserts, and the deletion candidates.
#[derive(Default)]
struct Mapped {
    upserts: Vec<SourceUpserts>,
    candidates: Vec<EntityKey>,
    item_errors: Vec<String>,
}

/// Maps `event`'s items with their resources (on the calling thread: jq values are not
/// `Send`).
fn map_event(
    mapping: &CompiledMapping,
    config: &PortAppConfig,
    limits: &Limits,
    event: &LiveEvent,
) -> Mapped {
    let mut out = Mapped::default();
    for items in &event.items {
        map_items(mapping, config, limits, items, &mut out);
    }
    out
}

/// Maps `items` with every compiled resource of their kind (or the one they name) into `out`.
fn map_items(
    mapping: &CompiledMapping,
    config: &PortAppConfig,
    limits: &Limits,
    items: &LiveItems,
    out: &mut Mapped,
) {
    let resources = mapping
        .resources_of_kind(&items.kind, config)
        .filter(|index| items.resource.is_none_or(|only| only == *index));
    for index in resources {
        let Ok(resource) = &mapping.resources[index] else {
            out.item_errors.push(format!(
                "resources[{index}] (kind {}) does not compile",
                items.kind
            ));
            continue;
        };
        let batch = match map_batch(mapping, index, &items.upsert, limits) {
            Ok(batch) => batch,
            Err(e) => {
                out.item_errors.push(e.to_string());
                continue;
            }
        };
        out.item_errors.extend(batch.errors.iter().map(|(item, e)| {
            format!(
                "resources[{index}] (kind {}) upsert item #{}: {e}",
                items.kind,
                item + 1
            )
        }));
        // What an updated item names but does not upsert has left this resource's scope.
        let made: HashSet<EntityKey> = batch.entities.iter().map(|(e, _)| key_of(e)).collect();
        for raw in &items.upsert {
            out.candidates.extend(
                mapping
                    .keys_of(resource, raw.get().as_bytes(), limits)
                    .into_iter()
                    .filter(|key| !made.contains(key)),
            );
        }
        for raw in &items.delete {
            out.candidates
                .extend(mapping.keys_of(resource, raw.get().as_bytes(), limits));
        }
        let source = Source {
            kind: items.kind.as_str().into(),
            resource: index as u32,
        };
        out.upserts.push((source, batch.entities));
    }
}

/// Events mapped and put together: what the run writes, and which event each written key
/// stands for.
#[derive(Default)]
struct Composed {
    /// By kind (in order of first appearance), then resource; entities in arrival order.
    upserts: Vec<KindUpserts>,
    candidates: Vec<EntityKey>,
    /// The event whose action on a key stands (the last to touch it).
    owner: HashMap<EntityKey, usize>,
    event_errors: Vec<Vec<String>>,
}

/// Maps each event, then keeps for each entity only the last event's action on it: an upsert
/// (from any of that event's resources) or, when that event does not upsert it, a deletion.
fn compose(
    config: &PortAppConfig,
    env: EnvAccess,
    limits: &Limits,
    events: &[LiveEvent],
) -> Composed {
    let mapping = CompiledMapping::compile(config, env.value());
    let mapped: Vec<Mapped> = events
        .iter()
        .map(|event| map_event(&mapping, config, limits, event))
        .collect();
    let mut owner: HashMap<EntityKey, usize> = HashMap::new();
    for (i, m) in mapped.iter().enumerate() {
        let upserted = m
            .upserts
            .iter()
            .flat_map(|(_, e)| e)
            .map(|(e, _)| key_of(e));
        for key in upserted.chain(m.candidates.iter().cloned()) {
            owner.insert(key, i);
        }
    }
    let mut out = Composed::default();
    for (i, m) in mapped.into_iter().enumerate() {
        out.event_errors.push(m.item_errors);
        let mut upserted_here = HashSet::new();
        for (source, entities) in m.upserts {
            let kept: Vec<_> = entities
                .into_iter()
                .filter(|(e, _)| {
                    let key = key_of(e);
                    let stands = owner.get(&key) == Some(&i);
                    upserted_here.insert(key);
                    stands
                })
                .collect();
            add_upserts(&mut out.upserts, source, kept);
        }
        out.candidates.extend(
            m.candidates
                .into_iter()
                .filter(|key| owner.get(key) == Some(&i) && !upserted_here.contains(key)),
        );
    }
    out.owner = owner;
    out
}

/// Adds `entities` to those of `source` (grouped by kind, then resource).
fn add_upserts(
    upserts: &mut Vec<KindUpserts>,
    source: Source,
    entities: Vec<(Entity, EntityHash)>,
) {
    if entities.is_empty() {
        return;
    }
    let kind = match upserts.iter().position(|(k, _)| **k == *source.kind) {
        Some(at) => &mut upserts[at].1,
        None => {
            upserts.push((source.kind.to_string(), Vec::new()));
            &mut upserts.last_mut().expect("just pushed").1
        }
    };
    match kind.iter_mut().find(|(s, _)| s.resource == source.resource) {
        Some((_, existing)) => existing.extend(entities),
        None => kind.push((source, entities)),
    }
}

/// Applies `events` (in arrival order) to Port and the state, as one run. `Err` when Port or
/// the state failed, and a run status `failed` when a deletion failed: the caller retries the
/// events (what Port acknowledged is recorded, so it is not sent again).
pub async fn apply_all(
    client: &PortClient,
    state: &Arc<StateStore>,
    config: &PortAppConfig,
    env: EnvAccess,
    limits: Limits,
    events: Vec<LiveEvent>,
) -> Result<LiveOutcome, ResyncError> {
    let owned_config = config.clone();
    let composed =
        tokio::task::spawn_blocking(move || compose(&owned_config, env, &limits, &events))
            .await
            .map_err(|e| ResyncError::Blocking(e.to_string()))?;
    let Composed {
        upserts,
        candidates,
        owner,
        mut event_errors,
    } = composed;
    let mut run = with_state(state, |s| s.start_run(LIVE_EVENT_TRIGGER)).await?;
    let options = UpsertOptions {
        merge: config.enable_merge_entity,
        create_missing_related_entities: config.create_missing_related_entities,
    };
    let mut writer =
        Writer::new(client, Some(state.clone()), run.id, options, false).remembering_refusals();
    let span = tracing::info_span!("run", id = run.id, trigger = LIVE_EVENT_TRIGGER);
    let written = write(&mut writer, state, config, upserts, candidates, &mut run)
        .instrument(span)
        .await;
    for (key, reason) in writer.take_refusals() {
        if let Some(&event) = owner.get(&key) {
            event_errors[event].push(reason);
        }
    }
    run.status = match &written {
        Err(e) => {
            run.notes.push(format!("the live events stopped: {e}"));
            RunStatus::Failed
        }
        Ok(deletions) => {
            for (kind, deleted) in &deletions.deleted {
                add_counters(
                    &mut run,
                    kind,
                    RunCounters {
                        deleted: *deleted,
                        ..Default::default()
                    },
                );
            }
            run.notes.extend(deletions.notes.iter().cloned());
            run.notes.extend(
                writer
                    .refused_kinds()
                    .iter()
                    .map(|(kind, n)| format!("Port refused {n} entities of kind {kind}")),
            );
            if deletions.failed {
                RunStatus::Failed
            } else if event_errors.iter().any(|e| !e.is_empty())
                || !writer.refused_kinds().is_empty()
            {
                RunStatus::CompletedWithErrors
            } else {
                RunStatus::Completed
            }
        }
    };
    let record = run.clone();
    with_state(state, move |s| s.finish_run(&record)).await?;
    written?;
    Ok(LiveOutcome { run, event_errors })
}

fn add_counters(run: &mut RunRecord, kind: &str, counters: RunCounters) {
    *run.kinds.entry(kind.to_owned()).or_default() += counters;
    run.totals += counters;
}

/// Sends the upserts kind by kind (counted per kind in `run`), then deletes the candidates
/// that the state owns.
async fn write(
    writer: &mut Writer<'_>,
    state: &Arc<StateStore>,
    config: &PortAppConfig,
    upserts: Vec<KindUpserts>,
    candidates: Vec<EntityKey>,
    run: &mut RunRecord,
) -> Result<DeletionOutcome, ResyncError> {
    for (kind, sources) in upserts {
        let sent = async {
            for (source, entities) in sources {
                writer.submit(&source, entities).await?;
            }
            writer.settle().await
        }
        .await;
        add_counters(run, &kind, writer.take_counters());
        sent?;
    }
    // Each once, in key order.
    let candidates: Vec<EntityKey> = candidates
        .into_iter()
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
