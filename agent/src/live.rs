//! Live events in the service: the webhook route, which hands each request to the integration's
//! processors ([`port_agent_core::webhook`]) and queues what they accept in the state's inbox
//! before it answers, and the drain that applies the inbox through the resync's write path.
//!
//! The service applies events between runs, never during one: a resync and a live event never
//! write the same entity at once, and an event that arrives during a resync is applied after it,
//! so the resync's data (fetched before the event) cannot undo it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use port_agent_core::live::LiveEvent;
use port_agent_core::resync::ResyncError;
use port_agent_core::webhook::{HandleError, Refusal, WebhookProcessor, WebhookRequest};
use port_agent_state::{Accepted, StateStore};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::http::{Metrics, SharedState};

/// Attempts at an event before it becomes a dead letter, and the waits between them.
const ATTEMPTS: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// What a sender is told to wait when the inbox is full or the state is not open.
const RETRY_AFTER_SECONDS: &str = "5";

/// An inbox entry: a version byte, the receipt time (ms since the epoch), the processor's name
/// (a length byte, then the name), then the payload it accepted.
const ENVELOPE: u8 = 2;

fn envelope(processor: &str, payload: &[u8]) -> Vec<u8> {
    let now = jiff::Timestamp::now().as_millisecond();
    let name = &processor.as_bytes()[..processor.len().min(255)];
    let mut out = Vec::with_capacity(10 + name.len() + payload.len());
    out.push(ENVELOPE);
    out.extend_from_slice(&now.to_le_bytes());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    out
}

/// An inbox entry opened: receipt time, processor name, payload.
struct Opened<'a> {
    received_ms: i64,
    processor: &'a str,
    payload: &'a [u8],
}

fn open_envelope(bytes: &[u8]) -> Option<Opened<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if version != ENVELOPE || rest.len() < 9 {
        return None;
    }
    let received_ms = i64::from_le_bytes(rest[..8].try_into().ok()?);
    let name_len = usize::from(rest[8]);
    let name = std::str::from_utf8(rest.get(9..9 + name_len)?).ok()?;
    Some(Opened {
        received_ms,
        processor: name,
        payload: rest.get(9 + name_len..)?,
    })
}

/// The integration's live-event processors.
pub type Processors = Arc<Vec<Box<dyn WebhookProcessor>>>;

/// What the webhook route works with.
#[derive(Debug, Clone)]
pub struct WebhookRoute {
    pub metrics: Arc<Metrics>,
    pub processors: Processors,
    /// The kinds the mapping maps (as the service started).
    pub kinds: Arc<BTreeSet<String>>,
    pub inbox_capacity: usize,
    pub state: SharedState,
    /// Told when an event is queued.
    pub arrived: Arc<Notify>,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn busy(why: &str) -> Response {
    let mut response = answer(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"ok": false, "error": why}),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

/// A webhook request: each processor that takes it authenticates and validates it (401 or 400,
/// nothing queued); what they accept is durably in the inbox before the 202 (a delivery id seen
/// before is not queued again); a full inbox is 503 with Retry-After; a request no processor
/// takes is 200, ignored.
pub async fn receive(
    route: &WebhookRoute,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    route.metrics.live_event("received", "");
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned())))
        .collect();
    let request = WebhookRequest {
        path,
        headers: &headers,
        body,
    };
    let mut accepted = Vec::new();
    for processor in route
        .processors
        .iter()
        .filter(|p| p.should_process(&request))
    {
        match processor.accept(&request) {
            Ok(event) => accepted.push((processor.name(), event)),
            Err(refusal) => {
                route.metrics.live_event("rejected", "");
                let status = match refusal {
                    Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                    Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
                };
                return answer(status, json!({"ok": false, "error": refusal.to_string()}));
            }
        }
    }
    if accepted.is_empty() {
        route.metrics.live_event("ignored", "");
        return answer(StatusCode::OK, json!({"ok": true, "ignored": true}));
    }
    if let Some(kind) = accepted
        .iter()
        .flat_map(|(_, e)| &e.kinds)
        .find(|k| !route.kinds.contains(*k))
    {
        route.metrics.live_event("rejected", "");
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"ok": false, "error": format!("kind {kind:?} is not mapped by any resource")}),
        );
    }
    let Some(state) = route
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    else {
        return busy("the state is not open; try again later");
    };
    let mut answered = answer(StatusCode::ACCEPTED, json!({"ok": true}));
    for (name, event) in accepted {
        let kind = event.kinds.first().cloned().unwrap_or_default();
        // Delivery ids are the sender's: scoped by processor.
        let id = event.delivery_id.map(|id| format!("{name}:{id}"));
        let (bytes, capacity) = (envelope(name, &event.payload), route.inbox_capacity);
        let state = state.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let accepted = state.inbox_accept(id.as_deref(), &bytes, capacity)?;
            Ok::<_, port_agent_state::StateError>((accepted, state.inbox_depth()?.0))
        })
        .await;
        answered = match stored {
            Ok(Ok((Accepted::Queued(sequence), waiting))) => {
                route.metrics.live_event("accepted", &kind);
                route.metrics.inbox_waiting(waiting);
                route.arrived.notify_one();
                answer(
                    StatusCode::ACCEPTED,
                    json!({"ok": true, "sequence": sequence}),
                )
            }
            Ok(Ok((Accepted::Duplicate, _))) => {
                route.metrics.live_event("duplicate", &kind);
                answer(StatusCode::ACCEPTED, json!({"ok": true, "duplicate": true}))
            }
            Ok(Ok((Accepted::Full, _))) => {
                route.metrics.live_event("refused_full", &kind);
                return busy("the inbox is full; try again later");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "a live event could not be written to the inbox");
                return busy("the event could not be stored; try again later");
            }
            Err(e) => {
                tracing::error!(error = %e, "a live event could not be written to the inbox");
                return busy("the event could not be stored; try again later");
            }
        };
    }
    answered
}

