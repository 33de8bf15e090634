//! The write path: the one place where Port is written and the state follows it.
//!
//! Mapped entities come in (from a resync, later from live events); each is compared with the
//! state's record; unchanged ones are marked seen, changed ones are gathered into full bulk
//! requests per blueprint. Before a request leaves, its entities are recorded *in doubt*
//! (durably, one commit for every request that leaves together); Port's per-entity answers then
//! settle them (without fsync: a lost answer commit leaves the entities in doubt, which only
//! costs a resend). Up to `port.max_concurrency` requests are in flight at once, across input
//! batches and resources. Deletions go the same way ([`Writer::delete`]).

mod delete;
mod order;
mod plan;
mod vouched;

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use port_agent_state::{
    EntityKey, EntityRecord, Intent, Refused, RunCounters, Sending, StateStore, Written,
};

pub use delete::{DeletionOutcome, Vanished};
pub(crate) use order::key_of;
pub use plan::{Plan, PlannedChange};
pub use vouched::{Vouched, key_fingerprint};

use crate::entity_hash::EntityHash;
use crate::port::{Entity, PortClient, PortError, UpsertOptions, UpsertOutcome};
use crate::resync::{Progress, ResyncError, with_state};
use crate::text::printable;

/// Which resource produced the entities handed to [`Writer::submit`].
#[derive(Debug, Clone)]
pub struct Source {
    pub kind: Arc<str>,
    pub resource: u32,
}

/// A changed entity waiting for its request.
struct Pending {
    entity: Entity,
    hash: EntityHash,
    source: Source,
}

/// One bulk request's entities and Port's answer to it.
struct Answered {
    chunk: Vec<Pending>,
    result: Result<Vec<UpsertOutcome>, PortError>,
}

type InFlight<'a> = Pin<Box<dyn Future<Output = Answered> + Send + 'a>>;

/// How a writer sends: for real, or only planning (`--dry-run`).
enum Mode {
    Send,
    Plan(Plan),
}

/// Brings Port and the state in step with the entities it is given, for one run.
pub struct Writer<'a> {
    client: &'a PortClient,
    /// `None` only for a dry run without a state file yet.
    state: Option<Arc<StateStore>>,
    run_id: u64,
    mode: Mode,
    options: UpsertOptions,
    /// `createMissingRelatedEntities: false`: relation targets must exist before the entities
    /// pointing at them, so each layer is answered before the next leaves.
    ordered: bool,
    max_entities: usize,
    window: usize,
    /// Changed entities not yet sent, by blueprint.
    buffers: BTreeMap<String, Vec<Pending>>,
    /// Keys buffered or in flight: a later contribution to one of them waits until it settles.
    busy: HashSet<EntityKey>,
    /// Entities the raw-item cache vouched for in this run, by key fingerprint. They are not
    /// written to the state (a million records rewritten each run would cost most of an
    /// unchanged resync): the deletions read this set, and a key met again in the run gets
    /// its mark written first.
    vouched: Vouched,
    in_flight: FuturesUnordered<InFlight<'a>>,
    counters: RunCounters,
    /// Kinds with an entity Port refused in this run.
    refused_kinds: BTreeMap<String, u64>,
    /// Each refused entity and Port's reason, when asked for ([`Writer::remembering_refusals`]):
    /// live events name them in their dead letters. A resync does not keep them (a million
    /// refusals would be held in memory for nothing: the log has them).
    refusals: Option<Vec<(EntityKey, String)>>,
    progress: Option<Arc<Progress>>,
    /// Port failed for good (no answer, or unavailable after every retry): nothing more is sent.
    failure: Option<PortError>,
}

