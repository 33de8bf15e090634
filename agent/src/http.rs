//! The HTTP surface of `port-agent run`, as Ocean's: `/health/live`, `/health/ready`,
//! `/metrics` (Prometheus text format) and, with the WEBHOOK listener, `POST /resync`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use port_agent_core::resync::ResyncReport;
use port_agent_state::{RunCounters, RunStatus};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
}

impl Metrics {
    fn recorded(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
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
        out
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    resync: Option<Arc<Notify>>,
}

/// The routes; `resync` is the WEBHOOK listener's trigger (`POST /resync`), when enabled.
pub fn router(metrics: Arc<Metrics>, resync: Option<Arc<Notify>>) -> Router {
    let webhook = resync.is_some();
    let router = Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text));
    let router = if webhook {
        router.route("/resync", post(request_resync))
    } else {
        router
    };
    router.with_state(Shared { metrics, resync })
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
/// coalesce into one run.
async fn request_resync(State(shared): State<Shared>) -> impl IntoResponse {
    if let Some(resync) = &shared.resync {
        resync.notify_one();
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"ok": true})),
    )
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let shutdown = async move { stop.cancelled().await };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
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
