//! Fetching and mapping one resource: the integration's raw batches, the raw-item cache, the
//! mapping pool, in fetch order, each mapped batch handed on as it is ready.

use std::collections::VecDeque;

use port_agent_state::RunCounters;
use tokio::sync::mpsc;

pub(crate) use super::raw_cache::Recheck;
use super::raw_cache::{Fingerprints, Split, resource_fingerprint, split_cached};
use super::{Progress, Resync, ResyncError};
use crate::entity_hash::EntityHash;
use crate::integration::{FetchRequest, RawBatch};
use crate::mapping::PendingBatch;
use crate::port::{Entity, PortError};
use crate::vendor_http::{StateValidators, ValidatorStore};

/// One batch after mapping.
pub(crate) struct Mapped {
    pub(crate) entities: Vec<(Entity, EntityHash)>,
    /// For each entity, the position of the submitted item that produced it.
    pub(crate) entity_items: Vec<usize>,
    pub(crate) fingerprints: Fingerprints,
    /// Key fingerprints of what unchanged items (not mapped again) produced.
    pub(crate) cached: Vec<u64>,
    /// The fetched batch's block fingerprint, when the raw-item cache serves this run.
    pub(crate) block: Option<[u8; 32]>,
    /// When its block vouched for the whole batch: what to map if it no longer holds.
    pub(crate) recheck: Option<Recheck>,
}

/// Per-resource progress while batches flow.
#[derive(Default)]
pub(crate) struct ResourceRun {
    pub(crate) counters: RunCounters,
    /// The resource could not run to its end (fetch failed, mapping did not compile, Port
    /// failed, the agent stopped).
    pub(crate) failed: Option<String>,
    /// Port kept failing (after the client's retries): the run stops here.
    pub(crate) port_failed: bool,
    /// Items that failed to map, and the first one's error (with its item number).
    pub(crate) item_errors: u64,
    pub(crate) first_item_error: Option<String>,
}

impl ResourceRun {
    /// Port failed for good (after the client's retries): the resource, and the run, stop.
    pub(crate) fn port_failed_with(&mut self, index: usize, kind: &str, error: &PortError) {
        self.failed = Some(format!(
            "resources[{index}] (kind {kind}): Port failed: {error}"
        ));
        self.port_failed = true;
    }
}

/// A batch on the pool: its mapping, and what the pipeline keeps beside it.
struct OnPool {
    pending: PendingBatch,
    fingerprints: Fingerprints,
    cached: Vec<u64>,
    block: Option<[u8; 32]>,
    /// A batch its block vouched for.
    recheck: Option<Recheck>,
    /// Each submitted item's number in the kind's stream (1-based), for error messages.
    numbers: Vec<u64>,
}

impl OnPool {
    fn vouching(self, cached: Vec<u64>, block: Option<[u8; 32]>) -> Self {
        Self {
            cached,
            block,
            ..self
        }
    }
}

