//! `port-agent resync`: one resync, then exit.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use port_agent_core::integration::Integration;
use port_agent_core::mapping::{CompiledMapping, MappingPool, PortAppConfig};
use port_agent_core::port::PortClient;
use port_agent_core::resync::{IntegrationSetup, Progress, Resync, ResyncOptions, ResyncReport};
use port_agent_core::spec::IntegrationSpec;
use port_agent_integrations::BuiltIn;
use port_agent_state::{Identity, RunCounters, RunStatus, StateStore};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Failure;
use crate::config::{self, Loaded};

#[derive(Debug)]
pub struct ResyncArgs {
    pub config: PathBuf,
    pub kind: Vec<String>,
    pub dry_run: bool,
    pub json: bool,
}

fn config_error(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Config(e.into())
}

fn run_error(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Run(e.into())
}

/// The integration named by `integration.type`.
pub(crate) fn integration(loaded: &Loaded) -> Result<Box<dyn Integration>, Failure> {
    let built_in = built_in_integration(loaded)?;
    let config = integration_config(loaded)?;
    (built_in.make)(&config, &loaded.base_dir())
        .map_err(|e| config_error(anyhow!("{}: {e}", loaded.path.display())))
}

/// `integration.config` checked against the integration's `.port/spec.yaml` and completed
/// with its defaults; every problem at once.
pub(crate) fn integration_config(
    loaded: &Loaded,
) -> Result<serde_json::Map<String, Value>, Failure> {
    let settings = &loaded.config.integration;
    let built_in = built_in_integration(loaded)?;
    let spec = IntegrationSpec::from_yaml(built_in.spec).map_err(|e| config_error(anyhow!(e)))?;
    spec.apply(&settings.config).map_err(|problems| {
        config_error(anyhow!(
            "{}: {}",
            loaded.path.display(),
            problems.join("\n  ")
        ))
    })
}

/// Settings required by another's value (the spec's `dependencies`) that are missing.
pub(crate) fn integration_dependencies(loaded: &Loaded) -> Vec<String> {
    let (Ok(built_in), Ok(config)) = (built_in_integration(loaded), integration_config(loaded))
    else {
        // Reported by `integration`.
        return Vec::new();
    };
    IntegrationSpec::from_yaml(built_in.spec)
        .map(|spec| spec.check_dependencies(&config))
        .unwrap_or_default()
}

fn built_in_integration(loaded: &Loaded) -> Result<&'static BuiltIn, Failure> {
    let name = &loaded.config.integration.integration_type;
    port_agent_integrations::built_in(name).ok_or_else(|| {
        let names: Vec<&str> = port_agent_integrations::BUILT_IN
            .iter()
            .map(|b| b.name)
            .collect();
        config_error(anyhow!(
            "{}: integration.type '{name}' is not built into this port-agent (built in: {})",
            loaded.path.display(),
            names.join(", ")
        ))
    })
}

/// `resources_path/blueprints.json`, else the integration's own default blueprints (its
/// `.port/resources/`, as Ocean's `initializePortResources` uses them).
pub(crate) fn blueprints(loaded: &Loaded) -> Result<Vec<Value>, Failure> {
    let path = loaded
        .resolve(&loaded.config.resources_path)
        .join("blueprints.json");
    let (text, source) = if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))
            .map_err(config_error)?;
        (text, path.display().to_string())
    } else {
        match built_in_integration(loaded) {
            Ok(built_in) => (
                built_in.blueprints.to_owned(),
                format!("the {} integration's default blueprints", built_in.name),
            ),
            Err(_) => return Ok(Vec::new()),
        }
    };
    serde_json::from_str(&text)
        .with_context(|| format!("{source} is not a JSON array of blueprints"))
        .map_err(config_error)
}

/// The integration whose default mapping stands in: no `mapping` set and no file where Ocean
/// looks by default (`resources_path/port-app-config.yml`).
pub(crate) fn default_mapping(loaded: &Loaded) -> Option<&'static BuiltIn> {
    let path = loaded.mapping_path()?;
    if loaded.config.mapping.is_some() || path.exists() {
        return None;
    }
    built_in_integration(loaded).ok()
}

