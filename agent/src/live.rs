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
use port_agent_core::live::{LiveEvent, LiveItems};
use port_agent_core::mapping::config::ResourceConfig;
use port_agent_core::resync::ResyncError;
use port_agent_core::webhook::{
    AcceptedEvent, HandleError, Refusal, WebhookProcessor, WebhookRequest,
};
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
/// (a length byte, then the name), the route it came on (the same way), the ordering key (two length bytes, `NO_KEY` for none, then
/// the key), a flags byte, then the payload the processor accepted. Version 2 (before ordering
/// keys and resync requests) is still read.
const ENVELOPE: u8 = 3;
const ENVELOPE_V2: u8 = 2;
const NO_KEY: u16 = u16::MAX;
/// Flag: the event asks for a resync.
const REQUESTS_RESYNC: u8 = 1;

fn envelope(processor: &str, path: &str, event: &AcceptedEvent) -> Vec<u8> {
    let now = jiff::Timestamp::now().as_millisecond();
    let name = &processor.as_bytes()[..processor.len().min(255)];
    let key = event
        .ordering_key
        .as_deref()
        .map(|k| &k.as_bytes()[..k.len().min(usize::from(NO_KEY - 1))]);
    let mut out = Vec::with_capacity(14 + name.len() + event.payload.len());
    out.push(ENVELOPE);
    out.extend_from_slice(&now.to_le_bytes());
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    let path = &path.as_bytes()[..path.len().min(255)];
    out.push(path.len() as u8);
    out.extend_from_slice(path);
    match key {
        Some(key) => {
            out.extend_from_slice(&(key.len() as u16).to_le_bytes());
            out.extend_from_slice(key);
        }
        None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    out.push(if event.requests_resync {
        REQUESTS_RESYNC
    } else {
        0
    });
    out.extend_from_slice(&event.payload);
    out
}

/// An inbox entry opened.
#[derive(Debug, PartialEq, Eq)]
struct Opened<'a> {
    received_ms: i64,
    processor: &'a str,
    /// The route it came on.
    path: &'a str,
    ordering_key: Option<&'a str>,
    requests_resync: bool,
    payload: &'a [u8],
}

