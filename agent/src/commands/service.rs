//! `port-agent run`: the agent as a service. Resyncs when started, when someone asks for one in
//! Port (POLLING: Ocean's poll of the integration's resync request; WEBHOOK: `POST /resync`) and
//! every `scheduled_resync_interval` minutes; one run at a time; SIGTERM ends the run in progress
//! cleanly (as aborted, with what Port acknowledged recorded) and the service with exit 0.
//! Health and metrics are served over HTTP (`http.listen`).
//!
//! The config and mapping are read again for each run, so an edit applies to the next run without
//! a restart; the state file stays open (and locked) for the service's whole life.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use port_agent_core::port::PortClient;
use port_agent_core::resync::ResyncOptions;
use port_agent_state::{RunStatus, StateStore};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::commands::resync::{open_state, prepare, print, stop_on_signal};
use crate::config::ListenerType;
use crate::http::{self, Metrics, SharedState};
use crate::live::{self, Drained, Processors, WebhookRoute};
use crate::notify::Notifier;

/// First wait before the inbox is tried again while Port cannot take live events, and the
/// longest.
const REDRAIN_FIRST: Duration = Duration::from_secs(2);
const REDRAIN_MAX: Duration = Duration::from_secs(60);

/// Ocean's default POLLING interval.
const DEFAULT_POLL_SECONDS: u64 = 60;

/// Why a run starts, as recorded in the run history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Start,
    PortRequest,
    Webhook,
    Schedule,
    /// SIGHUP: the configuration was changed.
    Reload,
    /// A live event asked for one (Ocean's ACTION processors).
    EventRequest,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::PortRequest => "port-request",
            Trigger::Webhook => "webhook",
            Trigger::Schedule => "schedule",
            Trigger::Reload => "reload",
            Trigger::EventRequest => "event-request",
        }
    }
}

/// What the service shares between its loop, its runs and its HTTP server.
struct Service<'a> {
    config_path: &'a Path,
    /// The open state file, also read by `/state/inspect`. `None` after a run could not write
    /// it (a full disk): redb refuses every write after an I/O error, so the next run opens it
    /// again.
    state: SharedState,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
    /// The integration's live-event processors.
    processors: Processors,
    /// Queued events handled at once (different ordering keys).
    workers: usize,
    /// False with WEBHOOKS_ONLY: a live event's request for a resync is not served.
    resyncs: bool,
}