/// The mapping: a local file, or (`mapping: port`) the one stored on the integration in Port.
async fn mapping(loaded: &Loaded, client: &PortClient) -> Result<(PortAppConfig, Value), Failure> {
    let Some(path) = loaded.mapping_path() else {
        let identifier = &loaded.config.integration.identifier;
        let integration = client.get_integration(identifier).await.map_err(run_error)?.ok_or_else(|| {
            config_error(anyhow!("mapping: port, but integration '{identifier}' does not exist in Port yet; give a local mapping file for the first start"))
        })?;
        let stored = integration.config.unwrap_or(Value::Null);
        let config = PortAppConfig::from_value(stored.clone()).map_err(|e| {
            config_error(anyhow!(
                "the mapping stored on integration '{identifier}' in Port: {e}"
            ))
        })?;
        return Ok((config, stored));
    };
    if let Some(built_in) = default_mapping(loaded) {
        tracing::info!(
            integration = built_in.name,
            "no mapping file at {}: using the integration's default mapping",
            path.display()
        );
        let config =
            PortAppConfig::from_yaml(built_in.mapping).map_err(|e| config_error(anyhow!(e)))?;
        let stored: Value = serde_yaml_ng::from_str(built_in.mapping).map_err(config_error)?;
        return Ok((config, stored));
    }
    let config = PortAppConfig::from_file(&path).map_err(config_error)?;
    let text = std::fs::read_to_string(&path).map_err(config_error)?;
    let stored: Value = serde_yaml_ng::from_str(&text).map_err(config_error)?;
    Ok((config, stored))
}

/// Everything a resync or a rebuild works with, set up from the config.
pub(crate) struct Prepared {
    verify_every: Option<u64>,
    /// What starts runs when the agent serves (`port-agent run`).
    pub(crate) listener: config::EventListenerSettings,
    /// Minutes between scheduled resyncs when serving.
    pub(crate) scheduled_resync_interval: Option<f64>,
    /// Where the service's HTTP server listens.
    pub(crate) http_listen: String,
    /// `POST /resync` needs it, when set.
    pub(crate) resync_token: Option<port_agent_core::Secret>,
    /// Least time between two requested runs.
    pub(crate) min_resync_interval: std::time::Duration,
    pub(crate) client: PortClient,
    port_app_config: PortAppConfig,
    compiled: CompiledMapping,
    pub(crate) integration: Box<dyn Integration>,
    pool: MappingPool,
    pub(crate) setup: IntegrationSetup,
    pub(crate) identity: Identity,
    pub(crate) state_path: PathBuf,
    /// The push endpoint's secret and inbox bound.
    pub(crate) push: config::PushSettings,
    limits: port_agent_core::mapping::budget::Limits,
    env: port_agent_core::mapping::EnvAccess,
}

pub(crate) async fn prepare(config_path: &Path, kinds: &[String]) -> Result<Prepared, Failure> {
    let loaded = config::load(config_path)?;
    let config = &loaded.config;
    let client = PortClient::new(config.port_client_config()).map_err(config_error)?;
    let (port_app_config, stored_mapping) = mapping(&loaded, &client).await?;
    let compiled = CompiledMapping::compile(&port_app_config, config.jq_env_access().value());
    for resource in &compiled.resources {
        match resource {
            Err(errors) => errors.iter().for_each(|e| tracing::error!("{e}")),
            Ok(resource) => resource.broken_fields.iter().for_each(|e| {
                tracing::error!(
                    "{e}; the field is null on every entity of this resource, as in Ocean"
                )
            }),
        }
    }
    let integration = integration(&loaded)?;
    if let Some(unknown) = kinds
        .iter()
        .find(|k| !port_app_config.resources.iter().any(|r| &r.kind == *k))
    {
        return Err(config_error(anyhow!(
            "--kind {unknown}: no resource of the mapping has this kind"
        )));
    }
    let identity = Identity {
        integration_type: config.integration.integration_type.clone(),
        integration_identifier: config.integration.identifier.clone(),
        port_base_url: config.port.base_url.clone(),
    };
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut limits = config.mapping_limits();
    limits.entity_bytes = client.config().bulk.max_bytes;
    let pool = MappingPool::start(&port_app_config, config.jq_env_access(), threads, limits)
        .map_err(run_error)?;
    let setup = IntegrationSetup {
        identifier: config.integration.identifier.clone(),
        integration_type: config.integration.integration_type.clone(),
        version: config.integration.version.clone(),
        blueprints: blueprints(&loaded)?,
        mapping: stored_mapping,
        // Port takes whole minutes.
        interval_minutes: config
            .scheduled_resync_interval
            .map(|minutes| minutes.ceil() as u64),
    };
    Ok(Prepared {
        verify_every: config.state.verify_every,
        listener: config.event_listener.clone(),
        scheduled_resync_interval: config.scheduled_resync_interval,
        http_listen: config.http.listen.clone(),
        resync_token: config.http.resync_token.clone(),
        min_resync_interval: std::time::Duration::from_secs(
            config.http.min_resync_interval.unwrap_or(10),
        ),
        client,
        port_app_config,
        compiled,
        integration,
        pool,
        setup,
        identity,
        state_path: loaded.state_path(),
        push: config.push_settings(),
        limits,
        env: config.jq_env_access(),
    })
}