fn open_envelope(bytes: &[u8]) -> Option<Opened<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if !(version == ENVELOPE || version == ENVELOPE_V2) || rest.len() < 9 {
        return None;
    }
    let received_ms = i64::from_le_bytes(rest[..8].try_into().ok()?);
    let name_len = usize::from(rest[8]);
    let processor = std::str::from_utf8(rest.get(9..9 + name_len)?).ok()?;
    let rest = rest.get(9 + name_len..)?;
    if version == ENVELOPE_V2 {
        return Some(Opened {
            received_ms,
            processor,
            path: port_agent_core::webhook::DEFAULT_PATH,
            ordering_key: None,
            requests_resync: false,
            payload: rest,
        });
    }
    let (&path_len, rest) = rest.split_first()?;
    let path = std::str::from_utf8(rest.get(..usize::from(path_len))?).ok()?;
    let rest = &rest[usize::from(path_len)..];
    let key_len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?);
    let (ordering_key, rest) = if key_len == NO_KEY {
        (None, &rest[2..])
    } else {
        let end = 2 + usize::from(key_len);
        (
            Some(std::str::from_utf8(rest.get(2..end)?).ok()?),
            &rest[end..],
        )
    };
    let (&flags, payload) = rest.split_first()?;
    Some(Opened {
        received_ms,
        processor,
        path,
        ordering_key,
        requests_resync: flags & REQUESTS_RESYNC != 0,
        payload,
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
    /// Writes accepted events to the inbox, a burst in one commit.
    pub inbox: InboxWriter,
}

/// One accepted event on its way into the inbox, and where its outcome goes.
struct AcceptJob {
    state: Arc<StateStore>,
    id: Option<String>,
    bytes: Vec<u8>,
    capacity: usize,
    reply: tokio::sync::oneshot::Sender<Result<(Accepted, u64), String>>,
}

/// Jobs written in one commit, at most.
const ACCEPT_GROUP: usize = 256;

/// Writes accepted events into the inbox from a thread of its own: the events that arrive
/// while one commit is being flushed to disk go together in the next, so a burst of webhooks
/// costs a few fsyncs, not one each. Each request still gets its 2xx only once its event is on
/// disk. The thread ends when the route (every sender) is gone.
#[derive(Debug, Clone)]
pub struct InboxWriter {
    jobs: tokio::sync::mpsc::Sender<AcceptJob>,
}

impl InboxWriter {
    pub fn start() -> Self {
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<AcceptJob>(1024);
        std::thread::Builder::new()
            .name("inbox-writer".to_owned())
            .spawn(move || {
                while let Some(first) = queue.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < ACCEPT_GROUP {
                        match queue.try_recv() {
                            Ok(job) => group.push(job),
                            Err(_) => break,
                        }
                    }
                    write_group(group);
                }
            })
            .expect("a thread can be started");
        Self { jobs }
    }

    /// Queues `bytes` (delivery `id`) in `state`'s inbox; its outcome and how many wait.
    async fn accept(
        &self,
        state: Arc<StateStore>,
        id: Option<String>,
        bytes: Vec<u8>,
        capacity: usize,
    ) -> Result<(Accepted, u64), String> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let job = AcceptJob {
            state,
            id,
            bytes,
            capacity,
            reply,
        };
        let stopped = || "the inbox writer has stopped".to_owned();
        self.jobs.send(job).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// Writes `group` (one commit per state file among them: a reopened file is another) and
/// answers each job.
fn write_group(mut group: Vec<AcceptJob>) {
    while !group.is_empty() {
        let state = group[0].state.clone();
        let (same, rest): (Vec<AcceptJob>, Vec<AcceptJob>) = group
            .into_iter()
            .partition(|job| Arc::ptr_eq(&job.state, &state));
        group = rest;
        let events: Vec<(Option<&str>, &[u8])> = same
            .iter()
            .map(|job| (job.id.as_deref(), job.bytes.as_slice()))
            .collect();
        let written = state
            .inbox_accept_many(&events, same[0].capacity)
            .and_then(|outcomes| Ok((outcomes, state.inbox_depth()?.0)));
        match written {
            Ok((outcomes, waiting)) => {
                for (job, outcome) in same.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok((outcome, waiting)));
                }
            }
            Err(e) => {
                for job in same {
                    let _ = job.reply.send(Err(e.to_string()));
                }
            }
        }
    }
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
    route.metrics.live_event("received", path, "");
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
        .filter(|p| p.paths().contains(&path) && p.should_process(&request))
    {
        match processor.accept(&request) {
            Ok(event) => accepted.push((processor.name(), event)),
            Err(refusal) => {
                route.metrics.live_event("rejected", path, "");
                let status = match refusal {
                    Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                    Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
                };
                return answer(status, json!({"ok": false, "error": refusal.to_string()}));
            }
        }
    }
    if accepted.is_empty() {
        route.metrics.live_event("ignored", path, "");
        return answer(StatusCode::OK, json!({"ok": true, "ignored": true}));
    }
    if let Some(kind) = accepted
        .iter()
        .flat_map(|(_, e)| &e.kinds)
        .find(|k| !route.kinds.contains(*k))
    {
        route.metrics.live_event("rejected", path, "");
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
        let kind = match event.kinds.first() {
            Some(kind) => kind.clone(),
            None if event.requests_resync => "resync".to_owned(),
            None => String::new(),
        };
        // Delivery ids are the sender's: scoped by processor.
        let id = event.delivery_id.as_ref().map(|id| format!("{name}:{id}"));
        let (bytes, capacity) = (envelope(name, path, &event), route.inbox_capacity);
        let stored = route.inbox.accept(state.clone(), id, bytes, capacity).await;
        answered = match stored {
            Ok((Accepted::Queued(sequence), waiting)) => {
                route.metrics.live_event("accepted", path, &kind);
                route
                    .metrics
                    .inbox_queued(waiting, jiff::Timestamp::now().as_millisecond());
                route.arrived.notify_one();
                answer(
                    StatusCode::ACCEPTED,
                    json!({"ok": true, "sequence": sequence}),
                )
            }
            Ok((Accepted::Duplicate, _)) => {
                route.metrics.live_event("duplicate", path, &kind);
                answer(StatusCode::ACCEPTED, json!({"ok": true, "duplicate": true}))
            }
            Ok((Accepted::Full, _)) => {
                route.metrics.live_event("refused_full", path, &kind);
                return busy("the inbox is full; try again later");
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drained {
    /// Nothing waits (or the agent stops).
    Empty,
    /// Port (or the configuration) is not usable now: the events wait, in order, for the next
    /// drain.
    Paused,
    /// The next events in line ask for a resync (these inbox sequences): the service runs one,
    /// then takes them out ([`resync_done`]) and drains on.
    ResyncWanted(Vec<u64>),
}

/// What the drain works with.
pub(crate) struct Drain<'a> {
    pub state: &'a Arc<StateStore>,
    pub stop: &'a CancellationToken,
    pub metrics: &'a Metrics,
    pub processors: &'a Processors,
    /// Queued events handled at once (different ordering keys), at most.
    pub workers: usize,
}

/// Events taken from the inbox at a time: applied as one run.
const BATCH: usize = 256;

/// How long one event's handling (fetches included) may take before it counts as a failed
/// attempt (Ocean's `OCEAN__MAX_EVENT_PROCESSING_SECONDS`).
const HANDLE_DEADLINE: Duration = Duration::from_secs(90);

/// What became of one event.
enum Fate {
    Applied,
    DeadLetter,
    /// Port is unavailable: the event stays first in line.
    PortDown,
    Stopped,
}

/// One entry of the inbox, read.
struct Entry {
    sequence: u64,
    bytes: Vec<u8>,
}

impl Entry {
    fn opened(&self) -> Option<Opened<'_>> {
        open_envelope(&self.bytes)
    }

    /// The route it came on, for metrics.
    fn path(&self) -> &str {
        self.opened().map_or("", |o| o.path)
    }
}

impl Drain<'_> {
    /// Applies what waits in the inbox, oldest first, until it is empty, Port is unavailable,
    /// a resync is asked for or the agent stops. Waiting events go as one run; an event that
    /// fails on its own (not for Port's unavailability) is retried with growing waits and after
    /// [`ATTEMPTS`] becomes a dead letter. `prepare` gives the configuration as it is now
    /// (mapping included), read once for the drain.
    pub(crate) async fn run<F, Fut>(&self, prepare: F) -> Drained
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<crate::commands::resync::Prepared>>,
    {
        // The configuration (mapping compiled, mapping pool started) is prepared once a drain,
        // when there is something to apply, not once a batch.
        let mut prepared = None;
        loop {
            let reader = self.state.clone();
            let pending =
                match tokio::task::spawn_blocking(move || reader.inbox_pending(BATCH)).await {
                    Ok(Ok(pending)) => pending,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot read the live-event inbox");
                        return Drained::Paused;
                    }
                    Err(_) => return Drained::Paused,
                };
            let entries: Vec<Entry> = pending
                .into_iter()
                .map(|(sequence, bytes)| Entry { sequence, bytes })
                .collect();
            let wants_resync = |e: &Entry| e.opened().is_some_and(|o| o.requests_resync);
            let resyncs: Vec<u64> = entries
                .iter()
                .take_while(|e| wants_resync(e))
                .map(|e| e.sequence)
                .collect();
            if !resyncs.is_empty() {
                return Drained::ResyncWanted(resyncs);
            }
            // Up to the next resync request: what follows it waits for the resync.
            let batch: Vec<Entry> = entries
                .into_iter()
                .take_while(|e| !wants_resync(e))
                .collect();
            if batch.is_empty() {
                return Drained::Empty;
            }
            if prepared.is_none() {
                prepared = prepare().await;
            }
            let Some(prepared) = &prepared else {
                // Logged by `prepare`; the events stay in the inbox for the next drain.
                return Drained::Paused;
            };
            let flow = self.apply_batch(prepared, batch).await;
            self.report_depth().await;
            match flow {
                Some(Fate::PortDown) => return Drained::Paused,
                Some(Fate::Stopped) => return Drained::Empty,
                _ => {}
            }
        }
    }

    async fn report_depth(&self) {
        report_inbox(self.state, self.metrics).await;
    }

    /// Handles the batch's events (different ordering keys at once), applies those handled as
    /// one run, and settles each: out of the inbox, or a dead letter with its own errors. An
    /// event whose handling may succeed later is tried on its own with growing waits, and the
    /// events after it with its key wait for it. `None`: go on with the next batch.
    async fn apply_batch(
        &self,
        prepared: &crate::commands::resync::Prepared,
        batch: Vec<Entry>,
    ) -> Option<Fate> {
        let resources = &prepared.port_app_config().resources;
        let handled = handle_all(self.processors, &batch, resources, self.workers).await;
        let mut ready: Vec<(&Entry, LiveEvent)> = Vec::new();
        let mut retry_first: Option<&Entry> = None;
        for (entry, outcome) in batch.iter().zip(handled) {
            match outcome {
                Handling::Done(event) => ready.push((entry, event)),
                Handling::Failed(HandleError::Permanent(e)) => {
                    self.dead_letter(entry, 1, e, "").await;
                }
                Handling::Failed(HandleError::Retryable(_)) => {
                    retry_first.get_or_insert(entry);
                }
                // Waits behind an event of its key that failed.
                Handling::Held => {}
            }
        }
        if let Some(fate) = self.apply_ready(prepared, ready).await {
            return Some(fate);
        }
        match retry_first {
            Some(entry) => Some(self.apply_one(prepared, entry).await),
            None => None,
        }
    }

    /// Applies handled events as one run and settles each. When the run fails as a whole (not
    /// for Port's unavailability), each event is tried on its own, so that only a failing one
    /// becomes a dead letter.
    async fn apply_ready(
        &self,
        prepared: &crate::commands::resync::Prepared,
        ready: Vec<(&Entry, LiveEvent)>,
    ) -> Option<Fate> {
        // Those that name nothing the mapping maps (any more) are done.
        let (ready, done): (Vec<_>, Vec<_>) = ready
            .into_iter()
            .partition(|(_, event)| !event.items.is_empty());
        self.forget(done.iter().map(|(entry, _)| entry.sequence).collect())
            .await;
        if ready.is_empty() {
            return None;
        }
        let events = ready.iter().map(|(_, event)| event.clone()).collect();
        let outcome = match prepared.apply_live(self.state, events).await {
            Err(ResyncError::Port(e)) => {
                tracing::warn!(error = %e, "Port is unavailable; live events wait");
                return Some(Fate::PortDown);
            }
            Ok(outcome) if outcome.run.status != port_agent_state::RunStatus::Failed => outcome,
            failed => {
                let why = match failed {
                    Err(e) => e.to_string(),
                    Ok(outcome) => outcome.run.notes.join("; "),
                };
                tracing::warn!(error = %why, events = ready.len(), "live events not applied together; trying each on its own");
                for (entry, _) in &ready {
                    match self.apply_one(prepared, entry).await {
                        fate @ (Fate::PortDown | Fate::Stopped) => return Some(fate),
                        Fate::Applied | Fate::DeadLetter => {}
                    }
                }
                return None;
            }
        };
        let mut applied = Vec::new();
        for ((entry, event), errors) in ready.iter().zip(outcome.event_errors) {
            let kind = &event.items[0].kind;
            if errors.is_empty() {
                applied.push(entry.sequence);
                self.count_applied(entry, kind);
            } else {
                // Items that failed to map or that Port refused fail the same way again: a
                // dead letter at once (what it could apply is applied), for an operator to see.
                self.dead_letter(entry, 1, errors.join("; "), kind).await;
            }
        }
        tracing::info!(
            first_sequence = applied.first().copied(),
            run = outcome.run.id,
            events = applied.len(),
            upserted = outcome.run.totals.upserted,
            unchanged = outcome.run.totals.unchanged,
            deleted = outcome.run.totals.deleted,
            "live events applied"
        );
        self.forget(applied).await;
        None
    }

    fn count_applied(&self, entry: &Entry, kind: &str) {
        self.metrics.live_event("applied", entry.path(), kind);
        if let Some(opened) = entry.opened() {
            let now = jiff::Timestamp::now().as_millisecond();
            self.metrics
                .live_latency((now - opened.received_ms).max(0) as f64 / 1000.0);
        }
    }

    /// Takes applied events out of the inbox.
    async fn forget(&self, sequences: Vec<u64>) {
        forget(self.state, sequences).await;
    }

    async fn dead_letter(&self, entry: &Entry, attempts: u32, error: String, kind: &str) {
        tracing::error!(sequence = entry.sequence, error = %error, "a live event failed; it is a dead letter now (`port-agent state retry-dead-letters`)");
        self.metrics.live_event("dead_lettered", entry.path(), kind);
        let (state, sequence) = (self.state.clone(), entry.sequence);
        let _ = tokio::task::spawn_blocking(move || {
            state.inbox_dead_letter(sequence, attempts, &error)
        })
        .await;
    }

    /// One event on its own: applied and taken out of the inbox, or, after its attempts, a
    /// dead letter.
    async fn apply_one(&self, prepared: &crate::commands::resync::Prepared, entry: &Entry) -> Fate {
        let opened = entry.opened();
        let mut wait = FIRST_WAIT;
        let mut last_error = String::new();
        let mut kind = String::new();
        let mut attempts = 0;
        for attempt_number in 1..=ATTEMPTS {
            attempts = attempt_number;
            match attempt(
                self.processors,
                opened.as_ref(),
                prepared,
                self.state,
                &mut kind,
            )
            .await
            {
                Attempt::Done(applied) => {
                    self.forget(vec![entry.sequence]).await;
                    if applied {
                        self.count_applied(entry, &kind);
                    }
                    return Fate::Applied;
                }
                Attempt::PortDown(e) => {
                    // It waits, first in line, until Port answers again.
                    tracing::warn!(sequence = entry.sequence, error = %e, "Port is unavailable; live events wait");
                    return Fate::PortDown;
                }
                Attempt::Permanent(e) => {
                    last_error = e;
                    break;
                }
                Attempt::Retry(e) => last_error = e,
            }
            tracing::warn!(sequence = entry.sequence, attempt = attempt_number, error = %last_error, "live event not applied; retrying");
            if attempt_number < ATTEMPTS {
                tokio::select! {
                    () = self.stop.cancelled() => return Fate::Stopped,
                    () = tokio::time::sleep(wait) => {}
                }
                wait *= 2;
            }
        }
        self.dead_letter(entry, attempts, last_error, &kind).await;
        Fate::DeadLetter
    }
}

