//! The HTTP surface of `port-agent run`, as Ocean's: `/health/live`, `/health/ready`,
//! `/metrics` (Prometheus text format) and, with the WEBHOOK listener, `POST /resync`; and
//! `/state/inspect` for `port-agent state inspect` on this machine while the agent runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use port_agent_core::Secret;
use port_agent_core::resync::ResyncReport;
use port_agent_state::{RunCounters, RunStatus, StateStore};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::commands::state::{InspectFilter, inspect_report};

/// What the service has done, for `/metrics` and `/health/ready`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Set once the first run has ended: before it, the agent has not caught up with its data.
    ready: AtomicBool,
    in_progress: AtomicBool,
    recorded: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    runs: BTreeMap<&'static str, u64>,
    totals: RunCounters,
    last_duration_seconds: f64,
    last_finished_unix: f64,
    state_entities: u64,
    /// Set while the agent cannot work (e.g. its state file cannot be written).
    unready: Option<String>,
    /// Live events by (outcome, kind).
    live_events: BTreeMap<(&'static str, String, String), u64>,
    /// Events waiting in the inbox, as last seen.
    inbox_waiting: u64,
    inbox_oldest_received_ms: Option<i64>,
    /// Seconds from an event's receipt to Port's acknowledgement: counts per bucket, sum.
    live_latency: [u64; LATENCY_BUCKETS.len()],
    live_latency_sum: f64,
    live_latency_count: u64,
}

/// Upper bounds (seconds) of the receipt-to-acknowledgement histogram.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

impl Metrics {
    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready without a run (WEBHOOKS_ONLY: the agent works once its state is open).
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn run_started(&self) {
        self.in_progress.store(true, Ordering::Relaxed);
    }

    /// A run ended; `report` is `None` when it could not start (config, Port unreachable).
    /// `unready`: why the agent cannot work now (its state cannot be written), for
    /// `/health/ready`.
    pub fn run_ended(
        &self,
        report: Option<&ResyncReport>,
        state_entities: Option<u64>,
        unready: Option<String>,
    ) {
        {
            let mut recorded = self.recorded();
            recorded.unready = unready;
            match report {
                Some(report) => {
                    *recorded
                        .runs
                        .entry(RunStatus::as_str(report.run.status))
                        .or_default() += 1;
                    recorded.totals += report.run.totals;
                    recorded.last_duration_seconds = report.duration.as_secs_f64();
                }
                None => *recorded.runs.entry("not_started").or_default() += 1,
            }
            recorded.last_finished_unix = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
            if let Some(entities) = state_entities {
                recorded.state_entities = entities;
            }
        }
        self.in_progress.store(false, Ordering::Relaxed);
        self.ready.store(true, Ordering::Relaxed);
    }

    /// A live event's outcome (`received`, `accepted`, `rejected`, `ignored`, `duplicate`,
    /// `refused_full`, `applied`, `dead_lettered`) on route `path` for `kind` (empty when
    /// unknown).
    pub fn live_event(&self, outcome: &'static str, path: &str, kind: &str) {
        *self
            .recorded()
            .live_events
            .entry((outcome, path.to_owned(), kind.to_owned()))
            .or_default() += 1;
    }

    /// How many events wait in the inbox, and when the oldest was received (ms since the
    /// epoch): its age is worked out when the metrics are read, so it grows while the agent
    /// is busy applying.
    pub fn inbox_waiting(&self, waiting: u64, oldest_received_ms: Option<i64>) {
        let mut recorded = self.recorded();
        recorded.inbox_waiting = waiting;
        recorded.inbox_oldest_received_ms = oldest_received_ms;
    }

    /// An event was queued at `received_ms`; `waiting` wait now.
    pub fn inbox_queued(&self, waiting: u64, received_ms: i64) {
        let mut recorded = self.recorded();
        recorded.inbox_waiting = waiting;
        recorded.inbox_oldest_received_ms.get_or_insert(received_ms);
    }