pub(crate) async fn open_state(
    path: &Path,
    identity: &Identity,
) -> Result<Arc<StateStore>, Failure> {
    let (path, identity) = (path.to_owned(), identity.clone());
    let opened = tokio::task::spawn_blocking(move || StateStore::open(&path, &identity))
        .await
        .map_err(run_error)?;
    Ok(Arc::new(opened.map_err(run_error)?))
}

impl Prepared {
    /// The kinds the mapping maps, which live events may name.
    pub(crate) fn mapped_kinds(&self) -> std::collections::BTreeSet<String> {
        self.port_app_config
            .resources
            .iter()
            .map(|r| r.kind.clone())
            .collect()
    }

    /// Creates the integration and the missing blueprints in Port (what a resync does first).
    pub(crate) async fn prepare_port(&self) -> Result<(), port_agent_core::resync::ResyncError> {
        self.resync(None, None, CancellationToken::new())
            .prepare_port()
            .await
    }

    /// The mapping as loaded.
    pub(crate) fn port_app_config(&self) -> &PortAppConfig {
        &self.port_app_config
    }

    /// Applies live events (in arrival order) as one run through the resync's write path.
    pub(crate) async fn apply_live(
        &self,
        state: &Arc<StateStore>,
        events: Vec<port_agent_core::live::LiveEvent>,
    ) -> Result<port_agent_core::live::LiveOutcome, port_agent_core::resync::ResyncError> {
        port_agent_core::live::apply_all(
            &self.client,
            state,
            &self.port_app_config,
            self.env,
            self.limits,
            events,
        )
        .await
    }

    /// One resync, then, every `state.verify_every` completed runs, a comparison with Port.
    pub(crate) async fn resync_and_verify(
        &self,
        state: Option<Arc<StateStore>>,
        progress: Option<Arc<Progress>>,
        stop: CancellationToken,
        options: &ResyncOptions,
    ) -> Result<ResyncReport, Failure> {
        let resync = self.resync(state, progress, stop);
        let mut report = resync.run(options).await.map_err(run_error)?;
        if let Some(every) = self.verify_every
            && !options.dry_run
            && report.run.status == RunStatus::Completed
            && report.run.id.is_multiple_of(every)
        {
            let verified = resync.verify().await.map_err(run_error)?;
            for d in &verified.drift {
                tracing::warn!(blueprint = %d.blueprint, identifier = %d.identifier, drift = d.what, "state and Port disagree; `port-agent state verify --repair` fixes it");
            }
            report.run.notes.push(format!(
                "verified against Port: {} of {} entities drifted{}",
                verified.drift.len(),
                verified.checked,
                if verified.drift.is_empty() {
                    ""
                } else {
                    " (run `port-agent state verify --repair`)"
                }
            ));
        }
        Ok(report)
    }

    fn resync(
        &self,
        state: Option<Arc<StateStore>>,
        progress: Option<Arc<Progress>>,
        stop: CancellationToken,
    ) -> Resync<'_> {
        Resync {
            client: &self.client,
            state,
            config: &self.port_app_config,
            mapping: &self.compiled,
            pool: &self.pool,
            integration: self.integration.as_ref(),
            setup: &self.setup,
            progress,
            stop,
        }
    }
}