/// Tells the metrics how many events wait and when the oldest came.
pub(crate) async fn report_inbox(state: &Arc<StateStore>, metrics: &Metrics) {
    let reader = state.clone();
    let read = tokio::task::spawn_blocking(move || {
        let (waiting, _) = reader.inbox_depth()?;
        let oldest = reader.inbox_pending(1)?;
        Ok::<_, port_agent_state::StateError>((waiting, oldest))
    })
    .await;
    if let Ok(Ok((waiting, oldest))) = read {
        let received = oldest
            .first()
            .and_then(|(_, bytes)| open_envelope(bytes))
            .map(|o| o.received_ms);
        metrics.inbox_waiting(waiting, received);
    }
}

/// Resync requests `sequences` were served (or cannot be, with WEBHOOKS_ONLY): out of the inbox.
pub(crate) async fn resync_done(state: &Arc<StateStore>, sequences: Vec<u64>) {
    forget(state, sequences).await;
}

/// Takes `sequences` out of the inbox (applied, or served).
async fn forget(state: &Arc<StateStore>, sequences: Vec<u64>) {
    if sequences.is_empty() {
        return;
    }
    let state = state.clone();
    let _ = tokio::task::spawn_blocking(move || state.inbox_done(&sequences)).await;
}

/// What handling one queued entry came to.
enum Handling {
    Done(LiveEvent),
    Failed(HandleError),
    /// Not tried: an earlier event with its ordering key failed and must go first.
    Held,
}