/// How a drain of the inbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing waits (or the agent stops).
    Empty,
    /// Port (or the configuration) is not usable now: the events wait, in order, for the next
    /// drain.
    Paused,
}

/// What became of one event.
enum Fate {
    Applied,
    DeadLetter,
    /// Port is unavailable: the event stays first in line.
    PortDown,
    Stopped,
}

/// Applies what waits in the inbox, oldest first, until it is empty, Port is unavailable or the
/// agent stops. An event that fails on its own (not for Port's unavailability) is retried with
/// growing waits and after [`ATTEMPTS`] becomes a dead letter. `prepare` gives the
/// configuration as it is now (mapping included).
pub(crate) async fn drain<F, Fut>(
    state: &Arc<StateStore>,
    stop: &CancellationToken,
    metrics: &Metrics,
    processors: &Processors,
    prepare: F,
) -> Drained
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<crate::commands::resync::Prepared>>,
{
    loop {
        let reader = state.clone();
        let pending = match tokio::task::spawn_blocking(move || reader.inbox_pending(64)).await {
            Ok(Ok(pending)) => pending,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the live-event inbox");
                return Drained::Paused;
            }
            Err(_) => return Drained::Paused,
        };
        if pending.is_empty() {
            return Drained::Empty;
        }
        let Some(prepared) = prepare().await else {
            // Logged by `prepare`; the events stay in the inbox for the next drain.
            return Drained::Paused;
        };
        for (sequence, bytes) in pending {
            let fate = apply_one(
                state, &prepared, processors, sequence, &bytes, stop, metrics,
            )
            .await;
            let reader = state.clone();
            if let Ok(Ok((waiting, _))) =
                tokio::task::spawn_blocking(move || reader.inbox_depth()).await
            {
                metrics.inbox_waiting(waiting);
            }
            match fate {
                Fate::Applied | Fate::DeadLetter => {}
                Fate::PortDown => return Drained::Paused,
                Fate::Stopped => return Drained::Empty,
            }
        }
    }
}

/// The live events a queued entry makes: its processor's items for each kind the mapping maps.
fn events_of(
    processors: &Processors,
    opened: &Opened<'_>,
    prepared: &crate::commands::resync::Prepared,
) -> Result<Vec<LiveEvent>, HandleError> {
    let processor = processors
        .iter()
        .find(|p| p.name() == opened.processor)
        .ok_or_else(|| {
            HandleError::Permanent(format!(
                "no live-event processor is named {:?} any more",
                opened.processor
            ))
        })?;
    let mut events = Vec::new();
    for kind in prepared.mapped_kinds() {
        let handled = processor.handle(opened.payload, &kind)?;
        if !handled.updated.is_empty() || !handled.deleted.is_empty() {
            events.push(LiveEvent {
                kind,
                upsert: handled.updated,
                delete: handled.deleted,
            });
        }
    }
    Ok(events)
}

/// Applies an entry's events in turn: the first failure ends it (what was applied stays; the
/// next attempt finds it unchanged). The last outcome stands for the entry.
async fn apply_all(
    prepared: &crate::commands::resync::Prepared,
    state: &Arc<StateStore>,
    events: Vec<LiveEvent>,
) -> Result<port_agent_core::live::LiveOutcome, ResyncError> {
    let mut last = None;
    for event in events {
        let outcome = prepared.apply_live(state, event).await?;
        if outcome.run.status != port_agent_state::RunStatus::Completed {
            return Ok(outcome);
        }
        last = Some(outcome);
    }
    Ok(last.expect("called with at least one event"))
}