    /// An event reached Port `seconds` after it was received.
    pub fn live_latency(&self, seconds: f64) {
        let mut recorded = self.recorded();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|b| seconds <= *b) {
            recorded.live_latency[bucket] += 1;
        }
        recorded.live_latency_sum += seconds;
        recorded.live_latency_count += 1;
    }

    fn render(&self) -> String {
        let recorded = self.recorded();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let runs: Vec<(String, f64)> = [
            "completed",
            "completed_with_errors",
            "failed",
            "aborted",
            "not_started",
        ]
        .iter()
        .map(|s| {
            let n = recorded.runs.get(s).copied().unwrap_or(0);
            (format!("{{status=\"{s}\"}}"), n as f64)
        })
        .collect();
        metric(
            "port_agent_runs_total",
            "counter",
            "Resyncs ended, by status.",
            &runs,
        );
        let t = &recorded.totals;
        let entities: Vec<(String, f64)> = [
            ("fetched", t.fetched),
            ("mapped", t.mapped),
            ("unchanged", t.unchanged),
            ("upserted", t.upserted),
            ("failed", t.failed),
            ("deleted", t.deleted),
        ]
        .iter()
        .map(|(outcome, n)| (format!("{{outcome=\"{outcome}\"}}"), *n as f64))
        .collect();
        metric(
            "port_agent_entities_total",
            "counter",
            "Items fetched and entities mapped, unchanged, upserted, refused and deleted, over all runs.",
            &entities,
        );
        let gauge = |v: f64| [(String::new(), v)];
        metric(
            "port_agent_run_in_progress",
            "gauge",
            "1 while a resync runs.",
            &gauge(f64::from(u8::from(
                self.in_progress.load(Ordering::Relaxed),
            ))),
        );
        metric(
            "port_agent_last_run_duration_seconds",
            "gauge",
            "How long the last resync took.",
            &gauge(recorded.last_duration_seconds),
        );
        metric(
            "port_agent_last_run_end_timestamp_seconds",
            "gauge",
            "When the last resync ended (Unix time).",
            &gauge(recorded.last_finished_unix),
        );
        metric(
            "port_agent_state_entities",
            "gauge",
            "Entities the state believes are in Port.",
            &gauge(recorded.state_entities as f64),
        );
        let escape = |s: &str| {
            s.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let live: Vec<(String, f64)> = recorded
            .live_events
            .iter()
            .map(|((outcome, path, kind), n)| {
                (
                    format!(
                        "{{outcome=\"{outcome}\",path=\"{}\",kind=\"{}\"}}",
                        escape(path),
                        escape(kind)
                    ),
                    *n as f64,
                )
            })
            .collect();
        metric(
            "port_agent_live_events_total",
            "counter",
            "Live events by outcome, route and kind.",
            &live,
        );
        metric(
            "port_agent_inbox_waiting",
            "gauge",
            "Live events accepted and not yet applied.",
            &gauge(recorded.inbox_waiting as f64),
        );
        metric(
            "port_agent_inbox_oldest_age_seconds",
            "gauge",
            "How long the oldest live event waiting in the inbox has waited.",
            &gauge(recorded.inbox_oldest_received_ms.map_or(0.0, |at| {
                (jiff::Timestamp::now().as_millisecond() - at).max(0) as f64 / 1000.0
            })),
        );
        let mut cumulative = 0;
        let mut buckets: Vec<(String, f64)> = LATENCY_BUCKETS
            .iter()
            .zip(recorded.live_latency)
            .map(|(bound, n)| {
                cumulative += n;
                (format!("_bucket{{le=\"{bound}\"}}"), cumulative as f64)
            })
            .collect();
        buckets.push((
            "_bucket{le=\"+Inf\"}".to_owned(),
            recorded.live_latency_count as f64,
        ));
        buckets.push(("_sum".to_owned(), recorded.live_latency_sum));
        buckets.push(("_count".to_owned(), recorded.live_latency_count as f64));
        metric(
            "port_agent_live_event_ack_seconds",
            "histogram",
            "Seconds from a live event's receipt to Port's acknowledgement.",
            &buckets,
        );
        out
    }
}

/// The state as the service holds it between runs: `None` while it cannot be opened.
pub type SharedState = Arc<Mutex<Option<Arc<StateStore>>>>;

/// What the routes share.
#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    resync: Option<Arc<Notify>>,
    resync_token: Option<Secret>,
    state: SharedState,
    webhooks: Option<crate::live::WebhookRoute>,
}

/// What the routes serve: `resync` is the WEBHOOK listener's trigger (`POST /resync`), when
/// enabled, guarded by `resync_token` when one is set.
#[derive(Debug, Clone)]
pub struct Routes {
    pub metrics: Arc<Metrics>,
    pub resync: Option<Arc<Notify>>,
    pub resync_token: Option<Secret>,
    pub state: SharedState,
    /// `POST /integration/webhook` and the other routes the integration's processors name:
    /// live events.
    pub webhooks: Option<crate::live::WebhookRoute>,
}