/// Handles `entries` (see [`event_of`]): those with one ordering key one after another in
/// arrival order, different keys (at most `workers`) at once. All entries without a key share
/// one line. After a failure that may pass, the rest of its line is held.
async fn handle_all(
    processors: &Processors,
    entries: &[Entry],
    resources: &[ResourceConfig],
    workers: usize,
) -> Vec<Handling> {
    use futures_util::StreamExt;
    let mut lines: Vec<(Option<&str>, Vec<usize>)> = Vec::new();
    let opened: Vec<Option<Opened<'_>>> = entries.iter().map(Entry::opened).collect();
    for (at, entry) in opened.iter().enumerate() {
        let key = entry.as_ref().and_then(|o| o.ordering_key);
        match lines.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(at),
            None => lines.push((key, vec![at])),
        }
    }
    let opened = &opened;
    let handled: Vec<Vec<(usize, Handling)>> = futures_util::stream::iter(lines)
        .map(|(_, members)| async move {
            let mut out = Vec::with_capacity(members.len());
            let mut blocked = false;
            for at in members {
                if blocked {
                    out.push((at, Handling::Held));
                    continue;
                }
                let handling = match &opened[at] {
                    None => Handling::Failed(HandleError::Permanent(
                        "the inbox entry is not readable".to_owned(),
                    )),
                    Some(entry) => match event_of(processors, entry, resources).await {
                        Ok(events) => Handling::Done(events),
                        Err(e) => Handling::Failed(e),
                    },
                };
                blocked = matches!(handling, Handling::Failed(HandleError::Retryable(_)));
                out.push((at, handling));
            }
            out
        })
        .buffer_unordered(workers.max(1))
        .collect()
        .await;
    let mut by_entry: Vec<Option<Handling>> = (0..entries.len()).map(|_| None).collect();
    for (at, handling) in handled.into_iter().flatten() {
        by_entry[at] = Some(handling);
    }
    by_entry
        .into_iter()
        .map(|h| h.unwrap_or(Handling::Held))
        .collect()
}

