//! What an integration gives the agent: the kinds it knows and, per kind, its raw items in
//! batches. Implementations live in the `integrations` crate; the resync only sees this trait.

use std::future::Future;
use std::pin::Pin;

use serde_json::value::RawValue;
use tokio::sync::mpsc;

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

/// A third-party system port-agent syncs from.
pub trait Integration: Send + Sync {
    /// The kinds it can fetch.
    fn kinds(&self) -> Vec<String>;

    /// Problems visible before any fetch (a missing file, an unusable setting), each naming
    /// its setting, for `port-agent config validate`.
    fn check(&self) -> Vec<String> {
        Vec::new()
    }

    /// Sends every raw item of `kind` into `sink`, in batches, then returns. The sink is
    /// bounded: a slow resync slows the fetch instead of filling memory.
    fn fetch<'a>(&'a self, kind: &'a str, sink: mpsc::Sender<RawBatch>) -> FetchFuture<'a>;
}
