//! Live events in the service: the `json` integration's push endpoint (`POST
//! /integration/webhook`), which accepts an event into the state's inbox before it answers, and
//! the drain that applies the inbox through the resync's write path.
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
use port_agent_integrations::push;
use port_agent_state::{Accepted, StateStore};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::PushSettings;
use crate::http::{Metrics, SharedState};

/// Attempts at an event before it becomes a dead letter, and the waits between them.
const ATTEMPTS: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// What a sender is told to wait when the inbox is full or the state is not open.
const RETRY_AFTER_SECONDS: &str = "5";

/// An inbox entry: a version byte, the receipt time (ms since the epoch), then the body as
/// received (its signature was checked over these bytes).
const ENVELOPE: u8 = 1;

fn envelope(body: &[u8]) -> Vec<u8> {
    let now = jiff::Timestamp::now().as_millisecond();
    let mut out = Vec::with_capacity(9 + body.len());
    out.push(ENVELOPE);
    out.extend_from_slice(&now.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The receipt time (if recorded) and the body of an inbox entry.
fn open_envelope(bytes: &[u8]) -> (Option<i64>, &[u8]) {
    match bytes.split_first() {
        Some((&ENVELOPE, rest)) if rest.len() >= 8 => {
            let (at, body) = rest.split_at(8);
            (
                Some(i64::from_le_bytes(at.try_into().expect("8 bytes"))),
                body,
            )
        }
        _ => (None, bytes),
    }
}

/// What the push endpoint works with.
#[derive(Debug, Clone)]
pub struct PushRoute {
    pub metrics: Arc<Metrics>,
    pub settings: PushSettings,
    /// The kinds the mapping maps (as the service started).
    pub kinds: Arc<BTreeSet<String>>,
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

/// `POST /integration/webhook`: 401 for a missing or wrong signature, 400 for a body that is
/// not a push event or names a kind the mapping does not map, 202 once the event is durably in
/// the inbox (also for a delivery id seen before, which is not queued again), 503 with
/// Retry-After when the inbox is full.
pub async fn receive(route: &PushRoute, headers: &HeaderMap, body: &[u8]) -> Response {
    route.metrics.live_event("received", "");
    let signature = headers
        .get(push::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    match &route.settings.secret {
        Some(secret) if !push::verify(secret.expose().as_bytes(), body, signature) => {
            route.metrics.live_event("rejected", "");
            return answer(
                StatusCode::UNAUTHORIZED,
                json!({"ok": false, "error": format!("a valid {} header is required", push::SIGNATURE_HEADER)}),
            );
        }
        None if !route.settings.allow_unsigned => {
            route.metrics.live_event("rejected", "");
            return answer(
                StatusCode::UNAUTHORIZED,
                json!({"ok": false, "error": format!("events are refused: set integration.config.{} and sign them (or live_events.allow_unsigned_webhooks: true)", push::SECRET_SETTING)}),
            );
        }
        _ => {}
    }
    let event = match push::parse(body) {
        Ok(event) => event,
        Err(error) => {
            route.metrics.live_event("rejected", "");
            return answer(
                StatusCode::BAD_REQUEST,
                json!({"ok": false, "error": error}),
            );
        }
    };
    if !route.kinds.contains(&event.kind) {
        route.metrics.live_event("rejected", "");
        return answer(
            StatusCode::BAD_REQUEST,
            json!({"ok": false, "error": format!("kind {:?} is not mapped by any resource", event.kind)}),
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
    let (id, bytes, capacity) = (event.id, envelope(body), route.settings.inbox_capacity);
    let accepted = tokio::task::spawn_blocking(move || {
        let accepted = state.inbox_accept(id.as_deref(), &bytes, capacity)?;
        Ok::<_, port_agent_state::StateError>((accepted, state.inbox_depth()?.0))
    })
    .await;
    let kind = event.kind.as_str();
    match accepted {
        Ok(Ok((Accepted::Queued(sequence), waiting))) => {
            route.metrics.live_event("accepted", kind);
            route.metrics.inbox_waiting(waiting);
            route.arrived.notify_one();
            answer(
                StatusCode::ACCEPTED,
                json!({"ok": true, "sequence": sequence}),
            )
        }
        Ok(Ok((Accepted::Duplicate, _))) => {
            route.metrics.live_event("duplicate", kind);
            answer(StatusCode::ACCEPTED, json!({"ok": true, "duplicate": true}))
        }
        Ok(Ok((Accepted::Full, _))) => {
            route.metrics.live_event("refused_full", kind);
            busy("the inbox is full; try again later")
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a live event could not be written to the inbox");
            busy("the event could not be stored; try again later")
        }
        Err(e) => {
            tracing::error!(error = %e, "a live event could not be written to the inbox");
            busy("the event could not be stored; try again later")
        }
    }
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
            let fate = apply_one(state, &prepared, sequence, &bytes, stop, metrics).await;
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

/// One event: applied and taken out of the inbox, or, after its attempts, a dead letter.
async fn apply_one(
    state: &Arc<StateStore>,
    prepared: &crate::commands::resync::Prepared,
    sequence: u64,
    bytes: &[u8],
    stop: &CancellationToken,
    metrics: &Metrics,
) -> Fate {
    let (received_ms, body) = open_envelope(bytes);
    let mut wait = FIRST_WAIT;
    let mut last_error = String::new();
    let mut kind = String::new();
    let mut attempts = 0;
    for attempt in 1..=ATTEMPTS {
        attempts = attempt;
        let event = match push::parse(body) {
            Ok(event) => LiveEvent {
                kind: {
                    kind.clone_from(&event.kind);
                    event.kind
                },
                upsert: event.upsert,
                delete: event.delete,
            },
            Err(e) => {
                last_error = e;
                break;
            }
        };
        match prepared.apply_live(state, event).await {
            // Items that failed to map or that Port refused fail the same way again: the event
            // is a dead letter at once (what it could apply is applied), for an operator to see.
            Ok(outcome)
                if outcome.run.status == port_agent_state::RunStatus::CompletedWithErrors =>
            {
                let mut errors = outcome.item_errors.clone();
                errors.extend(outcome.run.notes.iter().cloned());
                if errors.is_empty() {
                    errors.push("Port refused entities of this event".to_owned());
                }
                last_error = errors.join("; ");
                break;
            }
            Ok(outcome) if outcome.run.status != port_agent_state::RunStatus::Failed => {
                tracing::info!(
                    sequence,
                    run = outcome.run.id,
                    upserted = outcome.run.totals.upserted,
                    unchanged = outcome.run.totals.unchanged,
                    deleted = outcome.run.totals.deleted,
                    item_errors = outcome.item_errors.len(),
                    "live event applied"
                );
                for error in &outcome.item_errors {
                    tracing::error!(sequence, "live event item failed: {error}");
                }
                let done = state.clone();
                let _ = tokio::task::spawn_blocking(move || done.inbox_done(sequence)).await;
                metrics.live_event("applied", &kind);
                if let Some(received) = received_ms {
                    let now = jiff::Timestamp::now().as_millisecond();
                    metrics.live_latency((now - received).max(0) as f64 / 1000.0);
                }
                return Fate::Applied;
            }
            Ok(outcome) => last_error = outcome.run.notes.join("; "),
            Err(ResyncError::Port(e)) => {
                // Not the event's fault: it waits, first in line, until Port answers again.
                tracing::warn!(sequence, error = %e, "Port is unavailable; live events wait");
                return Fate::PortDown;
            }
            Err(e) => last_error = e.to_string(),
        }
        tracing::warn!(sequence, attempt, error = %last_error, "live event not applied; retrying");
        if attempt < ATTEMPTS {
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
