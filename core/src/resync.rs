//! One resync: integration → mapping → hash and diff against the state → Port writes → state.
//!
//! Only new or changed entities are sent; an entity is recorded in the state only after Port
//! acknowledged it; deletions happen only after a run in which every resource succeeded, stay
//! under `entityDeletionThreshold`, and are forgotten only after Port confirmed them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use port_agent_state::{
    EntityKey, EntityRecord, Produced, RunCounters, RunRecord, RunStatus, StateError, StateStore,
    Written,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::entity_hash::EntityHash;
use crate::integration::{Integration, RawBatch};
use crate::mapping::{CompiledMapping, MappingPool, PendingBatch, PortAppConfig};
use crate::port::{
    Entity, NewIntegration, PortClient, PortError, ResyncState, ResyncStatus, UpsertOutcome,
};

/// What the resync needs to know about the integration in Port.
#[derive(Debug, Clone)]
pub struct IntegrationSetup {
    pub identifier: String,
    pub integration_type: String,
    pub version: String,
    /// Blueprints to create in Port when missing (`.port/resources/blueprints.json`).
    pub blueprints: Vec<Value>,
    /// The mapping, stored on the integration when the agent creates it.
    pub mapping: Value,
    pub interval_minutes: Option<u64>,
}

/// Live counters of a running resync, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    pub fetched: std::sync::atomic::AtomicU64,
    pub unchanged: std::sync::atomic::AtomicU64,
    pub upserted: std::sync::atomic::AtomicU64,
    pub kind: std::sync::Mutex<String>,
}

impl Progress {
    fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Default)]
pub struct ResyncOptions {
    /// Only these kinds (and only their entities are deletion candidates). `None`: all.
    pub kinds: Option<Vec<String>>,
    /// Write nothing to Port or the state; report the plan.
    pub dry_run: bool,
    /// Why the run started: `cli`, `schedule`, `port-request`, ...
    pub trigger: String,
}

/// A planned write, for `--dry-run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    pub blueprint: String,
    pub identifier: String,
    pub kind: String,
    /// `new`, `changed` or `vanished`.
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct ResyncReport {
    pub run: RunRecord,
    pub duration: Duration,
    /// Filled by a dry run: what would be upserted and deleted.
    pub plan: Vec<PlannedChange>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the state store stopped: {0}")]
    Blocking(String),
}

/// Everything a resync works with.
pub struct Resync<'a> {
    pub client: &'a PortClient,
    /// `None` only for a dry run without a state file yet.
    pub state: Option<Arc<StateStore>>,
    pub config: &'a PortAppConfig,
    pub mapping: &'a CompiledMapping,
    pub pool: &'a MappingPool,
    pub integration: &'a dyn Integration,
    pub setup: &'a IntegrationSetup,
    /// Updated as the run goes, for whoever shows progress.
    pub progress: Option<Arc<Progress>>,
    /// Cancelled when the agent is asked to stop: the run takes no new batch, lets the Port
    /// requests in flight finish (so what Port acknowledged is recorded), deletes nothing and
    /// ends as aborted.
    pub stop: CancellationToken,
}

impl std::fmt::Debug for Resync<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resync")
            .field("setup", &self.setup)
            .finish_non_exhaustive()
    }
}

fn iso_now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Runs `work` on the state off the async runtime (redb blocks).
pub(crate) async fn with_state<T: Send + 'static>(
    state: &Arc<StateStore>,
    work: impl FnOnce(&StateStore) -> Result<T, StateError> + Send + 'static,
) -> Result<T, ResyncError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || work(&state))
        .await
        .map_err(|e| ResyncError::Blocking(e.to_string()))?
        .map_err(ResyncError::from)
}

fn key_of(entity: &Entity) -> EntityKey {
    (entity.blueprint.clone(), entity.identifier_label())
}

/// What a dry run found: the writes it would make, and every entity the data produced.
#[derive(Default)]
struct Plan {
    changes: Vec<PlannedChange>,
    /// Every entity the data produced, with the record the state would hold after this run (a
    /// dry run cannot write the state, so it keeps copies).
    produced: HashMap<EntityKey, EntityRecord>,
}

/// The run id a dry run keeps its copies under: never a real run's.
const DRY_RUN: u64 = u64::MAX;