/// `port-agent state rebuild --from-port`: a fresh state from what Port holds.
pub async fn rebuild(config_path: &Path, yes: bool) -> Result<(), Failure> {
    let prepared = prepare(config_path, &[]).await?;
    let path = &prepared.state_path;
    if path.exists() {
        if !yes {
            return Err(Failure::Config(anyhow!(
                "{} exists; rebuilding replaces it: pass --yes (or `port-agent state reset` first)",
                path.display()
            )));
        }
        // Opening first proves no agent holds it and that it is this integration's.
        drop(open_state(path, &prepared.identity).await?);
        std::fs::remove_file(path)
            .map_err(|e| run_error(anyhow!("cannot replace {}: {e}", path.display())))?;
    }
    let state = open_state(path, &prepared.identity).await?;
    let report = prepared
        .resync(Some(state), None, CancellationToken::new())
        .rebuild_from_port()
        .await
        .map_err(run_error)?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "rebuilt {} from Port (run {}): {} entities adopted as they are; {} differ and {} are missing (the next resync sends them); {} in Port are produced by no item (the next complete resync deletes them)",
        path.display(),
        report.run_id,
        report.adopted,
        report.differing,
        report.missing,
        report.orphaned
    )
    .map_err(run_error)?;
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Run(anyhow!(
            "some resources failed, so entities not produced were not recorded: {}",
            report.failed.join("; ")
        )))
    }
}

/// `port-agent state verify [--repair]`: drift between the state and Port. Exit 0 when there
/// is none (or it was repaired), 1 when there is.
pub async fn verify(config_path: &Path, repair: bool) -> Result<(), Failure> {
    let prepared = prepare(config_path, &[]).await?;
    if !prepared.state_path.exists() {
        return Err(Failure::Run(anyhow!(
            "{} does not exist yet: run a resync (or `state rebuild --from-port`) first",
            prepared.state_path.display()
        )));
    }
    let state = open_state(&prepared.state_path, &prepared.identity).await?;
    let resync = prepared.resync(Some(state), None, CancellationToken::new());
    let report = resync.verify().await.map_err(run_error)?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "verified {} entities of the state against Port: {} drifted",
        report.checked,
        report.drift.len()
    )
    .map_err(run_error)?;
    for d in &report.drift {
        writeln!(out, "  {}/{}: {}", d.blueprint, d.identifier, d.what).map_err(run_error)?;
    }
    for failed in &report.failed {
        writeln!(out, "  note: {failed}; its content was not compared").map_err(run_error)?;
    }
    if report.drift.is_empty() {
        return Ok(());
    }
    if !repair {
        return Err(Failure::Run(anyhow!(
            "{} entities drifted; `state verify --repair` fixes them",
            report.drift.len()
        )));
    }
    resync
        .forget_drift(&report.drift)
        .await
        .map_err(run_error)?;
    let options = ResyncOptions {
        kinds: None,
        dry_run: false,
        trigger: "verify-repair".to_owned(),
    };
    let repaired = resync.run(&options).await.map_err(run_error)?;
    writeln!(
        out,
        "repaired: run {} {} re-sent {} and deleted {}",
        repaired.run.id,
        repaired.run.status.as_str(),
        repaired.run.totals.upserted,
        repaired.run.totals.deleted
    )
    .map_err(run_error)?;
    match repaired.run.status {
        RunStatus::Completed => Ok(()),
        _ => Err(Failure::Run(anyhow!(
            "the repairing resync did not complete: {}",
            repaired.run.notes.join("; ")
        ))),
    }
}

pub async fn run(args: &ResyncArgs) -> Result<(), Failure> {
    let prepared = prepare(&args.config, &args.kind).await?;
    let state_path = prepared.state_path.clone();
    let state = if args.dry_run && !state_path.exists() {
        None
    } else {
        Some(open_state(&state_path, &prepared.identity).await?)
    };
    // A live line on stderr, only for a person watching (never with --json, never in a pipe).
    let progress =
        (!args.json && std::io::stderr().is_terminal()).then(|| Arc::new(Progress::default()));
    let stop = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signal(stop.clone(), None));
    let options = ResyncOptions {
        kinds: (!args.kind.is_empty()).then(|| args.kind.clone()),
        dry_run: args.dry_run,
        trigger: "cli".to_owned(),
    };
    let ticker = progress
        .clone()
        .map(|live| tokio::spawn(show_progress(live)));
    let outcome = prepared
        .resync_and_verify(state, progress, stop, &options)
        .await;
    signals.abort();
    if let Some(ticker) = ticker {
        ticker.abort();
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[2K");
    }
    let report = outcome?;
    print(&report, args.json, args.dry_run, &state_path).map_err(run_error)?;
    match report.run.status {
        RunStatus::Completed => Ok(()),
        status => Err(Failure::Run(anyhow!(
            "the resync ended {}: {}",
            status.as_str(),
            report.run.notes.join("; ")
        ))),
    }
}