impl std::fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("run_id", &self.run_id)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Writer<'a> {
    /// A writer for run `run_id`; with `dry_run`, it only plans.
    pub fn new(
        client: &'a PortClient,
        state: Option<Arc<StateStore>>,
        run_id: u64,
        options: UpsertOptions,
        dry_run: bool,
    ) -> Self {
        let config = client.config();
        Self {
            client,
            state,
            run_id,
            mode: if dry_run {
                Mode::Plan(Plan::default())
            } else {
                Mode::Send
            },
            options,
            ordered: !options.create_missing_related_entities,
            max_entities: config.bulk.max_entities.max(1),
            window: config.max_concurrency.max(1),
            buffers: BTreeMap::new(),
            busy: HashSet::new(),
            vouched: Vouched::default(),
            in_flight: FuturesUnordered::new(),
            counters: RunCounters::default(),
            refused_kinds: BTreeMap::new(),
            refusals: None,
            progress: None,
            failure: None,
        }
    }

    /// Counts what is sent into `progress` as it goes.
    pub fn with_progress(mut self, progress: Option<Arc<Progress>>) -> Self {
        self.progress = progress;
        self
    }

    /// Keeps each refused entity's key and Port's reason for [`Writer::take_refusals`].
    pub fn remembering_refusals(mut self) -> Self {
        self.refusals = Some(Vec::new());
        self
    }

    /// The refusals remembered so far (see [`Writer::remembering_refusals`]).
    pub fn take_refusals(&mut self) -> Vec<(EntityKey, String)> {
        self.refusals
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    pub fn run_id(&self) -> u64 {
        self.run_id
    }

    /// Counters since the last call (unchanged at comparison; upserted and failed as Port
    /// answers: call after [`Writer::settle`] for a complete picture).
    pub fn take_counters(&mut self) -> RunCounters {
        std::mem::take(&mut self.counters)
    }

    /// Kinds with entities Port refused in this run, and how many.
    pub fn refused_kinds(&self) -> &BTreeMap<String, u64> {
        &self.refused_kinds
    }

    /// A dry run's plan so far.
    pub fn plan(&mut self) -> Option<&mut Plan> {
        match &mut self.mode {
            Mode::Plan(plan) => Some(plan),
            Mode::Send => None,
        }
    }

    /// Whether this writer only plans (`--dry-run`).
    pub fn dry_run(&self) -> bool {
        matches!(self.mode, Mode::Plan(_))
    }

    /// The first failure Port gave, once: the caller stops the run.
    fn failed(&mut self) -> Result<(), ResyncError> {
        match self.failure.take() {
            Some(e) => Err(ResyncError::Port(e)),
            None => Ok(()),
        }
    }

    /// Entities unchanged without being mapped (the raw-item cache vouches for them): counted,
    /// and remembered for this run's deletions, without a state write.
    pub fn cached(&mut self, keys: &[u64]) {
        self.count_unchanged(keys.len());
        self.vouched.extend(keys);
    }

    fn count_unchanged(&mut self, n: usize) {
        self.counters.unchanged += n as u64;
        if let Some(live) = &self.progress {
            Progress::add(&live.unchanged, n as u64);
        }
    }

    /// Whether changes of this run are queued or in flight (compared, not yet recorded).
    pub fn has_unsettled(&self) -> bool {
        !self.busy.is_empty()
    }

    /// The entities the cache vouched for in this run, for its deletions (taken: the run's
    /// writes are over by then).
    pub fn take_vouched(&mut self) -> Vouched {
        std::mem::take(&mut self.vouched)
    }

    async fn mark_unchanged(
        &mut self,
        seen: Vec<(EntityKey, [u8; 32])>,
    ) -> Result<(), ResyncError> {
        self.count_unchanged(seen.len());
        if !self.dry_run()
            && let Some(state) = &self.state
        {
            let run = self.run_id;
            with_state(state, move |s| s.mark_seen(run, &seen)).await?;
        }
        Ok(())
    }

    /// Compares `entities` with the state and sends those that changed (or queues them for a
    /// full request). Returns `Err(Port)` once Port has failed for good.
    pub async fn submit(
        &mut self,
        source: &Source,
        entities: Vec<(Entity, EntityHash)>,
    ) -> Result<(), ResyncError> {
        self.counters.mapped += entities.len() as u64;
        for round in order::occurrence_rounds(entities) {
            self.failed()?;
            if round.iter().any(|(e, _)| self.busy.contains(&key_of(e))) {
                // A contribution is compared with what the one before it left.
                self.settle().await?;
            }
            let changed = self.compare(source, round).await?;
            if changed.is_empty() || self.dry_run() {
                continue;
            }
            if self.ordered {
                for layer in order::dependency_layers(changed, |p: &Pending| &p.entity) {
                    self.buffer(layer);
                    self.settle().await?;
                }
            } else {
                self.buffer(changed);
                self.launch(false).await?;
            }
        }
        Ok(())
    }

    /// Compares each entity (at most one contribution each) with its record; marks the
    /// unchanged seen and returns the changed.
    async fn compare(
        &mut self,
        source: &Source,
        round: Vec<(Entity, EntityHash)>,
    ) -> Result<Vec<Pending>, ResyncError> {
        let keys: Vec<EntityKey> = round.iter().map(|(e, _)| key_of(e)).collect();
        let run = self.run_id;
        let mut known: Vec<Option<EntityRecord>> = match &self.state {
            Some(state) => {
                let keys = keys.clone();
                with_state(state, move |s| s.get_many(&keys)).await?
            }
            None => vec![None; keys.len()],
        };
        // A key the cache vouched for earlier in this run: its contribution counts before this
        // one, so its mark is written now (this one is compared from the next position).
        let deferred: Vec<(EntityKey, [u8; 32])> = keys
            .iter()
            .zip(&mut known)
            .filter_map(|(key, record)| {
                let record = record.as_mut()?;
                if record.position_in(run) > 0 || !self.vouched.contains(key) {
                    return None;
                }
                let hash = record.hash;
                record.advance(run, hash);
                Some((key.clone(), hash))
            })
            .collect();
        if !deferred.is_empty()
            && !self.dry_run()
            && let Some(state) = &self.state
        {
            with_state(state, move |s| s.mark_seen(run, &deferred)).await?;
        }
        let mut unchanged = Vec::new();
        let mut changed = Vec::new();
        for (((entity, hash), record), key) in round.into_iter().zip(known).zip(keys) {
            let same = match &mut self.mode {
                Mode::Plan(plan) => {
                    let same = plan.unchanged(&key, record.as_ref(), &hash.0);
                    if !same {
                        plan.changes.push(PlannedChange {
                            blueprint: key.0.clone(),
                            identifier: key.1.clone(),
                            kind: source.kind.to_string(),
                            reason: match &record {
                                None => "new",
                                Some(r) if r.doubt.is_some() => "in doubt",
                                Some(_) => "changed",
                            },
                        });
                    }
                    same
                }
                Mode::Send => record
                    .as_ref()
                    .is_some_and(|r| r.unchanged_in(run, &hash.0)),
            };
            if same {
                unchanged.push((key, hash.0));
            } else {
                changed.push(Pending {
                    entity,
                    hash,
                    source: source.clone(),
                });
            }
        }
        self.mark_unchanged(unchanged).await?;
        Ok(changed)
    }

    fn buffer(&mut self, changed: Vec<Pending>) {
        for pending in changed {
            self.busy.insert(key_of(&pending.entity));
            self.buffers
                .entry(pending.entity.blueprint.clone())
                .or_default()
                .push(pending);
        }
    }

    /// Sends the full requests waiting in the buffers (with `all`, the partial ones too).
    /// Requests are marked in doubt a window's worth at a time, in one durable commit (which
    /// also makes the answers recorded before it durable), then leave as the window has room:
    /// a kill leaves at most about three windows of requests in doubt.
    async fn launch(&mut self, all: bool) -> Result<(), ResyncError> {
        let mut chunks: std::collections::VecDeque<Vec<Pending>> = Default::default();
        for buffer in self.buffers.values_mut() {
            while buffer.len() >= self.max_entities || (all && !buffer.is_empty()) {
                let rest = buffer.split_off(buffer.len().min(self.max_entities));
                chunks.push_back(std::mem::replace(buffer, rest));
            }
        }
        self.buffers.retain(|_, b| !b.is_empty());
        while !chunks.is_empty() {
            self.wait_for_room().await?;
            if self.failure.is_some() {
                // Never marked, never sent: found changed again next run.
                for pending in chunks.into_iter().flatten() {
                    self.busy.remove(&key_of(&pending.entity));
                }
                return Ok(());
            }
            let group: Vec<Vec<Pending>> = chunks.drain(..self.window.min(chunks.len())).collect();
            self.mark_sending(&group).await?;
            for chunk in group {
                self.wait_for_room().await?;
                self.send(chunk);
            }
        }
        Ok(())
    }

    /// Waits for answers until a request may leave.
    async fn wait_for_room(&mut self) -> Result<(), ResyncError> {
        while self.in_flight.len() >= self.window {
            self.answer_one().await?;
        }
        Ok(())
    }

    /// Records `group`'s entities as in doubt, durably, before they leave.
    async fn mark_sending(&self, group: &[Vec<Pending>]) -> Result<(), ResyncError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let run = self.run_id;
        let sending: Vec<Sending> = group
            .iter()
            .flatten()
            .map(|p| Sending {
                key: key_of(&p.entity),
                intent: Intent::Upsert(p.hash.0),
                kind: p.source.kind.to_string(),
                resource: p.source.resource,
            })
            .collect();
        with_state(state, move |s| s.mark_sending(run, &sending)).await
    }

    /// Puts one bulk request in the window.
    fn send(&mut self, chunk: Vec<Pending>) {
        let client = self.client;
        let options = self.options;
        self.in_flight.push(Box::pin(async move {
            let entities: Vec<Entity> = chunk.iter().map(|p| p.entity.clone()).collect();
            let blueprint = chunk[0].entity.blueprint.clone();
            let result = client.upsert_entities(&blueprint, &entities, options).await;
            Answered { chunk, result }
        }));
    }

    /// Waits for one request's answer and records it.
    async fn answer_one(&mut self) -> Result<(), ResyncError> {
        let Some(Answered { chunk, result }) = self.in_flight.next().await else {
            return Ok(());
        };
        for pending in &chunk {
            self.busy.remove(&key_of(&pending.entity));
        }
        let outcomes = match result {
            Ok(outcomes) => outcomes,
            Err(e) => {
                // No answer: the entities stay in doubt; the next run sends them again.
                tracing::error!(error = %e, entities = chunk.len(), "Port failed; this run sends nothing more");
                self.failure.get_or_insert(e);
                return Ok(());
            }
        };
        let mut written = Vec::new();
        let mut refused: Vec<Refused> = Vec::new();
        for (
            Pending {
                entity,
                hash,
                source,
            },
            outcome,
        ) in chunk.into_iter().zip(outcomes)
        {
            match outcome {
                UpsertOutcome::Upserted { .. } => written.push(Written {
                    key: key_of(&entity),
                    hash: hash.0,
                    kind: source.kind.to_string(),
                    resource: source.resource,
                }),
                UpsertOutcome::Failed(error) => {
                    tracing::warn!(blueprint = %entity.blueprint, identifier = %printable(&entity.identifier_label()), error = %error.error, message = %printable(&error.message), "Port refused an entity; its kind deletes nothing this run, and it is sent again next resync");
                    *self
                        .refused_kinds
                        .entry(source.kind.to_string())
                        .or_default() += 1;
                    if let Some(refusals) = &mut self.refusals {
                        refusals.push((
                            key_of(&entity),
                            format!(
                                "Port refused {} {}: {} ({})",
                                entity.blueprint,
                                printable(&entity.identifier_label()),
                                printable(&error.message),
                                error.error
                            ),
                        ));
                    }
                    refused.push((key_of(&entity), hash.0));
                }
            }
        }
        self.counters.upserted += written.len() as u64;
        self.counters.failed += refused.len() as u64;
        if let Some(live) = &self.progress {
            Progress::add(&live.upserted, written.len() as u64);
        }
        if let Some(state) = &self.state {
            let run = self.run_id;
            with_state(state, move |s| s.record_answers(run, &written, &refused)).await?;
        }
        Ok(())
    }

    /// Sends everything buffered and waits for every answer. `Err(Port)` when Port failed.
    pub async fn settle(&mut self) -> Result<(), ResyncError> {
        if self.failure.is_none() {
            self.launch(true).await?;
        }
        while !self.in_flight.is_empty() {
            self.answer_one().await?;
        }
        self.failed()
    }

    /// Stops: what is buffered is dropped (it was never marked nor sent), the requests in
    /// flight are answered and recorded.
    pub async fn stop(&mut self) -> Result<(), ResyncError> {
        for pending in std::mem::take(&mut self.buffers).into_values().flatten() {
            self.busy.remove(&key_of(&pending.entity));
        }
        while !self.in_flight.is_empty() {
            self.answer_one().await?;
        }
        self.failure = None;
        Ok(())
    }
}
