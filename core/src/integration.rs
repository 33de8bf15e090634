//! What an integration gives the agent: the kinds it knows and, per kind, its raw items in
//! batches. Implementations live in the `integrations` crate; the resync only sees this trait.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::{OnceCell, mpsc};

use crate::mapping::PortAppConfig;
use crate::mapping::config::{ResourceConfig, Selector};
use crate::vendor_http::ValidatorStore;

/// Raw items as JSON text, so the mapping sees number literals as written.
pub type RawBatch = Vec<Box<RawValue>>;

/// A kind could not be fetched (completely): the resync counts it as failed and deletes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kind {kind}: {message}")]
pub struct FetchError {
    pub kind: String,
    pub message: String,
}

pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<(), FetchError>> + Send + 'a>>;

/// What a fetch is for: one `resources[]` entry of the mapping, as Ocean hands it to an
/// integration. A kind that appears twice is fetched once per entry, each with its selector.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// The entry's position in `resources[]`.
    pub index: usize,
    pub kind: &'a str,
    /// The entry's selector: `query`, and the integration's own keys in `selector.extra`
    /// (GitHub's `includedFiles`, Ocean Custom's `data_path`).
    pub selector: &'a Selector,
    /// The mapping's top-level keys port-agent does not read itself (GitHub's
    /// `repositoryType`).
    pub mapping_extra: &'a Map<String, Value>,
    /// Where validated answers are kept for conditional requests, for an integration that
    /// makes them (`None` in a dry run: it writes nothing).
    pub validators: Option<&'a dyn ValidatorStore>,
}

impl<'a> FetchRequest<'a> {
    /// Resource `index` of `config`.
    pub fn of(config: &'a PortAppConfig, index: usize) -> Self {
        let resource = &config.resources[index];
        Self {
            index,
            kind: &resource.kind,
            selector: &resource.selector,
            mapping_extra: &config.extra,
            validators: None,
        }
    }

    /// A failure of this fetch, for the kind.
    pub fn fail(&self, message: impl Into<String>) -> FetchError {
        FetchError {
            kind: self.kind.to_owned(),
            message: message.into(),
        }
    }
}

/// A third-party system port-agent syncs from.
pub trait Integration: Send + Sync {
    /// The kinds it can fetch.
    fn kinds(&self) -> Vec<String>;

    /// Problems visible before any fetch (a missing file, an unusable setting), each naming
    /// its setting, for `port-agent config validate`.
    fn check(&self) -> Vec<String> {
        Vec::new()
    }

    /// A resync starts fetching: run-scoped caches ([`RunCache`]) open.
    fn resync_starting(&self) {}

    /// The resync's fetches are over: run-scoped caches empty.
    fn resync_ended(&self) {}

    /// Problems with one `resources[]` entry (a kind it cannot fetch, a selector it cannot
    /// use), each naming the key, for `port-agent config validate`.
    fn check_resource(&self, resource: &ResourceConfig) -> Vec<String> {
        let kinds = self.kinds();
        if kinds.contains(&resource.kind) {
            Vec::new()
        } else {
            vec![format!(
                "kind '{}': this integration cannot fetch it (it has: {})",
                resource.kind,
                kinds.join(", ")
            )]
        }
    }

    /// Its live-event processors. They may share what the integration holds (GitHub's client,
    /// so both draw on one rate-limit scope). None by default.
    fn webhook_processors(
        &self,
        _settings: &crate::webhook::WebhookSettings,
    ) -> Vec<Box<dyn crate::webhook::WebhookProcessor>> {
        Vec::new()
    }

    /// Sends every raw item the `request`ed resource names into `sink`, in batches, then
    /// returns. The sink is bounded: a slow resync slows the fetch instead of filling memory.
    fn fetch<'a>(
        &'a self,
        request: FetchRequest<'a>,
        sink: mpsc::Sender<RawBatch>,
    ) -> FetchFuture<'a>;
}

/// Every raw item `integration` fetches for `request`, as JSON text, in order (for tests and
/// tools that want a kind's items at once; a resync streams them instead).
pub async fn fetch_all(
    integration: &dyn Integration,
    request: FetchRequest<'_>,
) -> Result<Vec<String>, FetchError> {
    let (sink, mut batches) = mpsc::channel::<RawBatch>(2);
    let collect = async {
        let mut items = Vec::new();
        while let Some(batch) = batches.recv().await {
            items.extend(batch.into_iter().map(|raw| raw.get().to_owned()));
        }
        items
    };
    let (fetched, items) = tokio::join!(integration.fetch(request, sink), collect);
    fetched.map(|()| items)
}

/// Values several fetches of one resync share (a listing of organizations or repositories that
/// several kinds start from): fetched once per resync, by the first fetch that asks, while the
/// others with the same key wait for it. Outside a resync (a live event) nothing is cached: a
/// live event always reads fresh data, and nothing it reads outlives it.
#[derive(Debug)]
pub struct RunCache<V> {
    /// `None` outside a resync.
    entries: std::sync::Mutex<Option<HashMap<String, Arc<OnceCell<V>>>>>,
}

impl<V> Default for RunCache<V> {
    fn default() -> Self {
        Self {
            entries: std::sync::Mutex::new(None),
        }
    }
}

impl<V: Clone> RunCache<V> {
    /// Call from [`Integration::resync_starting`].
    pub fn open(&self) {
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    }

    /// Call from [`Integration::resync_ended`].
    pub fn close(&self) {
        *self.entries.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The value for `key`: cached in this resync, or `fetch`ed (a failure is not cached).
    pub async fn get_or_fetch<E, F, Fut>(&self, key: &str, fetch: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            match entries.as_mut() {
                Some(entries) => entries.entry(key.to_owned()).or_default().clone(),
                None => Arc::new(OnceCell::new()),
            }
        };
        cell.get_or_try_init(fetch).await.cloned()
    }
}
