//! `port-agent run`: the agent as a service. Resyncs when started, when someone asks for one in
//! Port (POLLING, as Ocean polls the integration's resync request) and every
//! `scheduled_resync_interval` minutes; one run at a time; SIGTERM ends the run in progress
//! cleanly (as aborted, with what Port acknowledged recorded) and the service with exit 0.
//!
//! The config and mapping are read again for each run, so an edit applies to the next run without
//! a restart; the state file stays open (and locked) for the service's whole life.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use port_agent_core::resync::ResyncOptions;
use port_agent_state::{RunStatus, StateStore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::commands::resync::{Prepared, open_state, prepare, print, stop_on_signal};
use crate::config::ListenerType;

/// Ocean's default POLLING interval.
const DEFAULT_POLL_SECONDS: u64 = 60;

/// Why a run starts, as recorded in the run history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Start,
    PortRequest,
    Schedule,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::PortRequest => "port-request",
            Trigger::Schedule => "schedule",
        }
    }
}

pub async fn serve(config_path: &Path) -> Result<(), Failure> {
    let first = prepare(config_path, &[]).await?;
    let listener = first.listener.listener;
    if !matches!(listener, ListenerType::Polling | ListenerType::Once) {
        return Err(Failure::Config(anyhow!(
            "{}: event_listener.type {listener:?} is not supported yet; use POLLING or ONCE",
            config_path.display()
        )));
    }
    let state = open_state(&first.state_path, &first.identity).await?;
    let stop = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signal(stop.clone()));
    let outcome = if listener == ListenerType::Once {
        match run_once(config_path, &state, Trigger::Start, &stop).await {
            Some(RunStatus::Completed) => Ok(()),
            _ => Err(Failure::Run(anyhow!("the resync did not complete"))),
        }
    } else {
        poll(config_path, first, &state, &stop).await;
        Ok(())
    };
    signals.abort();
    outcome
}

/// Resyncs at start, then whenever Port's resync request changes or the schedule is due, until
/// asked to stop.
async fn poll(
    config_path: &Path,
    first: Prepared,
    state: &Arc<StateStore>,
    stop: &CancellationToken,
) {
    let identifier = first.setup.identifier.clone();
    let poll_every = Duration::from_secs(
        first
            .listener
            .interval
            .unwrap_or(DEFAULT_POLL_SECONDS)
            .max(1),
    );
    let schedule = first
        .scheduled_resync_interval
        .map(|minutes| Duration::from_secs(minutes * 60));
    // The request standing at start is served by the start run.
    let mut handled = latest_request(&first, &identifier).await;
    let mut pending = Some(Trigger::Start);
    let mut next_scheduled = schedule.map(|every| Instant::now() + every);
    let mut next_poll = Instant::now() + poll_every;
    loop {
        if let Some(trigger) = pending.take() {
            run_once(config_path, state, trigger, stop).await;
            next_scheduled = schedule.map(|every| Instant::now() + every);
        }
        if stop.is_cancelled() {
            return;
        }
        let scheduled = async {
            match next_scheduled {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = scheduled => pending = Some(Trigger::Schedule),
            () = tokio::time::sleep_until(next_poll) => {
                next_poll = Instant::now() + poll_every;
                let latest = latest_request(&first, &identifier).await;
                if latest.is_some() && latest != handled {
                    tracing::info!(request = ?latest, "a resync was requested in Port");
                    handled = latest;
                    pending = Some(Trigger::PortRequest);
                }
            }
        }
    }
}

/// `updatedAt` of the integration's latest resync request in Port. A failed poll is logged and
/// counts as no news: the next poll tries again.
async fn latest_request(prepared: &Prepared, identifier: &str) -> Option<String> {
    match prepared.client.get_resync_request(identifier).await {
        Ok(request) => request.map(|r| r.updated_at),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the resync request from Port; polling again later");
            None
        }
    }
}

/// One run with the config as it is now. Failures are logged, never fatal to the service.
async fn run_once(
    config_path: &Path,
    state: &Arc<StateStore>,
    trigger: Trigger,
    stop: &CancellationToken,
) -> Option<RunStatus> {
    let outcome = async {
        let prepared = prepare(config_path, &[]).await?;
        let options = ResyncOptions {
            kinds: None,
            dry_run: false,
            trigger: trigger.name().to_owned(),
        };
        let report = prepared
            .resync_and_verify(Some(state.clone()), None, stop.clone(), &options)
            .await?;
        print(&report, false, false, &prepared.state_path).map_err(|e| Failure::Run(e.into()))?;
        Ok::<_, Failure>(report.run.status)
    }
    .await;
    match outcome {
        Ok(status) => Some(status),
        Err(failure) => {
            tracing::error!(
                trigger = trigger.name(),
                "the resync could not run: {:#}",
                failure.error()
            );
            None
        }
    }
}