pub async fn serve(config_path: &Path) -> Result<(), Failure> {
    let first = prepare(config_path, &[]).await?;
    let listener = first.listener.listener;
    if !matches!(
        listener,
        ListenerType::Polling
            | ListenerType::Webhook
            | ListenerType::Once
            | ListenerType::WebhooksOnly
    ) {
        return Err(Failure::Config(anyhow!(
            "{}: event_listener.type {listener:?} is not supported yet; use POLLING, WEBHOOK, WEBHOOKS_ONLY or ONCE",
            config_path.display()
        )));
    }
    // WEBHOOKS_ONLY: live events, no resync at all (Ocean's listener of that name).
    let resyncs = listener != ListenerType::WebhooksOnly;
    let state = open_state(&first.state_path, &first.identity).await?;
    let service = Service {
        config_path,
        state: Arc::new(std::sync::Mutex::new(Some(state))),
        stop: CancellationToken::new(),
        metrics: Arc::new(Metrics::default()),
        processors: Arc::new(first.integration.webhook_processors(
            &port_agent_core::webhook::WebhookSettings {
                secret: first.push.secret.clone(),
                allow_unsigned: first.push.allow_unsigned,
            },
        )),
        workers: first.push.workers,
        resyncs,
    };
    let reload = Arc::new(Notify::new());
    let signals = tokio::spawn(stop_on_signal(service.stop.clone(), Some(reload.clone())));
    // systemd (Type=notify): ready once the state is open (above) and Port answers; watchdog
    // pings while the runtime runs.
    let notifier = Arc::new(Notifier::from_env());
    let systemd = tokio::spawn(tell_systemd(
        notifier.clone(),
        first.client.clone(),
        first.setup.identifier.clone(),
        service.stop.clone(),
    ));
    let outcome = if listener == ListenerType::Once {
        match service.run_once(Trigger::Start).await {
            Some(RunStatus::Completed) => Ok(()),
            _ => Err(Failure::Run(anyhow!("the resync did not complete"))),
        }
    } else {
        let webhook = (listener == ListenerType::Webhook).then(|| Arc::new(Notify::new()));
        let address = first.http_listen.clone();
        let bound = tokio::net::TcpListener::bind(&address).await.map_err(|e| {
            Failure::Run(anyhow!("cannot serve HTTP on {address} (http.listen): {e}"))
        })?;
        // The bound address: with port 0 the system picked it, and this line tells.
        let serving = bound
            .local_addr()
            .map_or_else(|_| address.clone(), |a| a.to_string());
        tracing::info!(address = %serving, "serving /health/live, /health/ready, /metrics");
        // Where `state inspect` finds this agent while it holds the state file.
        let beacon = http::Beacon::write(&first.state_path, &serving);
        let arrived = Arc::new(Notify::new());
        let server = tokio::spawn(http::serve(
            bound,
            http::router(http::Routes {
                metrics: service.metrics.clone(),
                resync: webhook.clone(),
                resync_token: first.resync_token.clone(),
                state: service.state.clone(),
                webhooks: Some(WebhookRoute {
                    metrics: service.metrics.clone(),
                    processors: service.processors.clone(),
                    kinds: Arc::new(first.mapped_kinds()),
                    inbox_capacity: first.push.inbox_capacity,
                    state: service.state.clone(),
                    arrived: arrived.clone(),
                    inbox: live::InboxWriter::start(),
                }),
            }),
            service.stop.clone(),
        ));
        // What the loop needs from the config it started with; the rest (its mapping pool
        // among it) goes now: each run prepares its own.
        let polling = Polling {
            client: first.client.clone(),
            identifier: first.setup.identifier.clone(),
            enabled: listener == ListenerType::Polling,
            every: Duration::from_secs(
                first
                    .listener
                    .interval
                    .unwrap_or(DEFAULT_POLL_SECONDS)
                    .max(1),
            ),
        };
        let schedule = first
            .scheduled_resync_interval
            .filter(|_| resyncs)
            .map(|minutes| Duration::from_secs_f64(minutes * 60.0));
        let min_interval = first.min_resync_interval;
        if !resyncs {
            // No run sets Port up: the integration and its blueprints are made here.
            if let Err(e) = first.prepare_port().await {
                tracing::error!(error = %e, "cannot set up the integration and blueprints in Port");
            }
            // Ready as soon as live events can be applied: there is no first run to wait for.
            service.metrics.mark_ready();
        }
        drop(first);
        service
            .serve(Triggers {
                polling,
                schedule,
                webhook,
                reload: reload.clone(),
                min_interval,
                arrived,
            })
            .await;
        let _ = server.await;
        drop(beacon);
        Ok(())
    };
    notifier.notify("STOPPING=1");
    systemd.abort();
    signals.abort();
    outcome
}