/// The live event a queued entry makes: its processor's items for each resource of the
/// mapping, within [`HANDLE_DEADLINE`].
async fn event_of(
    processors: &Processors,
    opened: &Opened<'_>,
    resources: &[ResourceConfig],
) -> Result<LiveEvent, HandleError> {
    let processor = processors
        .iter()
        .find(|p| p.name() == opened.processor)
        .ok_or_else(|| {
            HandleError::Permanent(format!(
                "no live-event processor is named {:?} any more",
                opened.processor
            ))
        })?;
    let handle_every_resource = async {
        let mut event = LiveEvent::default();
        for (index, resource) in resources.iter().enumerate() {
            let handled = processor.handle(opened.payload, resource).await?;
            if !handled.updated.is_empty() || !handled.deleted.is_empty() {
                event.items.push(LiveItems {
                    kind: resource.kind.clone(),
                    resource: Some(index),
                    upsert: handled.updated,
                    delete: handled.deleted,
                });
            }
        }
        Ok(event)
    };
    tokio::time::timeout(HANDLE_DEADLINE, handle_every_resource)
        .await
        .unwrap_or_else(|_| {
            Err(HandleError::Retryable(format!(
                "handling took longer than {} s",
                HANDLE_DEADLINE.as_secs()
            )))
        })
}