/// What one attempt at a queued event came to.
enum Attempt {
    /// Applied (`None`: it names nothing the mapping maps any more): out of the inbox.
    Done(Option<port_agent_core::live::LiveOutcome>),
    /// It will fail the same way again: a dead letter now.
    Permanent(String),
    /// Worth another attempt.
    Retry(String),
    /// Port is unavailable: not the event's fault.
    PortDown(String),
}

/// One attempt: the entry's events from its processor, applied in turn.
async fn attempt(
    processors: &Processors,
    opened: Option<&Opened<'_>>,
    prepared: &crate::commands::resync::Prepared,
    state: &Arc<StateStore>,
    kind: &mut String,
) -> Attempt {
    let Some(opened) = opened else {
        return Attempt::Permanent("the inbox entry is not readable".to_owned());
    };
    let events = match events_of(processors, opened, prepared) {
        Ok(events) => events,
        Err(HandleError::Permanent(e)) => return Attempt::Permanent(e),
        Err(HandleError::Retryable(e)) => return Attempt::Retry(e),
    };
    let Some(first) = events.first() else {
        return Attempt::Done(None);
    };
    kind.clone_from(&first.kind);
    match apply_all(prepared, state, events).await {
        // Items that failed to map or that Port refused fail the same way again: the event is
        // a dead letter at once (what it could apply is applied), for an operator to see.
        Ok(outcome) if outcome.run.status == port_agent_state::RunStatus::CompletedWithErrors => {
            let mut errors = outcome.item_errors;
            errors.extend(outcome.run.notes);
            if errors.is_empty() {
                errors.push("Port refused entities of this event".to_owned());
            }
            Attempt::Permanent(errors.join("; "))
        }
        Ok(outcome) if outcome.run.status == port_agent_state::RunStatus::Failed => {
            Attempt::Retry(outcome.run.notes.join("; "))
        }
        Ok(outcome) => Attempt::Done(Some(outcome)),
        Err(ResyncError::Port(e)) => Attempt::PortDown(e.to_string()),
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

/// One event: applied and taken out of the inbox, or, after its attempts, a dead letter.
#[allow(clippy::too_many_arguments)] // one event's whole context; split, it only moves around
async fn apply_one(
    state: &Arc<StateStore>,
    prepared: &crate::commands::resync::Prepared,
    processors: &Processors,
    sequence: u64,
    bytes: &[u8],
    stop: &CancellationToken,
    metrics: &Metrics,
) -> Fate {
    let opened = open_envelope(bytes);
    let mut wait = FIRST_WAIT;
    let mut last_error = String::new();
    let mut kind = String::new();
    let mut attempts = 0;
    for attempt_number in 1..=ATTEMPTS {
        attempts = attempt_number;
        match attempt(processors, opened.as_ref(), prepared, state, &mut kind).await {
            Attempt::Done(outcome) => {
                let done = state.clone();
                let _ = tokio::task::spawn_blocking(move || done.inbox_done(sequence)).await;
                if let Some(outcome) = outcome {
                    tracing::info!(
                        sequence,
                        run = outcome.run.id,
                        upserted = outcome.run.totals.upserted,
                        unchanged = outcome.run.totals.unchanged,
                        deleted = outcome.run.totals.deleted,
                        item_errors = outcome.item_errors.len(),
                        "live event applied"
                    );
                    metrics.live_event("applied", &kind);
                    if let Some(opened) = &opened {
                        let now = jiff::Timestamp::now().as_millisecond();
                        metrics.live_latency((now - opened.received_ms).max(0) as f64 / 1000.0);
                    }
                }
                return Fate::Applied;
            }
            Attempt::PortDown(e) => {
                // It waits, first in line, until Port answers again.
                tracing::warn!(sequence, error = %e, "Port is unavailable; live events wait");
                return Fate::PortDown;
            }
            Attempt::Permanent(e) => {
                last_error = e;
                break;
            }
            Attempt::Retry(e) => last_error = e,
        }
        tracing::warn!(sequence, attempt = attempt_number, error = %last_error, "live event not applied; retrying");
        if attempt_number < ATTEMPTS {
            tokio::select! {
                () = stop.cancelled() => return Fate::Stopped,
                () = tokio::time::sleep(wait) => {}
            }
            wait *= 2;
        }
    }
    tracing::error!(sequence, error = %last_error, "live event kept failing; it is a dead letter now (`port-agent state retry-dead-letters`)");
    metrics.live_event("dead_lettered", &kind);
    let dead = state.clone();
    let _ = tokio::task::spawn_blocking(move || {
        dead.inbox_dead_letter(sequence, attempts, &last_error)
    })
    .await;
    Fate::DeadLetter
}