pub fn router(routes: Routes) -> Router {
    let webhook = routes.resync.is_some();
    let router = Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/state/inspect", get(state_inspect))
        .route("/state/retry-dead-letters", post(retry_dead_letters));
    let router = if webhook {
        router.route("/resync", post(request_resync))
    } else {
        router
    };
    // Each route an integration's processors answer on (`/integration/webhook` at least).
    let paths: std::collections::BTreeSet<&'static str> = routes
        .webhooks
        .iter()
        .flat_map(|w| w.processors.iter())
        .flat_map(|p| p.paths().iter().copied())
        .chain(
            routes
                .webhooks
                .as_ref()
                .map(|_| port_agent_core::webhook::DEFAULT_PATH),
        )
        .collect();
    let router = paths.into_iter().fold(router, |router, path| {
        router.route(path, post(integration_webhook))
    });
    router.with_state(Shared {
        metrics: routes.metrics,
        resync: routes.resync,
        resync_token: routes.resync_token,
        state: routes.state,
        webhooks: routes.webhooks,
    })
}

async fn integration_webhook(
    State(shared): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match &shared.webhooks {
        Some(route) => crate::live::receive(route, uri.path(), &headers, &body).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn ready(State(shared): State<Shared>) -> impl IntoResponse {
    if let Some(why) = shared.metrics.recorded().unready.clone() {
        return (StatusCode::SERVICE_UNAVAILABLE, why);
    }
    if shared.metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the first resync has not ended yet".to_owned(),
        )
    }
}

async fn metrics_text(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

/// Ocean's WEBHOOK listener: Port asks for a resync. Requests arriving while one is pending
/// coalesce into one run. With `http.resync_token`, only a request carrying it
/// (`Authorization: Bearer TOKEN`) is heard.
async fn request_resync(State(shared): State<Shared>, headers: HeaderMap) -> impl IntoResponse {
    if let Some(token) = &shared.resync_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !same_secret(given.as_bytes(), token.expose().as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(
                    serde_json::json!({"ok": false, "error": "a valid Authorization: Bearer token is required"}),
                ),
            );
        }
    }
    if let Some(resync) = &shared.resync {
        resync.notify_one();
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"ok": true})),
    )
}

/// Compares without stopping at the first difference, so timing tells nothing of the token.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// The open state, for a client on this machine; otherwise the answer to give.
fn local_state(
    shared: &Shared,
    peer: SocketAddr,
) -> Result<Arc<StateStore>, (StatusCode, &'static str)> {
    if !peer.ip().is_loopback() {
        return Err((StatusCode::FORBIDDEN, "only from this machine"));
    }
    let state = shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    state.ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "the state is not open (see /health/ready)",
    ))
}

