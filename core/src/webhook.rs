//! The live-event processor interface: what an integration implements so that requests to its
//! webhook routes reach the write path ([`crate::live`]). Ocean's model, read for its rules: a
//! processor says whether a request is its own, authenticates and validates it (before anything
//! is queued or answered 2xx), and later turns the queued event into the raw items it updates and
//! deletes, per kind.

use std::future::Future;
use std::pin::Pin;

use serde_json::value::RawValue;

use crate::mapping::config::ResourceConfig;

/// The route a processor answers on unless it names others.
pub const DEFAULT_PATH: &str = "/integration/webhook";

/// What [`WebhookProcessor::handle`] returns: a processor may call the vendor's API.
pub type HandleFuture<'a> = Pin<Box<dyn Future<Output = Result<Handled, HandleError>> + Send + 'a>>;

/// A request to a webhook route, as received: path, headers and the raw body (signatures are
/// computed over these exact bytes).
#[derive(Debug, Clone, Copy)]
pub struct WebhookRequest<'a> {
    pub path: &'a str,
    /// Header names in lower case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl WebhookRequest<'_> {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a processor refuses a request: told to the sender (401 or 400), nothing queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Invalid(String),
}

/// A request a processor took: what to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedEvent {
    /// The sender's delivery id, if it gives one: a redelivery is not queued twice.
    pub delivery_id: Option<String>,
    /// The kinds the event may change (each must be mapped for the event to be accepted).
    pub kinds: Vec<String>,
    /// What is queued, and handed back to [`WebhookProcessor::handle`].
    pub payload: Vec<u8>,
    /// Events with the same key are handled one after another in arrival order; events with
    /// different keys may be handled at once (GitHub: the pull request's number). `None`: one
    /// shared serial line, as Ocean's ungrouped events.
    pub ordering_key: Option<String>,
    /// Ocean's ACTION processors: the event changes no items itself but asks for a full resync
    /// (the mapping changed upstream). `kinds` is then empty and `handle` is not called.
    pub requests_resync: bool,
}

/// The raw items a queued event updates and deletes for one kind.
#[derive(Debug, Default)]
pub struct Handled {
    pub updated: Vec<Box<RawValue>>,
    pub deleted: Vec<Box<RawValue>>,
}

/// Why a queued event could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Worth trying again (the vendor's API was unavailable).
    #[error("{0}")]
    Retryable(String),
    /// It will fail the same way every time: a dead letter.
    #[error("{0}")]
    Permanent(String),
}

/// What live-event processors are made with: the integration's webhook secret
/// (`integration.config.webhookSecret`), and whether unsigned events are taken
/// (`live_events.allow_unsigned_webhooks`).
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub secret: Option<crate::Secret>,
    pub allow_unsigned: bool,
}

/// One kind of webhook an integration understands.
pub trait WebhookProcessor: Send + Sync + std::fmt::Debug {
    /// Stored with each queued event, to hand it back to this processor after a restart.
    fn name(&self) -> &'static str;

    /// The routes (`POST`) whose requests this processor may take.
    fn paths(&self) -> &[&'static str] {
        &[DEFAULT_PATH]
    }

    /// Whether the request is this processor's (a GitHub `ping` is nobody's: answered 200 and
    /// ignored).
    fn should_process(&self, request: &WebhookRequest<'_>) -> bool;

    /// Authenticates the request, then validates it: the event to queue, or why not.
    fn accept(&self, request: &WebhookRequest<'_>) -> Result<AcceptedEvent, Refusal>;

    /// The raw items the queued `payload` updates and deletes for `resource` (called once per
    /// resource of the mapping: the same kind twice is two calls, each with its selector; an
    /// event that does not concern the resource's kind returns nothing). It may fetch the items
    /// from the vendor.
    fn handle<'a>(&'a self, payload: &'a [u8], resource: &'a ResourceConfig) -> HandleFuture<'a>;
}