/// SIGTERM (systemd, docker stop) or SIGINT (Ctrl-C) cancels `stop`: the run ends cleanly as
/// aborted. A second signal ends the process at once; the next run resumes either way.
pub(crate) async fn stop_on_signal(stop: CancellationToken, reload: Option<Arc<Notify>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot listen for stop signals; a signal ends the process at once");
        return;
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            // A service reads its configuration again (a resync starts with it); anything
            // else stops as for SIGTERM (its terminal went away).
            _ = hangup.recv() => match &reload {
                Some(reload) => {
                    tracing::info!("SIGHUP: reading the configuration again; a resync starts with it");
                    reload.notify_one();
                }
                None => break,
            },
        }
    }
    tracing::warn!(
        "asked to stop: finishing the Port requests in flight, then ending the run as aborted (signal again to stop at once)"
    );
    stop.cancel();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        _ = hangup.recv() => {}
    }
    std::process::exit(130);
}

/// Redraws one status line until aborted.
async fn show_progress(live: Arc<Progress>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        ticks.tick().await;
        let kind = live.kind.lock().map(|k| k.clone()).unwrap_or_default();
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r\x1b[2K{kind}: {} fetched, {} unchanged, {} sent to Port",
            live.fetched.load(Relaxed),
            live.unchanged.load(Relaxed),
            live.upserted.load(Relaxed)
        );
        let _ = err.flush();
    }
}

fn counters_json(c: &RunCounters) -> Value {
    json!({"fetched": c.fetched, "mapped": c.mapped, "unchanged": c.unchanged, "upserted": c.upserted, "failed": c.failed, "deleted": c.deleted})
}

/// The run's summary on stdout: one JSON object, or lines for a person.
pub(crate) fn print(
    report: &ResyncReport,
    as_json: bool,
    dry_run: bool,
    state_path: &Path,
) -> std::io::Result<()> {
    let run = &report.run;
    let mut out = std::io::stdout();
    if as_json {
        let kinds: serde_json::Map<String, Value> = run
            .kinds
            .iter()
            .map(|(k, c)| (k.clone(), counters_json(c)))
            .collect();
        let mut summary = json!({
            "run_id": run.id,
            "status": run.status,
            "kinds": kinds,
            "totals": counters_json(&run.totals),
            "duration_ms": report.duration.as_millis() as u64,
            "notes": run.notes,
            "dry_run": dry_run,
        });
        if dry_run {
            summary["plan"] = report
                .plan
                .iter()
                .map(|p| json!({"blueprint": p.blueprint, "identifier": p.identifier, "kind": p.kind, "action": if p.reason == "vanished" { "delete" } else { "upsert" }, "reason": p.reason}))
                .collect();
        }
        return writeln!(out, "{summary}");
    }
    if dry_run {
        writeln!(
            out,
            "dry run: nothing was written to Port or to {}",
            state_path.display()
        )?;
        for p in &report.plan {
            let action = if p.reason == "vanished" {
                "delete"
            } else {
                "upsert"
            };
            writeln!(
                out,
                "  would {action} {}/{} ({}, kind {})",
                p.blueprint, p.identifier, p.reason, p.kind
            )?;
        }
    }
    if dry_run {
        writeln!(
            out,
            "dry run in {} ms (state {})",
            report.duration.as_millis(),
            state_path.display()
        )?;
    } else {
        writeln!(
            out,
            "run {} {:?} in {} ms (state {})",
            run.id,
            run.status,
            report.duration.as_millis(),
            state_path.display()
        )?;
    }
    writeln!(
        out,
        "  {:<24} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
        "kind", "fetched", "mapped", "unchanged", "upserted", "failed", "deleted"
    )?;
    for (kind, c) in run
        .kinds
        .iter()
        .chain(std::iter::once((&"total".to_owned(), &run.totals)))
    {
        writeln!(
            out,
            "  {kind:<24} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8}",
            c.fetched, c.mapped, c.unchanged, c.upserted, c.failed, c.deleted
        )?;
    }
    for note in &run.notes {
        writeln!(out, "  note: {note}")?;
    }
    Ok(())
}