/// What one attempt at a queued event came to.
enum Attempt {
    /// Applied (`false`: it names nothing the mapping maps any more): out of the inbox.
    Done(bool),
    /// It will fail the same way again: a dead letter now.
    Permanent(String),
    /// Worth another attempt.
    Retry(String),
    /// Port is unavailable: not the event's fault.
    PortDown(String),
}

/// One attempt at one entry: its events from its processor, applied as one run.
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
    let resources = &prepared.port_app_config().resources;
    let event = match event_of(processors, opened, resources).await {
        Ok(event) => event,
        Err(HandleError::Permanent(e)) => return Attempt::Permanent(e),
        Err(HandleError::Retryable(e)) => return Attempt::Retry(e),
    };
    let Some(first) = event.items.first() else {
        return Attempt::Done(false);
    };
    kind.clone_from(&first.kind);
    match prepared.apply_live(state, vec![event]).await {
        Ok(outcome) if outcome.run.status == port_agent_state::RunStatus::Failed => {
            Attempt::Retry(outcome.run.notes.join("; "))
        }
        Ok(outcome) => {
            let errors: Vec<String> = outcome.event_errors.into_iter().flatten().collect();
            if errors.is_empty() {
                Attempt::Done(true)
            } else {
                Attempt::Permanent(errors.join("; "))
            }
        }
        Err(ResyncError::Port(e)) => Attempt::PortDown(e.to_string()),
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use port_agent_core::webhook::{HandleFuture, Handled};

    use super::*;

    #[test]
    fn envelopes_keep_the_ordering_key_and_the_resync_request_and_old_ones_still_open() {
        let event = AcceptedEvent {
            delivery_id: None,
            kinds: vec!["service".into()],
            payload: b"{\"a\":1}".to_vec(),
            ordering_key: Some("pull_request-7".into()),
            requests_resync: true,
        };
        let bytes = envelope("gh", "/hooks/gh", &event);
        let opened = open_envelope(&bytes).unwrap();
        assert_eq!((opened.processor, opened.path), ("gh", "/hooks/gh"));
        assert_eq!(opened.ordering_key, Some("pull_request-7"));
        assert!(opened.requests_resync);
        assert_eq!(opened.payload, b"{\"a\":1}");
        let keyless = AcceptedEvent {
            ordering_key: None,
            requests_resync: false,
            ..event
        };
        let opened_keyless = envelope("gh", "/hooks/gh", &keyless);
        let opened = open_envelope(&opened_keyless).unwrap();
        assert_eq!((opened.ordering_key, opened.requests_resync), (None, false));
        assert_eq!(opened.payload, b"{\"a\":1}");
        // Version 2, as an agent before ordering keys queued it.
        let mut v2 = vec![ENVELOPE_V2];
        v2.extend_from_slice(&5i64.to_le_bytes());
        v2.push(2);
        v2.extend_from_slice(b"gh{}");
        let opened = open_envelope(&v2).unwrap();
        assert_eq!(opened.received_ms, 5);
        assert_eq!((opened.processor, opened.payload), ("gh", &b"{}"[..]));
        assert_eq!(opened.ordering_key, None);
        for cut in 0..bytes.len() - event_payload_len() {
            assert!(open_envelope(&bytes[..cut]).is_none(), "cut at {cut}");
        }
    }

    fn event_payload_len() -> usize {
        b"{\"a\":1}".len()
    }

    /// A processor whose events (`key/n`, or `key/n/retry` to fail) take a while to handle;
    /// it records what it handled and how many it handled at once.
    #[derive(Debug, Default, Clone)]
    struct Slow {
        seen: Arc<Seen>,
    }

    #[derive(Debug, Default)]
    struct Seen {
        log: Mutex<Vec<String>>,
        running: Mutex<Vec<String>>,
        most_at_once: Mutex<usize>,
        same_key_at_once: Mutex<bool>,
    }

    impl WebhookProcessor for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn should_process(&self, _: &WebhookRequest<'_>) -> bool {
            true
        }
        fn accept(&self, _: &WebhookRequest<'_>) -> Result<AcceptedEvent, Refusal> {
            unreachable!("events are queued by the test")
        }
        fn handle<'a>(&'a self, payload: &'a [u8], _: &'a ResourceConfig) -> HandleFuture<'a> {
            let seen = &self.seen;
            Box::pin(async move {
                let id = String::from_utf8(payload.to_vec()).unwrap();
                let key = id.split('/').next().unwrap().to_owned();
                {
                    let mut running = seen.running.lock().unwrap();
                    if running.contains(&key) {
                        *seen.same_key_at_once.lock().unwrap() = true;
                    }
                    running.push(key.clone());
                    let mut most = seen.most_at_once.lock().unwrap();
                    *most = (*most).max(running.len());
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
                seen.running.lock().unwrap().retain(|k| *k != key);
                seen.log.lock().unwrap().push(id.clone());
                if id.ends_with("/retry") {
                    return Err(HandleError::Retryable("the vendor is down".into()));
                }
                Ok(Handled::default())
            })
        }
    }

    fn entry(sequence: u64, id: &str) -> Entry {
        let key = id.split('/').next().unwrap();
        let event = AcceptedEvent {
            delivery_id: None,
            kinds: vec!["service".into()],
            payload: id.as_bytes().to_vec(),
            ordering_key: (key != "none").then(|| key.to_owned()),
            requests_resync: false,
        };
        Entry {
            sequence,
            bytes: envelope("slow", "/integration/webhook", &event),
        }
    }

    #[tokio::test]
    async fn events_with_one_ordering_key_are_handled_in_turn_and_other_keys_at_once() {
        let slow = Slow::default();
        let processors: Processors = Arc::new(vec![Box::new(slow.clone())]);
        let slow = &slow.seen;
        let ids = [
            "a/1",
            "b/1",
            "none/1",
            "a/2",
            "c/1",
            "b/2/retry",
            "none/2",
            "a/3",
            "b/3",
            "c/2",
        ];
        let entries: Vec<Entry> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| entry(i as u64 + 1, id))
            .collect();
        let mapping = port_agent_core::mapping::PortAppConfig::from_yaml(
            "resources: [{kind: service, selector: {query: 'true'}, port: {entity: {mappings: {identifier: .id, blueprint: '\"s\"'}}}}]",
        )
        .unwrap();
        let handled = handle_all(&processors, &entries, &mapping.resources, 3).await;
        assert!(!*slow.same_key_at_once.lock().unwrap());
        assert_eq!(
            *slow.most_at_once.lock().unwrap(),
            3,
            "bounded by the workers"
        );
        // Each key's events in arrival order; b/3 waits behind b/2, whose handling may pass later.
        let log = slow.log.lock().unwrap().clone();
        for key in ["a", "b", "c", "none"] {
            let of_key: Vec<&String> = log.iter().filter(|id| id.starts_with(key)).collect();
            let expected: Vec<&str> = ids
                .iter()
                .copied()
                .filter(|id| id.starts_with(key) && *id != "b/3")
                .collect();
            assert_eq!(of_key, expected, "{log:?}");
        }
        let outcomes: Vec<&str> = handled
            .iter()
            .map(|h| match h {
                Handling::Done(_) => "done",
                Handling::Failed(_) => "failed",
                Handling::Held => "held",
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                "done", "done", "done", "done", "done", "failed", "done", "done", "held", "done"
            ]
        );
    }
}