impl Resync<'_> {
    /// Fetches resource `index`'s kind and maps it on the pool, handing each mapped batch to
    /// `on_batch` in fetch order. Fetch errors mark the resource as failed; item errors are
    /// counted.
    ///
    /// With `cache_run` (the run in progress), raw items whose bytes and resource mapping are
    /// unchanged since their entities were last recorded are not mapped again: they come back in
    /// [`Mapped::cached`].
    pub(crate) async fn map_resource(
        &self,
        index: usize,
        kind: &str,
        cache_run: Option<u64>,
        mut on_batch: impl AsyncFnMut(Mapped) -> Result<Option<Recheck>, ResyncError>,
    ) -> Result<ResourceRun, ResyncError> {
        // Which run the cache serves and the resource's fingerprint: worked out once.
        let cache = cache_run
            .and_then(|run| Some((run, resource_fingerprint(&self.setup.mapping, index)?)));
        let (sink, batches) = mpsc::channel::<RawBatch>(4);
        // Validators are state writes: not in a dry run.
        let validators = cache_run
            .and(self.state.as_ref())
            .map(|state| StateValidators(state.clone()));
        let request = FetchRequest {
            validators: validators.as_ref().map(|v| v as &dyn ValidatorStore),
            ..FetchRequest::of(self.config, index)
        };
        let fetch = self.integration.fetch(request, sink);
        let consume = async move {
            // Owns the receiver: however this ends, the fetch's next send fails and it stops.
            let mut batches = batches;
            let mut progress = ResourceRun::default();
            // Several batches map at once on the pool; results are applied in fetch order. While
            // fewer than `depth` are in flight, take the next batch; when the fetch is done
            // (`recv` gives None), drain what is in flight.
            let mut in_flight: VecDeque<OnPool> = VecDeque::new();
            let depth = self.pool.threads() + 1;
            loop {
                // Asked to stop: no new batch; the fetch sees the closed channel and ends.
                if self.stop.is_cancelled() {
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
                    match self
                        .submit_to_pool(index, cache, batch, &mut progress)
                        .await?
                    {
                        Some(on_pool) => in_flight.push_back(on_pool),
                        None => continue,
                    }
                    if in_flight.len() < depth {
                        continue;
                    }
                }
                let Some(on_pool) = in_flight.pop_front() else {
                    if draining {
                        break;
                    }
                    continue;
                };
                let mut next = self
                    .take_from_pool(index, kind, on_pool, &mut progress)
                    .await;
                while let Some(batch) = next.take() {
                    match on_batch(batch).await {
                        Ok(None) => {}
                        Ok(Some(recheck)) => {
                            next = self.remap(index, kind, recheck, &mut progress).await;
                        }
                        // What Port acknowledged before is recorded; the rest waits for the next
                        // run.
                        Err(ResyncError::Port(e)) => {
                            progress.port_failed_with(index, kind, &e);
                            break;
                        }
                        Err(other) => return Err(other),
                    }
                }
                if progress.port_failed {
                    break;
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

    /// Counts a fetched batch, sets aside what the raw-item cache vouches for, and puts the
    /// rest on the mapping pool. `None` when the pool refused it (the resource failed).
    async fn submit_to_pool(
        &self,
        index: usize,
        cache: Option<(u64, [u8; 32])>,
        batch: RawBatch,
        progress: &mut ResourceRun,
    ) -> Result<Option<OnPool>, ResyncError> {
        let first_number = progress.counters.fetched + 1;
        progress.counters.fetched += batch.len() as u64;
        if let Some(live) = &self.progress {
            Progress::add(&live.fetched, batch.len() as u64);
        }
        let (Some((run, resource)), Some(state)) = (cache, &self.state) else {
            let n = batch.len();
            let numbers = (first_number..).take(n).collect();
            return Ok(self
                .put_on_pool(index, batch, vec![None; n], numbers, progress)
                .await);
        };
        let split: Split = split_cached(state, run, &resource, batch, first_number).await?;
        let numbers = split
            .positions
            .iter()
            .map(|&p| first_number + p as u64)
            .collect();
        let on_pool = self
            .put_on_pool(index, split.to_map, split.fingerprints, numbers, progress)
            .await;
        Ok(on_pool.map(|on_pool| OnPool {
            recheck: split.recheck,
            ..on_pool.vouching(split.cached, Some(split.block))
        }))
    }

    /// Puts items on the mapping pool. `None` when the pool refused them (the resource failed).
    async fn put_on_pool(
        &self,
        index: usize,
        batch: RawBatch,
        fingerprints: Fingerprints,
        numbers: Vec<u64>,
        progress: &mut ResourceRun,
    ) -> Option<OnPool> {
        match self.pool.submit(index, batch).await {
            Ok(pending) => Some(OnPool {
                pending,
                fingerprints,
                cached: Vec::new(),
                block: None,
                recheck: None,
                numbers,
            }),
            Err(e) => {
                progress
                    .failed
                    .get_or_insert(format!("resources[{index}]: {e}"));
                None
            }
        }
    }

    /// Maps, after all, a batch its block vouched for when it was fetched.
    async fn remap(
        &self,
        index: usize,
        kind: &str,
        recheck: Recheck,
        progress: &mut ResourceRun,
    ) -> Option<Mapped> {
        let Recheck {
            batch,
            fingerprints,
            first_number,
            block,
        } = recheck;
        let numbers = (first_number..).take(batch.len()).collect();
        let fingerprints = fingerprints.into_iter().map(Some).collect();
        let on_pool = self
            .put_on_pool(index, batch, fingerprints, numbers, progress)
            .await?;
        self.take_from_pool(
            index,
            kind,
            on_pool.vouching(Vec::new(), Some(block)),
            progress,
        )
        .await
    }

    /// A batch back from the pool: item errors counted (named by item number), field warnings
    /// logged, failed items kept out of the cache. `None` when the pool failed it.
    async fn take_from_pool(
        &self,
        index: usize,
        kind: &str,
        on_pool: OnPool,
        progress: &mut ResourceRun,
    ) -> Option<Mapped> {
        let OnPool {
            pending,
            mut fingerprints,
            cached,
            block,
            numbers,
            recheck,
        } = on_pool;
        let mapped = match pending.result().await {
            Ok(mapped) => mapped,
            Err(e) => {
                progress
                    .failed
                    .get_or_insert(format!("resources[{index}] (kind {kind}): {e}"));
                return None;
            }
        };
        let number = |item: usize| numbers.get(item).copied().unwrap_or_default();
        if let Some((item, error)) = mapped.errors.first() {
            let first = format!("item #{} of kind {kind}: {error}", number(*item));
            tracing::error!(resource = index, kind, errors = mapped.errors.len(), first = %crate::text::printable(&first), "items failed to map; this run deletes nothing");
            progress.first_item_error.get_or_insert(first);
        }
        progress.item_errors += mapped.errors.len() as u64;
        for (field, warning) in &mapped.warnings {
            tracing::warn!(field = %field, count = warning.count, first = %warning.first_message, "mapping field failed; set to null");
        }
        // An item that failed or was skipped is not remembered: it is mapped again next time.
        for (item, _) in mapped.errors.iter().chain(&mapped.skipped) {
            if let Some(f) = fingerprints.get_mut(*item) {
                *f = None;
            }
        }
        Some(Mapped {
            entities: mapped.entities,
            entity_items: mapped.entity_items,
            fingerprints,
            cached,
            block,
            recheck,
        })
    }
}