impl Plan {
    /// Whether the next contribution to `key`, with `hash`, is what Port holds, judged as
    /// [`EntityRecord::advance`] judges it in a real run.
    fn unchanged(
        &mut self,
        key: &EntityKey,
        record: Option<&EntityRecord>,
        hash: &[u8; 32],
    ) -> bool {
        match (self.produced.get_mut(key), record) {
            (Some(simulated), _) => simulated.advance(DRY_RUN, *hash),
            (None, Some(record)) => {
                let mut simulated = record.clone();
                let unchanged = simulated.advance(DRY_RUN, *hash);
                self.produced.insert(key.clone(), simulated);
                unchanged
            }
            (None, None) => {
                let created = EntityRecord::first_written(DRY_RUN, *hash, "", 0, 0);
                self.produced.insert(key.clone(), created);
                false
            }
        }
    }
}

/// Splits a batch so that an entity produced more than once comes once per round: each
/// contribution is compared and sent after the one before it.
fn occurrence_rounds(entities: Vec<(Entity, EntityHash)>) -> Vec<Vec<(Entity, EntityHash)>> {
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

/// For each submitted item, its fingerprint when it may be remembered.
type Fingerprints = Vec<Option<[u8; 32]>>;

/// One batch after mapping.
pub(crate) struct Mapped {
    pub(crate) entities: Vec<(Entity, EntityHash)>,
    /// For each entity, the position of the submitted item that produced it.
    pub(crate) entity_items: Vec<usize>,
    pub(crate) fingerprints: Fingerprints,
    /// What unchanged items (not mapped again) produced.
    pub(crate) cached: Produced,
}

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

/// Splits a batch into items the cache vouches for (their entities are recorded with the same
/// hashes) and items to map. Returns the items to map, their fingerprints, and what the cached
/// ones produced.
async fn split_cached(
    state: &Arc<StateStore>,
    run: u64,
    resource: &[u8; 32],
    batch: RawBatch,
) -> Result<(RawBatch, Fingerprints, Produced), ResyncError> {
    let fingerprints: Vec<[u8; 32]> = batch
        .iter()
        .map(|raw| item_fingerprint(resource, raw.get()))
        .collect();
    let lookup = fingerprints.clone();
    let known = with_state(state, move |s| {
        let hits = s.raw_lookup(&lookup)?;
        let keys: Vec<EntityKey> = hits
            .iter()
            .flatten()
            .flatten()
            .map(|(key, _)| key.clone())
            .collect();
        let records = s.get_many(&keys)?;
        // Entities with several contributions are always mapped: their order matters.
        let recorded: HashMap<EntityKey, [u8; 32]> = keys
            .into_iter()
            .zip(records)
            .filter_map(|(k, r)| {
                let r = r?;
                (r.later.is_empty() && r.position_in(run) == 0).then_some((k, r.hash))
            })
            .collect();
        // A hit counts only if the state still holds each entity with the hash the item produced.
        Ok(hits
            .into_iter()
            .map(|hit| {
                hit.filter(|produced| produced.iter().all(|(k, h)| recorded.get(k) == Some(h)))
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let mut to_map = Vec::with_capacity(batch.len());
    let mut to_map_fingerprints = Vec::with_capacity(batch.len());
    let mut cached = Vec::new();
    for ((raw, fingerprint), hit) in batch.into_iter().zip(fingerprints).zip(known) {
        match hit {
            Some(produced) => cached.extend(produced),
            None => {
                to_map.push(raw);
                to_map_fingerprints.push(Some(fingerprint));
            }
        }
    }
    Ok((to_map, to_map_fingerprints, cached))
}

/// A mapped entity that differs from what the state knows: to be sent.
struct Pending {
    entity: Entity,
    hash: EntityHash,
    /// The state knew an older version (so a failed update must not make it a deletion candidate).
    existed: bool,
}

/// Identifiers an entity's relations point at (plain identifiers; search queries are Port's).
fn relation_targets(entity: &Entity) -> impl Iterator<Item = &str> {
    entity.relations.values().flat_map(|value| match value {
        Value::String(id) => vec![id.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    })
}

/// Orders entities so that relation targets among them come in an earlier layer (Kahn's
/// algorithm). Entities caught in a cycle share the last layer: Port decides for them.
fn dependency_layers(pending: Vec<Pending>) -> Vec<Vec<Pending>> {
    let position: std::collections::HashMap<String, usize> = pending
        .iter()
        .enumerate()
        .map(|(i, p)| (p.entity.identifier_label(), i))
        .collect();
    let mut waiting_on: Vec<usize> = vec![0; pending.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); pending.len()];
    for (i, p) in pending.iter().enumerate() {
        let mut targets: Vec<usize> = relation_targets(&p.entity)
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
    let mut layers: Vec<Vec<Pending>> = (0..=depth).map(|_| Vec::new()).collect();
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

/// Which resource a batch belongs to, in which run.
#[derive(Clone, Copy)]
struct BatchScope<'k> {
    index: usize,
    kind: &'k str,
    run_id: u64,
    dry: bool,
}

/// Per-resource progress while batches flow.
#[derive(Default)]
pub(crate) struct ResourceRun {
    pub(crate) counters: RunCounters,
    pub(crate) failed: Option<String>,
    /// Port kept failing (after the client's retries): the run stops here.
    pub(crate) port_failed: bool,
}

impl Resync<'_> {
    /// The state, for the commands that cannot work without one.
    pub(crate) fn require_state(&self, what: &str) -> Result<Arc<StateStore>, ResyncError> {
        self.state
            .clone()
            .ok_or_else(|| ResyncError::Blocking(format!("{what} needs a state file")))
    }

    /// Every entity this integration owns in Port, by (blueprint, identifier).
    pub(crate) async fn owned_by_key(&self) -> Result<HashMap<EntityKey, Value>, ResyncError> {
        let owned = self.client.owned_entities(None).await?;
        let mut by_key = HashMap::with_capacity(owned.len());
        for entity in owned {
            if let (Some(bp), Some(id)) =
                (entity["blueprint"].as_str(), entity["identifier"].as_str())
            {
                by_key.insert((bp.to_owned(), id.to_owned()), entity.clone());
            }
        }
        Ok(by_key)
    }

    /// What makes resource `index`'s output for an item: its mapping text and this engine.
    /// `None` when it uses builtins that depend on more than the item.
    fn resource_fingerprint(&self, index: usize) -> Option<[u8; 32]> {
        let text = self.setup.mapping.get("resources")?.get(index)?.to_string();
        if uses_nondeterminism(&text) {
            return None;
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"port-agent raw item cache\0");
        hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
        hasher.update(text.as_bytes());
        Some(*hasher.finalize().as_bytes())
    }

    /// Creates the integration and the missing blueprints in Port, as Ocean does at start.
    async fn prepare_port(&self) -> Result<(), ResyncError> {
        let setup = self.setup;
        if self
            .client
            .get_integration(&setup.identifier)
            .await?
            .is_none()
        {
            tracing::info!(integration = %setup.identifier, "creating the integration in Port");
            self.client
                .create_integration(&NewIntegration {
                    installation_id: setup.identifier.clone(),
                    installation_app_type: setup.integration_type.clone(),
                    version: setup.version.clone(),
                    config: setup.mapping.clone(),
                    changelog_destination: None,
                })
                .await?;
        }
        // Blueprints first without relations (they may point at each other), then relations.
        let mut created = Vec::new();
        for blueprint in &setup.blueprints {
            let Some(id) = blueprint.get("identifier").and_then(Value::as_str) else {
                continue;
            };
            if self.client.get_blueprint(id).await?.is_some() {
                continue;
            }
            let mut bare = blueprint.clone();
            let relations = bare.as_object_mut().and_then(|o| o.remove("relations"));
            tracing::info!(blueprint = id, "creating a missing blueprint");
            self.client.create_blueprint(&bare).await?;
            if let Some(relations) =
                relations.filter(|r| r.as_object().is_some_and(|o| !o.is_empty()))
            {
                created.push((id.to_owned(), relations));
            }
        }
        for (id, relations) in created {
            self.client
                .patch_blueprint(&id, &serde_json::json!({ "relations": relations }))
                .await?;
        }
        Ok(())
    }

    /// Records how far `kind` got in this run, for `state inspect`.
    async fn checkpoint(&self, kind: &str, value: Value) -> Result<(), ResyncError> {
        if let Some(state) = &self.state {
            let kind = kind.to_owned();
            with_state(state, move |s| s.set_checkpoint(&kind, &value.to_string())).await?;
        }
        Ok(())
    }

    async fn report_to_port(&self, status: ResyncStatus, started: &str) {
        let ended = status != ResyncStatus::Running;
        // With a schedule, the next run is due one interval after this one ends.
        let next_resync = self
            .setup
            .interval_minutes
            .filter(|_| ended)
            .and_then(|minutes| {
                let due = jiff::Timestamp::now()
                    .checked_add(jiff::SignedDuration::from_secs(minutes as i64 * 60))
                    .ok()?;
                Some(due.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            });
        let state = ResyncState {
            status,
            last_resync_start: Some(started.to_owned()),
            last_resync_end: ended.then(iso_now),
            next_resync,
            interval_in_minutes: self.setup.interval_minutes,
        };
        // The resync state is informational: failing to report it must not fail the run.
        if let Err(e) = self
            .client
            .patch_resync_state(&self.setup.identifier, &state)
            .await
        {
            tracing::warn!(error = %e, "could not report the resync state to Port");
        }
    }

    /// One resync. Returns the run as recorded; `Err` only when the run could not proceed at all.
    pub async fn run(&self, options: &ResyncOptions) -> Result<ResyncReport, ResyncError> {
        let started = Instant::now();
        let started_iso = iso_now();
        let dry = options.dry_run;
        if !dry {
            self.prepare_port().await?;
        }
        let mut run = match (&self.state, dry) {
            (Some(state), false) => {
                let trigger = options.trigger.clone();
                with_state(state, move |s| s.start_run(&trigger)).await?
            }
            _ => RunRecord {
                id: 0,
                trigger: options.trigger.clone(),
                started_at_ms: 0,
                finished_at_ms: None,
                status: RunStatus::Running,
                kinds: BTreeMap::new(),
                totals: RunCounters::default(),
                notes: Vec::new(),
            },
        };
        if !dry {
            self.report_to_port(ResyncStatus::Running, &started_iso)
                .await;
        }
        let mut plan = Plan::default();
        let mut any_failed = false;
        let in_scope = |kind: &str| {
            options
                .kinds
                .as_ref()
                .is_none_or(|kinds| kinds.iter().any(|k| k == kind))
        };

        for (index, resource) in self.config.resources.iter().enumerate() {
            if !in_scope(&resource.kind) {
                continue;
            }
            if self.stop.is_cancelled() {
                break;
            }
            if let Some(progress) = &self.progress {
                *progress.kind.lock().unwrap_or_else(|e| e.into_inner()) = resource.kind.clone();
            }
            let kind_started = iso_now();
            if !dry {
                let checkpoint = serde_json::json!({
                    "run": run.id, "status": "running", "resource": index, "started_at": kind_started,
                });
                self.checkpoint(&resource.kind, checkpoint).await?;
            }
            let outcome = match &self.mapping.resources[index] {
                Err(errors) => ResourceRun {
                    failed: Some(format!(
                        "resources[{index}] (kind {}) does not compile: {}",
                        resource.kind,
                        errors
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )),
                    ..Default::default()
                },
                Ok(_) => {
                    self.run_resource(index, &resource.kind, run.id, dry, &mut plan)
                        .await?
                }
            };
            if let Some(reason) = &outcome.failed {
                tracing::error!(resource = index, kind = %resource.kind, reason = %reason, "resource failed; this run deletes nothing");
                run.notes.push(reason.clone());
                any_failed = true;
            }
            let kind_counters = run.kinds.entry(resource.kind.clone()).or_default();
            *kind_counters += outcome.counters;
            run.totals += outcome.counters;
            let port_failed = outcome.port_failed;
            if !dry {
                // How far this kind got: with several resources of one kind, the counters add up.
                let checkpoint = serde_json::json!({
                    "run": run.id,
                    "status": if outcome.failed.is_some() { "failed" } else { "completed" },
                    "resource": index,
                    "started_at": kind_started,
                    "finished_at": iso_now(),
                    "counters": *kind_counters,
                });
                self.checkpoint(&resource.kind, checkpoint).await?;
            }
            if port_failed {
                run.notes.push(
                    "the run stopped: Port kept failing; the next run sends what this one could not"
                        .to_owned(),
                );
                break;
            }
        }

        let stopped = self.stop.is_cancelled();
        if stopped {
            run.notes.push(
                "aborted: the agent was asked to stop; what Port acknowledged is recorded, deletions skipped"
                    .to_owned(),
            );
        } else if any_failed {
            run.notes
                .push("deletions skipped: a resource failed in this run".to_owned());
        } else if let Some(state) = &self.state {
            self.delete_vanished(state, &mut run, options, dry, &mut plan)
                .await?;
        }
        if !dry && let Some(state) = &self.state {
            with_state(state, |s| s.raw_prune().map(drop)).await?;
        }
        let deletion_failed = run.notes.iter().any(|n| n.starts_with("deletion failed"));
        run.status = if stopped {
            RunStatus::Aborted
        } else if any_failed || deletion_failed {
            RunStatus::Failed
        } else {
            RunStatus::Completed
        };
        if !dry {
            if let Some(state) = &self.state {
                let record = run.clone();
                with_state(state, move |s| s.finish_run(&record)).await?;
            }
            let port_status = match run.status {
                RunStatus::Completed => ResyncStatus::Completed,
                RunStatus::Aborted => ResyncStatus::Aborted,
                _ => ResyncStatus::Failed,
            };
            self.report_to_port(port_status, &started_iso).await;
        }
        Ok(ResyncReport {
            run,
            duration: started.elapsed(),
            plan: plan.changes,
        })
    }

    async fn run_resource(
        &self,
        index: usize,
        kind: &str,
        run_id: u64,
        dry: bool,
        plan: &mut Plan,
    ) -> Result<ResourceRun, ResyncError> {
        // A dry run maps everything: its plan counts contributions the cache cannot vouch for.
        let cache_run = (!dry).then_some(run_id);
        let scope = BatchScope {
            index,
            kind,
            run_id,
            dry,
        };
        self.map_resource(index, kind, cache_run, async |mapped, counters| {
            self.apply(scope, mapped, counters, plan).await
        })
        .await
    }

    /// Fetches resource `index`'s kind and maps it on the pool, handing each mapped batch to
    /// `on_batch` in fetch order. Item errors and fetch errors mark the resource as failed.
    ///
    /// With `cache_run` (the run in progress), raw items whose bytes and resource mapping are
    /// unchanged since their entities were last recorded are not mapped again: they come back in
    /// [`Mapped::cached`].
    pub(crate) async fn map_resource(
        &self,
        index: usize,
        kind: &str,
        cache_run: Option<u64>,
        mut on_batch: impl AsyncFnMut(Mapped, &mut RunCounters) -> Result<(), ResyncError>,
    ) -> Result<ResourceRun, ResyncError> {
        let fingerprint = cache_run.and_then(|run| Some((run, self.resource_fingerprint(index)?)));
        let (sink, mut batches) = mpsc::channel::<RawBatch>(4);
        let fetch = self.integration.fetch(kind, sink);
        let consume = async {
            let mut progress = ResourceRun::default();
            // Several batches map at once on the pool; results are applied in fetch order. While
            // fewer than `depth` are in flight, take the next batch; when the fetch is done
            // (`recv` gives None), drain what is in flight.
            let mut in_flight: VecDeque<(PendingBatch, Fingerprints, Produced)> = VecDeque::new();
            let depth = self.pool.threads() + 1;
            loop {
                // Asked to stop: no new batch; the fetch sees the closed channel and ends.
                if self.stop.is_cancelled() {
                    batches.close();
                    break;
                }
                let next = if in_flight.len() < depth {
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => continue,
                        batch = batches.recv() => batch,
                    }
                } else {
                    None
                };
                let draining = next.is_none();
                if let Some(batch) = next {
                    progress.counters.fetched += batch.len() as u64;
                    if let Some(live) = &self.progress {
                        Progress::add(&live.fetched, batch.len() as u64);
                    }
                    let (batch, fingerprints, cached) = match (&fingerprint, &self.state) {
                        (Some((run, resource)), Some(state)) => {
                            split_cached(state, *run, resource, batch).await?
                        }
                        _ => {
                            let none = vec![None; batch.len()];
                            (batch, none, Vec::new())
                        }
                    };
                    match self.pool.submit(index, batch).await {
                        Ok(pending) => in_flight.push_back((pending, fingerprints, cached)),
                        Err(e) => {
                            progress
                                .failed
                                .get_or_insert(format!("resources[{index}] (kind {kind}): {e}"));
                        }
                    }
                    if in_flight.len() < depth {
                        continue;
                    }
                }
                let Some((pending, mut fingerprints, cached)) = in_flight.pop_front() else {
                    if draining {
                        break;
                    }
                    continue;
                };
                let mapped = match pending.result().await {
                    Ok(mapped) => mapped,
                    Err(e) => {
                        progress
                            .failed
                            .get_or_insert(format!("resources[{index}] (kind {kind}): {e}"));
                        continue;
                    }
                };
                if let Some((item, error)) = mapped.errors.first() {
                    progress.failed.get_or_insert(format!(
                        "resources[{index}] (kind {kind}): {} item error(s), first in batch item {item}: {error}",
                        mapped.errors.len()
                    ));
                }
                for (field, warning) in &mapped.warnings {
                    tracing::warn!(field = %field, count = warning.count, first = %warning.first_message, "mapping field failed; set to null");
                }
                // An item that failed or was skipped is not remembered: it is mapped again next time.
                for (item, _) in mapped.errors.iter().chain(&mapped.skipped) {
                    if let Some(f) = fingerprints.get_mut(*item) {
                        *f = None;
                    }
                }
                let batch = Mapped {
                    entities: mapped.entities,
                    entity_items: mapped.entity_items,
                    fingerprints,
                    cached,
                };
                match on_batch(batch, &mut progress.counters).await {
                    Ok(()) => {}
                    // What Port acknowledged before is recorded; the rest waits for the next run.
                    Err(ResyncError::Port(e)) => {
                        progress.failed = Some(format!(
                            "resources[{index}] (kind {kind}): Port failed: {e}"
                        ));
                        progress.port_failed = true;
                        batches.close();
                        break;
                    }
                    Err(other) => return Err(other),
                }
            }
            Ok::<_, ResyncError>(progress)
        };
        let (fetched, consumed) = tokio::join!(fetch, consume);
        let mut progress = consumed?;
        if progress.port_failed {
            // The fetch ended because the channel closed; Port's failure is the news.
        } else if self.stop.is_cancelled() {
            progress.failed = Some(format!(
                "resources[{index}] (kind {kind}): stopped before the end (the agent was asked to stop)"
            ));
        } else if let Err(e) = fetched {
            progress
                .failed
                .get_or_insert(format!("resources[{index}]: {e}"));
        }
        Ok(progress)
    }

    /// Diff one batch of mapped entities against the state and send what changed.
    async fn apply(
        &self,
        scope: BatchScope<'_>,
        mapped: Mapped,
        counters: &mut RunCounters,
        plan: &mut Plan,
    ) -> Result<(), ResyncError> {
        let BatchScope { run_id, dry, .. } = scope;
        let Mapped {
            entities,
            entity_items,
            fingerprints,
            cached,
        } = mapped;
        // Items the cache vouches for: their entities are unchanged without being mapped.
        // (A dry run maps everything, so it has none.)
        counters.mapped += cached.len() as u64;
        counters.unchanged += cached.len() as u64;
        if let Some(live) = &self.progress {
            Progress::add(&live.unchanged, cached.len() as u64);
        }
        if !dry && let Some(state) = &self.state {
            with_state(state, move |s| s.mark_seen(run_id, &cached)).await?;
        }
        // What each mapped item produced, for the cache once it is all recorded.
        let mut produced: Vec<Produced> = vec![Vec::new(); fingerprints.len()];
        for ((entity, hash), &item) in entities.iter().zip(&entity_items) {
            if let Some(slot) = produced.get_mut(item) {
                slot.push((key_of(entity), hash.0));
            }
        }
        counters.mapped += entities.len() as u64;
        let mut failed_keys: HashSet<EntityKey> = HashSet::new();
        for round in occurrence_rounds(entities) {
            let refused = self.apply_round(scope, round, counters, plan).await?;
            failed_keys.extend(refused);
        }
        if !dry && let Some(state) = &self.state {
            let remember: Vec<([u8; 32], Produced)> = fingerprints
                .into_iter()
                .zip(produced)
                .filter_map(|(f, p)| Some((f?, p)))
                .filter(|(_, p)| p.iter().all(|(key, _)| !failed_keys.contains(key)))
                .collect();
            with_state(state, move |s| s.raw_remember(&remember)).await?;
        }
        Ok(())
    }

    /// Compares entities (each at most once) with the state and sends those that changed.
    /// Returns the keys Port refused.
    async fn apply_round(
        &self,
        scope: BatchScope<'_>,
        entities: Vec<(Entity, EntityHash)>,
        counters: &mut RunCounters,
        plan: &mut Plan,
    ) -> Result<Vec<EntityKey>, ResyncError> {
        let BatchScope {
            kind, run_id, dry, ..
        } = scope;
        let keys: Vec<EntityKey> = entities.iter().map(|(e, _)| key_of(e)).collect();
        let known: Vec<Option<EntityRecord>> = match &self.state {
            Some(state) => {
                let keys = keys.clone();
                with_state(state, move |s| s.get_many(&keys)).await?
            }
            None => vec![None; keys.len()],
        };
        let mut unchanged = Vec::new();
        let mut changed: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
        for (((entity, hash), record), key) in entities.into_iter().zip(known).zip(keys) {
            let same = if dry {
                plan.unchanged(&key, record.as_ref(), &hash.0)
            } else {
                record
                    .as_ref()
                    .is_some_and(|r| r.unchanged_in(run_id, &hash.0))
            };
            if same {
                unchanged.push((key, hash.0));
            } else {
                changed
                    .entry(entity.blueprint.clone())
                    .or_default()
                    .push(Pending {
                        entity,
                        hash,
                        existed: record.is_some(),
                    });
            }
        }
        counters.unchanged += unchanged.len() as u64;
        if let Some(live) = &self.progress {
            Progress::add(&live.unchanged, unchanged.len() as u64);
        }
        if dry {
            for Pending {
                entity, existed, ..
            } in changed.into_values().flatten()
            {
                plan.changes.push(PlannedChange {
                    blueprint: entity.blueprint.clone(),
                    identifier: entity.identifier_label(),
                    kind: kind.to_owned(),
                    reason: if existed { "changed" } else { "new" },
                });
            }
            return Ok(Vec::new());
        }
        // Unchanged entities are marked seen now; every bulk request's acknowledgements are
        // committed as soon as Port gives them, so a kill loses at most the requests in flight.
        if let Some(state) = &self.state {
            with_state(state, move |s| s.mark_seen(run_id, &unchanged)).await?;
        }
        let chunk_size = self.client.config().bulk.max_entities;
        let concurrency = self.client.config().max_concurrency;
        let pending: Vec<Pending> = changed.into_values().flatten().collect();
        let layers = if self.mapping.options.create_missing_related_entities {
            vec![pending]
        } else {
            // Port refuses a relation to an entity that does not exist yet: targets go first.
            dependency_layers(pending)
        };
        let mut failed_keys = Vec::new();
        for layer in layers {
            let mut by_blueprint: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
            for p in layer {
                by_blueprint
                    .entry(p.entity.blueprint.clone())
                    .or_default()
                    .push(p);
            }
            let mut chunks: Vec<(String, Vec<Pending>)> = Vec::new();
            for (blueprint, batch) in by_blueprint {
                let mut batch = batch.into_iter().peekable();
                while batch.peek().is_some() {
                    chunks.push((blueprint.clone(), batch.by_ref().take(chunk_size).collect()));
                }
            }
            let mut sent = futures_util::stream::iter(chunks)
                .map(|(blueprint, chunk)| self.send_chunk(scope, blueprint, chunk))
                .buffer_unordered(concurrency);
            while let Some(result) = sent.next().await {
                let (upserted, failed, refused) = result?;
                failed_keys.extend(refused);
                counters.upserted += upserted;
                if let Some(live) = &self.progress {
                    Progress::add(&live.upserted, upserted);
                }
                counters.failed += failed;
            }
        }
        Ok(failed_keys)
    }

    /// Upserts one bulk request's worth of entities and commits what Port acknowledged.
    /// Returns (upserted, failed).
    async fn send_chunk(
        &self,
        scope: BatchScope<'_>,
        blueprint: String,
        chunk: Vec<Pending>,
    ) -> Result<(u64, u64, Vec<EntityKey>), ResyncError> {
        let BatchScope {
            index,
            kind,
            run_id,
            ..
        } = scope;
        let to_send: Vec<Entity> = chunk.iter().map(|p| p.entity.clone()).collect();
        let outcomes = self
            .client
            .upsert_entities(&blueprint, &to_send, self.mapping.options)
            .await?;
        let mut written = Vec::new();
        let mut keep = Vec::new();
        let mut failed = 0;
        let mut refused = Vec::new();
        for (
            Pending {
                entity,
                hash,
                existed,
            },
            outcome,
        ) in chunk.into_iter().zip(outcomes)
        {
            match outcome {
                UpsertOutcome::Upserted { .. } => written.push(Written {
                    key: key_of(&entity),
                    hash: hash.0,
                    kind: kind.to_owned(),
                    resource: index as u32,
                }),
                UpsertOutcome::Failed(error) => {
                    failed += 1;
                    refused.push(key_of(&entity));
                    tracing::warn!(blueprint = %entity.blueprint, identifier = %entity.identifier_label(), error = %error.error, message = %error.message, "Port refused an entity; it is retried next resync");
                    // Still produced by the data: never a deletion candidate because Port refused an update.
                    if existed {
                        keep.push((key_of(&entity), hash.0));
                    }
                }
            }
        }
        let upserted = written.len() as u64;
        if let Some(state) = &self.state {
            with_state(state, move |s| {
                s.record_written(run_id, &written)?;
                s.mark_seen(run_id, &keep)
            })
            .await?;
        }
        Ok((upserted, failed, refused))
    }

    async fn delete_vanished(
        &self,
        state: &Arc<StateStore>,
        run: &mut RunRecord,
        options: &ResyncOptions,
        dry: bool,
        plan: &mut Plan,
    ) -> Result<(), ResyncError> {
        let run_id = run.id;
        let scope: Option<HashSet<String>> =
            options.kinds.as_ref().map(|k| k.iter().cloned().collect());
        let in_scope =
            move |record: &EntityRecord| scope.as_ref().is_none_or(|s| s.contains(&record.kind));
        // In a dry run nothing was marked seen: "unseen" is then every record, filtered below by
        // what the data produced.
        let (total, vanished) =
            with_state(state, move |s| s.scoped_unseen(run_id, in_scope)).await?;
        let vanished: Vec<(EntityKey, EntityRecord)> = if dry {
            vanished
                .into_iter()
                .filter(|(k, _)| !plan.produced.contains_key(k))
                .collect()
        } else {
            vanished
        };
        if vanished.is_empty() {
            return Ok(());
        }
        let threshold = self.mapping.entity_deletion_threshold;
        let ratio = vanished.len() as f64 / total.max(1) as f64;
        if ratio > threshold {
            let note = format!(
                "deletions skipped: {} of {} entities ({:.0}%) vanished, above entityDeletionThreshold {:.0}%; if this is intended, raise the threshold",
                vanished.len(),
                total,
                ratio * 100.0,
                threshold * 100.0
            );
            tracing::error!("{note}");
            run.notes.push(note);
            return Ok(());
        }
        if dry {
            plan.changes.extend(
                vanished
                    .into_iter()
                    .map(|((blueprint, identifier), record)| PlannedChange {
                        blueprint,
                        identifier,
                        kind: record.kind,
                        reason: "vanished",
                    }),
            );
            return Ok(());
        }
        let mut by_blueprint: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for ((blueprint, identifier), record) in vanished {
            by_blueprint
                .entry(blueprint)
                .or_default()
                .push((identifier, record.kind));
        }
        for (blueprint, entries) in by_blueprint {
            let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
            let kinds: BTreeMap<String, String> = entries.into_iter().collect();
            let report = match self
                .client
                .delete_entities(&blueprint, &ids, self.mapping.delete_dependent_entities)
                .await
            {
                Ok(report) => report,
                Err(e) => {
                    run.notes.push(format!(
                        "deletion failed for {} entities of {blueprint}: {e}; retried next resync",
                        ids.len()
                    ));
                    break;
                }
            };
            // Gone either way: deleted now, or Port no longer had it.
            let gone: Vec<EntityKey> = report
                .deleted
                .iter()
                .chain(&report.not_deleted)
                .map(|id| (blueprint.clone(), id.clone()))
                .collect();
            for id in &report.deleted {
                let kind = kinds.get(id).cloned().unwrap_or_default();
                run.kinds.entry(kind).or_default().deleted += 1;
                run.totals.deleted += 1;
            }
            if let Some((id, error)) = report.failed.first() {
                run.notes.push(format!("deletion failed for {} entities of {blueprint} (first {id}: {}); retried next resync", report.failed.len(), error.message));
            }
            with_state(state, move |s| s.remove(&gone)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pending(id: &str, relations: Value) -> Pending {
        let mut entity = Entity::new("svc", id);
        entity.relations = relations.as_object().unwrap().clone();
        Pending {
            entity,
            hash: EntityHash([0; 32]),
            existed: false,
        }
    }

    fn ids(layers: &[Vec<Pending>]) -> Vec<Vec<String>> {
        layers
            .iter()
            .map(|l| l.iter().map(|p| p.entity.identifier_label()).collect())
            .collect()
    }

    #[test]
    fn targets_come_before_the_entities_that_point_at_them() {
        let layers = dependency_layers(vec![
            pending("api", json!({"team": "core", "depends": ["db", "cache"]})),
            pending("db", json!({"team": "core"})),
            pending("core", json!({})),
            pending("cache", json!({"outside": "not-in-batch"})),
        ]);
        assert_eq!(
            ids(&layers),
            [vec!["core", "cache"], vec!["db"], vec!["api"]]
        );
    }

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

    #[test]
    fn cycles_are_tolerated_and_sent_last() {
        let layers = dependency_layers(vec![
            pending("a", json!({"next": "b"})),
            pending("b", json!({"next": "a"})),
            pending("c", json!({})),
            pending("self", json!({"me": "self"})),
        ]);
        assert_eq!(ids(&layers), [vec!["c", "self"], vec!["a", "b"]]);
    }
}