/// `READY=1` as soon as Port answers (tried every 5 s until it does), then watchdog pings
/// until `stop`.
async fn tell_systemd(
    notifier: Arc<Notifier>,
    client: PortClient,
    identifier: String,
    stop: CancellationToken,
) {
    let watchdog = notifier.watchdog(stop.clone());
    let ready = async {
        loop {
            match client.get_integration(&identifier).await {
                Ok(_) => {
                    notifier.notify("READY=1");
                    tracing::info!("ready: the state is open and Port answers");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Port does not answer yet; not ready");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        }
    };
    tokio::join!(watchdog, ready);
}

impl Service<'_> {
    /// Resyncs at start, then whenever a resync is requested (in Port, or on `/resync`) or the
    /// schedule is due, until asked to stop. Requested runs start `min_interval` apart at
    /// least: requests meanwhile make one run when the time is up.
    async fn serve(&self, triggers: Triggers) {
        let Triggers {
            polling,
            schedule,
            webhook,
            reload,
            min_interval,
            arrived,
        } = triggers;
        // Events accepted before a restart are applied before anything else. While Port cannot
        // take them, the inbox is tried again every `redrain` (doubling up to a minute).
        let mut redrain = REDRAIN_FIRST;
        let mut next_drain = match self.drain_inbox().await {
            Drained::Paused => Some(Instant::now() + redrain),
            Drained::Empty | Drained::ResyncWanted(_) => None,
        };
        let poll_every = polling.every;
        // The request standing at start is served by the start run.
        let mut handled = if polling.enabled {
            polling.latest_request().await
        } else {
            None
        };
        let resyncs = self.resyncs;
        let mut pending = resyncs.then_some(Trigger::Start);
        let mut next_scheduled = schedule.map(|every| Instant::now() + every);
        let mut next_poll = Instant::now() + poll_every;
        let mut last_requested: Option<Instant> = None;
        // A requested run waiting for `min_interval` to pass, and when it may start.
        let mut deferred: Option<(Trigger, Instant)> = None;
        loop {
            if let Some(trigger) = pending.take() {
                self.run_once(trigger).await;
                next_scheduled = schedule.map(|every| Instant::now() + every);
                if matches!(
                    trigger,
                    Trigger::Webhook | Trigger::PortRequest | Trigger::Reload
                ) {
                    last_requested = Some(Instant::now());
                }
            }
            if self.stop.is_cancelled() {
                return;
            }
            let scheduled = async {
                match next_scheduled {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let requested = async {
                match &webhook {
                    Some(notify) => notify.notified().await,
                    None => std::future::pending().await,
                }
            };
            let polled = async {
                if polling.enabled {
                    tokio::time::sleep_until(next_poll).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let drain_due = async {
                match next_drain {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let due = async {
                match deferred {
                    Some((_, at)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let defer = |trigger: Trigger, deferred: &mut Option<(Trigger, Instant)>| {
                let at = last_requested.map_or_else(Instant::now, |last| last + min_interval);
                deferred.get_or_insert((trigger, at));
            };
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = scheduled => pending = Some(Trigger::Schedule),
                () = requested => defer(Trigger::Webhook, &mut deferred),
                () = reload.notified(), if resyncs => defer(Trigger::Reload, &mut deferred),
                () = arrived.notified() => next_drain = self.drain_again(&mut redrain).await,
                () = drain_due => next_drain = self.drain_again(&mut redrain).await,
                () = due => pending = deferred.take().map(|(trigger, _)| trigger),
                () = polled => {
                    next_poll = Instant::now() + poll_every;
                    let latest = polling.latest_request().await;
                    if latest.is_some() && latest != handled {
                        tracing::info!(request = ?latest, "a resync was requested in Port");
                        handled = latest;
                        defer(Trigger::PortRequest, &mut deferred);
                    }
                }
            }
        }
    }

    /// One run with the config as it is now. Failures are logged, never fatal to the service.
    async fn run_once(&self, trigger: Trigger) -> Option<RunStatus> {
        tracing::info!(trigger = trigger.name(), "a resync starts");
        self.metrics.run_started();
        let mut state = None;
        let mut open_failed = false;
        let outcome = async {
            let prepared = prepare(self.config_path, &[]).await?;
            let opened = match self.current_state() {
                Some(open) => open,
                None => open_state(&prepared.state_path, &prepared.identity)
                    .await
                    .inspect_err(|_| open_failed = true)?,
            };
            state = Some(opened.clone());
            let options = ResyncOptions {
                kinds: None,
                dry_run: false,
                trigger: trigger.name().to_owned(),
            };
            let report = prepared
                .resync_and_verify(Some(opened), None, self.stop.clone(), &options)
                .await?;
            print(&report, false, false, &prepared.state_path)
                .map_err(|e| Failure::Run(e.into()))?;
            Ok::<_, Failure>(report)
        }
        .await;
        let entities = match &state {
            Some(state) => {
                let state = state.clone();
                tokio::task::spawn_blocking(move || state.entity_count())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            None => None,
        };
        match outcome {
            Ok(report) => {
                let unready = report.state_error.as_ref().map(|e| {
                    format!("the last resync could not write its state ({e}); the next run opens it again")
                });
                // Kept open for the next run, unless it failed: redb refuses writes after an
                // I/O error until the file is opened again.
                *self.state.lock().unwrap_or_else(|e| e.into_inner()) =
                    if unready.is_none() { state } else { None };
                self.metrics.run_ended(Some(&report), entities, unready);
                Some(report.run.status)
            }
            Err(failure) => {
                let message = format!("{:#}", failure.error());
                let unready =
                    open_failed.then(|| format!("the state could not be opened: {message}"));
                if state.is_some() {
                    *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
                }
                self.metrics.run_ended(None, entities, unready);
                tracing::error!(
                    trigger = trigger.name(),
                    "the resync could not run: {message}"
                );
                None
            }
        }
    }

    /// Applies the live events waiting in the inbox (between runs, never during one), and runs
    /// the resyncs they ask for, in their place in line. A request stays queued until a resync
    /// served it (one that completed), so a crash or an unavailable Port does not lose it.
    async fn drain_inbox(&self) -> Drained {
        loop {
            let Some(state) = self.current_state() else {
                return Drained::Paused;
            };
            let sequences = match self.drain_events(&state).await {
                Drained::ResyncWanted(sequences) => sequences,
                other => return other,
            };
            if self.resyncs {
                tracing::info!(
                    requests = sequences.len(),
                    "a live event asked for a resync"
                );
                match self.run_once(Trigger::EventRequest).await {
                    Some(RunStatus::Completed | RunStatus::CompletedWithErrors) => {}
                    _ if self.stop.is_cancelled() => return Drained::Empty,
                    _ => return Drained::Paused,
                }
            } else {
                tracing::warn!(
                    requests = sequences.len(),
                    "a live event asked for a resync; WEBHOOKS_ONLY runs none, so it is dropped"
                );
                self.metrics.live_event("ignored", "", "resync");
            }
            live::resync_done(&state, sequences).await;
        }
    }

    /// Applies the waiting live events up to the next resync request.
    async fn drain_events(&self, state: &Arc<StateStore>) -> Drained {
        let drain = live::Drain {
            state,
            stop: &self.stop,
            metrics: &self.metrics,
            processors: &self.processors,
            workers: self.workers,
        };
        drain
            .run(|| async {
                match prepare(self.config_path, &[]).await {
                    Ok(prepared) => Some(prepared),
                    Err(failure) => {
                        tracing::error!(
                            "live events wait: the configuration cannot be used: {:#}",
                            failure.error()
                        );
                        None
                    }
                }
            })
            .await
    }

    /// A drain after the first: when the next one is due (the wait doubling while Port cannot
    /// take the events).
    async fn drain_again(&self, redrain: &mut Duration) -> Option<Instant> {
        match self.drain_inbox().await {
            Drained::Paused => {
                *redrain = (*redrain * 2).min(REDRAIN_MAX);
                Some(Instant::now() + *redrain)
            }
            Drained::Empty | Drained::ResyncWanted(_) => {
                *redrain = REDRAIN_FIRST;
                None
            }
        }
    }

    /// The state the last run left open, if it did.
    fn current_state(&self) -> Option<Arc<StateStore>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What starts work in the service loop.
struct Triggers {
    polling: Polling,
    /// Between scheduled resyncs.
    schedule: Option<Duration>,
    /// `POST /resync` (the WEBHOOK listener).
    webhook: Option<Arc<Notify>>,
    /// SIGHUP.
    reload: Arc<Notify>,
    /// Least time between two requested runs.
    min_interval: Duration,
    /// A live event was queued.
    arrived: Arc<Notify>,
}

/// Ocean's POLLING listener: Port's resync request for this integration.
struct Polling {
    client: PortClient,
    identifier: String,
    enabled: bool,
    every: Duration,
}

impl Polling {
    /// `updatedAt` of the integration's latest resync request in Port. A failed poll is logged
    /// and counts as no news: the next poll tries again.
    async fn latest_request(&self) -> Option<String> {
        match self.client.get_resync_request(&self.identifier).await {
            Ok(request) => request.map(|r| r.updated_at),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the resync request from Port; polling again later");
                None
            }
        }
    }
}