/// `state inspect` of a running agent (which holds the state file): for clients on this
/// machine only.
async fn state_inspect(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(filter): Query<InspectFilter>,
) -> Response {
    let state = match local_state(&shared, peer) {
        Ok(state) => state,
        Err(refused) => return refused.into_response(),
    };
    match tokio::task::spawn_blocking(move || inspect_report(&state, &filter)).await {
        Ok(Ok(report)) => axum::Json(report).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `state retry-dead-letters` of a running agent: its dead letters back in the inbox, and the
/// inbox drained. For clients on this machine only.
async fn retry_dead_letters(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let state = match local_state(&shared, peer) {
        Ok(state) => state,
        Err(refused) => return refused.into_response(),
    };
    match tokio::task::spawn_blocking(move || state.retry_dead_letters()).await {
        Ok(Ok(retried)) => {
            if let Some(webhooks) = &shared.webhooks {
                webhooks.arrived.notify_one();
            }
            axum::Json(serde_json::json!({"retried": retried})).into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// A file beside the state naming the address the running agent serves on, so that `state
/// inspect` finds it (the agent holds the state file locked). Removed when dropped.
#[derive(Debug)]
pub struct Beacon(Option<std::path::PathBuf>);

impl Beacon {
    fn path(state: &std::path::Path) -> std::path::PathBuf {
        let mut name = state.file_name().unwrap_or_default().to_owned();
        name.push(".http");
        state.with_file_name(name)
    }

    /// Writes `address` (as this machine reaches it) beside `state`; a failure only costs
    /// `state inspect` its way to a running agent.
    pub fn write(state: &std::path::Path, address: &str) -> Self {
        let path = Self::path(state);
        let reachable = loopback_side(address).unwrap_or_else(|| address.to_owned());
        match std::fs::write(&path, reachable) {
            Ok(()) => Self(Some(path)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot note the HTTP address for state inspect");
                Self(None)
            }
        }
    }

    /// The address a running agent on `state` noted, if any.
    pub fn read(state: &std::path::Path) -> Option<String> {
        let text = std::fs::read_to_string(Self::path(state)).ok()?;
        Some(text.trim().to_owned())
    }
}

impl Drop for Beacon {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `address` with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback: where a client on
/// this machine connects.
pub fn loopback_side(address: &str) -> Option<String> {
    let mut address: SocketAddr = address.parse().ok()?;
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Some(address.to_string())
}

/// Connections served at once; past this, new ones are closed at once (a flood of slow
/// clients cannot take the health checks down).
const MAX_CONNECTIONS: usize = 256;
/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On stop, requests in progress get this long to finish.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves until `stop` is cancelled: one request per connection, bounded in number and in the
/// time a client may take to send it; on stop, what is in progress gets a bounded time.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let closing = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_CONNECTIONS,
                "too many HTTP connections; closing a new one"
            );
            continue;
        };
        let router = router.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request)
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, connection).await;
                }
            }
        });
    }
    closing.cancel();
    // Every connection holds a permit: all back means all done.
    let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(DRAIN, permits.acquire_many(all)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prometheus_text_with_every_series() {
        let metrics = Metrics::default();
        metrics.run_ended(None, Some(12), None);
        let text = metrics.render();
        assert!(
            text.contains("# TYPE port_agent_runs_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("port_agent_runs_total{status=\"not_started\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("port_agent_runs_total{status=\"completed\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("port_agent_entities_total{outcome=\"upserted\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("port_agent_state_entities 12\n"), "{text}");
        assert!(text.contains("port_agent_run_in_progress 0\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit_once(' ').unwrap().1;
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}

#[cfg(test)]
mod webhook_route_tests {
    use port_agent_core::webhook::{
        AcceptedEvent, HandleFuture, Handled, Refusal, WebhookProcessor, WebhookRequest,
    };
    use tower::ServiceExt;

    use super::*;

    /// A processor on a route of its own, as GitHub's would be.
    #[derive(Debug)]
    struct OwnRoute;

    impl WebhookProcessor for OwnRoute {
        fn name(&self) -> &'static str {
            "own-route"
        }
        fn paths(&self) -> &[&'static str] {
            &["/hooks/vendor"]
        }
        fn should_process(&self, _: &WebhookRequest<'_>) -> bool {
            true
        }
        fn accept(&self, request: &WebhookRequest<'_>) -> Result<AcceptedEvent, Refusal> {
            Err(Refusal::Invalid(format!("seen on {}", request.path)))
        }
        fn handle<'a>(
            &'a self,
            _: &'a [u8],
            _: &'a port_agent_core::mapping::config::ResourceConfig,
        ) -> HandleFuture<'a> {
            Box::pin(std::future::ready(Ok(Handled::default())))
        }
    }

    async fn status_of(router: &Router, path: &str) -> (StatusCode, String) {
        let request = axum::http::Request::post(path)
            .body(axum::body::Body::from("{}"))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_processor_s_own_routes_are_served_and_reach_only_it() {
        let metrics = Arc::new(Metrics::default());
        let state: SharedState = Arc::new(std::sync::Mutex::new(None));
        let router = router(Routes {
            metrics: metrics.clone(),
            resync: None,
            resync_token: None,
            state: state.clone(),
            webhooks: Some(crate::live::WebhookRoute {
                metrics,
                processors: Arc::new(vec![Box::new(OwnRoute)]),
                kinds: Arc::new(std::collections::BTreeSet::new()),
                inbox_capacity: 10,
                state,
                arrived: Arc::new(Notify::new()),
                inbox: crate::live::InboxWriter::start(),
            }),
        });
        let (status, body) = status_of(&router, "/hooks/vendor").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("seen on /hooks/vendor"), "{body}");
        // The default route stays, and no processor takes what reaches it here.
        let (status, body) = status_of(&router, "/integration/webhook").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("ignored"), "{body}");
        assert_eq!(
            status_of(&router, "/hooks/other").await.0,
            StatusCode::NOT_FOUND
        );
    }
}
