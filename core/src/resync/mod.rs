//! One resync: integration → mapping → the write path (hash and diff against the state → Port
//! writes → state) → deletions.
//!
//! Only new or changed entities are sent (see [`crate::write`]); deletions happen only after a
//! run in which every resource succeeded and Port refused nothing, stay under
//! `entityDeletionThreshold`, and are forgotten only after Port confirmed them.

mod pipeline;
mod raw_cache;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use port_agent_state::{
    EntityKey, EntityRecord, RunCounters, RunRecord, RunStatus, StateError, StateStore,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::write::PlannedChange;
pub(crate) use pipeline::{Mapped, Recheck, ResourceRun};

use crate::integration::Integration;
use crate::mapping::{CompiledMapping, MappingPool, PortAppConfig};
use crate::port::{NewIntegration, PortClient, PortError, ResyncState, ResyncStatus};
use crate::write::{Source, Vanished, Writer};

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
    pub(crate) fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
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

#[derive(Debug, Clone)]
pub struct ResyncReport {
    pub run: RunRecord,
    pub duration: Duration,
    /// Filled by a dry run: what would be upserted and deleted.
    pub plan: Vec<PlannedChange>,
    /// The run stopped because the state could not be read or written (a full disk, an I/O
    /// error): why. The store must be opened again before it is trusted.
    pub state_error: Option<String>,
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

/// Runs `work` on the state off the async runtime (redb blocks), shielded: a corrupt page that
/// makes redb panic is the "state file is corrupt" error.
pub(crate) async fn with_state<T: Send + 'static>(
    state: &Arc<StateStore>,
    work: impl FnOnce(&StateStore) -> Result<T, StateError> + Send + 'static,
) -> Result<T, ResyncError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || state.shield(work))
        .await
        .map_err(|e| ResyncError::Blocking(e.to_string()))?
        .map_err(ResyncError::from)
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

    /// Creates the integration and the missing blueprints in Port, as Ocean does at start.
    pub async fn prepare_port(&self) -> Result<(), ResyncError> {
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
        let mut writer = Writer::new(
            self.client,
            self.state.clone(),
            run.id,
            self.mapping.options,
            dry,
        )
        .with_progress(self.progress.clone());
        let mut state_error = None;
        // Every line the run logs carries its id and trigger (and, below, its resource).
        let span = tracing::info_span!("run", id = run.id, trigger = %options.trigger);
        match self
            .sync(options, &mut run, &mut writer)
            .instrument(span)
            .await
        {
            Ok(status) => run.status = status,
            Err(e) => {
                if matches!(e, ResyncError::State(_) | ResyncError::Blocking(_)) {
                    state_error = Some(e.to_string());
                }
                // The state cannot be written (a full disk, an I/O error) or Port failed where
                // the run cannot carry on: what is in flight is settled if it can be, nothing
                // more is sent, and the run ends failed, saying why.
                let _ = writer.stop().await;
                let note = format!("the run stopped: {e}");
                tracing::error!("{}", crate::text::printable(&note));
                run.notes.push(note);
                run.status = RunStatus::Failed;
            }
        }
        let plan = writer
            .plan()
            .map(|p| std::mem::take(&mut p.changes))
            .unwrap_or_default();
        if !dry {
            if let Some(state) = &self.state {
                let record = run.clone();
                if let Err(e) = with_state(state, move |s| s.finish_run(&record)).await {
                    // The next run closes it as interrupted.
                    tracing::error!(error = %e, "could not record the end of the run");
                }
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
            plan,
            state_error,
        })
    }

    /// The run proper: every resource through the writer, then the deletions its outcome
    /// allows. Returns how the run ended.
    async fn sync(
        &self,
        options: &ResyncOptions,
        run: &mut RunRecord,
        writer: &mut Writer<'_>,
    ) -> Result<RunStatus, ResyncError> {
        let ran = self.run_resources(options, run, writer).await?;
        let stopped = self.stop.is_cancelled();
        let refused = refused_note(writer.refused_kinds());
        if let Some(note) = &refused {
            tracing::error!("{note}");
            run.notes.push(note.clone());
        }
        let with_errors = refused.is_some() || ran.item_errors;
        let mut deletion_failed = false;
        if stopped {
            run.notes.push(
                "aborted: the agent was asked to stop; what Port acknowledged is recorded, deletions skipped"
                    .to_owned(),
            );
        } else if ran.failed {
            run.notes
                .push("deletions skipped: a resource failed in this run".to_owned());
        } else if with_errors {
            run.notes.push(
                "deletions skipped: items failed to map or Port refused entities in this run"
                    .to_owned(),
            );
        } else if let Some(state) = &self.state {
            deletion_failed = self.delete_vanished(state, run, options, writer).await?;
        }
        let status = if stopped {
            RunStatus::Aborted
        } else if ran.failed || deletion_failed {
            RunStatus::Failed
        } else if with_errors {
            RunStatus::CompletedWithErrors
        } else {
            RunStatus::Completed
        };
        if !options.dry_run
            && let Some(state) = &self.state
        {
            // The run's blocks vouch from now on only if every entity they name is recorded as
            // Port acknowledged it: a clean run, whose deletions did not make the state forget
            // dependents Port deleted with them.
            let cascaded = self.mapping.delete_dependent_entities && run.totals.deleted > 0;
            let confirm = (status == RunStatus::Completed && !cascaded).then_some(run.id);
            with_state(state, move |s| {
                s.raw_prune()?;
                confirm.map_or(Ok(()), |run| s.confirm_blocks(run))
            })
            .await?;
        }
        Ok(status)
    }

    /// Runs every resource in scope through the writer, recording counters, checkpoints and
    /// notes in `run`.
    /// Fetches, maps and writes every resource in scope, with the integration's run-scoped
    /// caches (shared listings) alive for exactly this while.
    async fn run_resources(
        &self,
        options: &ResyncOptions,
        run: &mut RunRecord,
        writer: &mut Writer<'_>,
    ) -> Result<ResourcesRan, ResyncError> {
        self.integration.resync_starting();
        let ran = self.run_each_resource(options, run, writer).await;
        self.integration.resync_ended();
        ran
    }

    async fn run_each_resource(
        &self,
        options: &ResyncOptions,
        run: &mut RunRecord,
        writer: &mut Writer<'_>,
    ) -> Result<ResourcesRan, ResyncError> {
        let dry = options.dry_run;
        let mut ran = ResourcesRan::default();
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
                    let span = tracing::info_span!("resource", index, kind = %resource.kind);
                    self.run_resource(index, &resource.kind, writer)
                        .instrument(span)
                        .await?
                }
            };
            if let Some(reason) = &outcome.failed {
                tracing::error!(resource = index, kind = %resource.kind, reason = %reason, "resource failed; this run deletes nothing");
                run.notes.push(reason.clone());
                ran.failed = true;
            }
            if let Some(first) = &outcome.first_item_error {
                run.notes.push(format!(
                    "resources[{index}] (kind {}): {} item(s) failed to map, first {first}",
                    resource.kind, outcome.item_errors
                ));
                ran.item_errors = true;
            }
            let kind_counters = run.kinds.entry(resource.kind.clone()).or_default();
            *kind_counters += outcome.counters;
            run.totals += outcome.counters;
            if !dry {
                // How far this kind got: with several resources of one kind, the counters add up.
                let checkpoint = serde_json::json!({
                    "run": run.id,
                    "status": match (&outcome.failed, outcome.item_errors) {
                        (Some(_), _) => "failed",
                        (None, 0) => "completed",
                        (None, _) => "completed_with_errors",
                    },
                    "resource": index,
                    "started_at": kind_started,
                    "finished_at": iso_now(),
                    "counters": *kind_counters,
                });
                self.checkpoint(&resource.kind, checkpoint).await?;
            }
            if outcome.port_failed {
                run.notes.push(
                    "the run stopped: Port kept failing; the next run sends what this one could not"
                        .to_owned(),
                );
                break;
            }
        }
        Ok(ran)
    }

    /// Fetches, maps and writes one resource; its writes are settled (answered and recorded)
    /// before it returns, so its counters and checkpoint are complete.
    async fn run_resource(
        &self,
        index: usize,
        kind: &str,
        writer: &mut Writer<'_>,
    ) -> Result<ResourceRun, ResyncError> {
        // A dry run maps everything: its plan counts contributions the cache cannot vouch for.
        let cache_run = (!writer.dry_run()).then_some(writer.run_id());
        let source = Source {
            kind: kind.into(),
            resource: index as u32,
        };
        let mut outcome = self
            .map_resource(index, kind, cache_run, async |mapped| {
                self.apply(&source, mapped, writer).await
            })
            .await?;
        let settled = if outcome.port_failed || self.stop.is_cancelled() {
            writer.stop().await
        } else {
            writer.settle().await
        };
        match settled {
            Ok(()) => {}
            Err(ResyncError::Port(e)) => {
                outcome.port_failed_with(index, kind, &e);
                writer.stop().await?;
            }
            Err(other) => return Err(other),
        }
        outcome.counters += writer.take_counters();
        Ok(outcome)
    }

    /// Hands one mapped batch to the writer and remembers, for the raw-item cache, what each
    /// item and the whole batch produced. (An item entry is trusted only while the state holds
    /// its entities, settled, with those hashes, and a block only once the run completes: both
    /// are safe to remember before Port answers.)
    ///
    /// A batch its block vouched for is handed back, to map, if the block no longer holds.
    async fn apply(
        &self,
        source: &Source,
        mapped: Mapped,
        writer: &mut Writer<'_>,
    ) -> Result<Option<Recheck>, ResyncError> {
        let Mapped {
            entities,
            entity_items,
            fingerprints,
            mut cached,
            block,
            recheck,
        } = mapped;
        if let (Some(recheck), Some(state)) = (recheck, &self.state) {
            let block = recheck.block;
            let holds = !writer.has_unsettled()
                && with_state(state, move |s| s.raw_block(&block))
                    .await?
                    .is_some();
            if !holds {
                return Ok(Some(recheck));
            }
        }
        writer.cached(&cached);
        let mut produced: Vec<port_agent_state::Produced> = vec![Vec::new(); fingerprints.len()];
        for ((entity, hash), &item) in entities.iter().zip(&entity_items) {
            if let Some(slot) = produced.get_mut(item) {
                slot.push((crate::write::key_of(entity), hash.0));
            }
        }
        writer.submit(source, entities).await?;
        if writer.dry_run() {
            return Ok(None);
        }
        let Some(state) = &self.state else {
            return Ok(None);
        };
        // A batch with an item that failed or was skipped has no block: it is mapped again.
        let whole = fingerprints.iter().all(Option::is_some);
        let blocks: Vec<port_agent_state::Block> = match block {
            Some(block) if whole => {
                cached.extend(
                    produced
                        .iter()
                        .flatten()
                        .map(|(key, _)| crate::write::key_fingerprint(key)),
                );
                vec![(block, cached)]
            }
            _ => Vec::new(),
        };
        let items: Vec<([u8; 32], port_agent_state::Produced)> = fingerprints
            .into_iter()
            .zip(produced)
            .filter_map(|(f, p)| Some((f?, p)))
            .collect();
        let run = writer.run_id();
        with_state(state, move |s| s.raw_remember(run, &items, &blocks)).await?;
        Ok(None)
    }

    /// Deletes what no item produced in this (complete) run, within the threshold and the
    /// `--kind` scope. Returns whether a deletion failed.
    async fn delete_vanished(
        &self,
        state: &Arc<StateStore>,
        run: &mut RunRecord,
        options: &ResyncOptions,
        writer: &mut Writer<'_>,
    ) -> Result<bool, ResyncError> {
        let run_id = run.id;
        let dry = options.dry_run;
        let scope: Option<HashSet<String>> =
            options.kinds.as_ref().map(|k| k.iter().cloned().collect());
        let in_scope =
            move |record: &EntityRecord| scope.as_ref().is_none_or(|s| s.contains(&record.kind));
        // In a dry run nothing was marked seen: "unseen" is then every record, filtered below by
        // what the data produced.
        let vouched = writer.take_vouched();
        let (total, vanished) = with_state(state, move |s| {
            s.scoped_unseen(run_id, in_scope, |key| vouched.contains(key))
        })
        .await?;
        let vanished: Vec<(EntityKey, EntityRecord)> = match writer.plan() {
            Some(plan) => vanished
                .into_iter()
                .filter(|(k, _)| !plan.produced.contains_key(k))
                .collect(),
            None => vanished,
        };
        if vanished.is_empty() {
            return Ok(false);
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
            return Ok(false);
        }
        if let Some(plan) = writer.plan().filter(|_| dry) {
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
            return Ok(false);
        }
        let vanished: Vec<Vanished> = vanished
            .into_iter()
            .map(|(key, record)| Vanished {
                key,
                kind: record.kind,
            })
            .collect();
        let outcome = writer
            .delete(vanished, self.mapping.delete_dependent_entities)
            .await?;
        for (kind, deleted) in outcome.deleted {
            run.kinds.entry(kind).or_default().deleted += deleted;
            run.totals.deleted += deleted;
        }
        run.notes.extend(outcome.notes);
        Ok(outcome.failed)
    }
}

/// How the resources of a run went, for its deletions and status.
#[derive(Debug, Default)]
struct ResourcesRan {
    /// A resource could not run to its end.
    failed: bool,
    /// Items failed to map.
    item_errors: bool,
}

/// The run's note when Port refused entities: which kinds, how many.
fn refused_note(refused: &BTreeMap<String, u64>) -> Option<String> {
    if refused.is_empty() {
        return None;
    }
    let kinds: Vec<String> = refused
        .iter()
        .map(|(kind, n)| format!("{n} of kind {kind}"))
        .collect();
    Some(format!(
        "Port refused entities ({}); they are sent again next resync",
        kinds.join(", ")
    ))
}
