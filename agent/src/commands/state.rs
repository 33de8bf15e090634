//! `port-agent state inspect`: what the agent believes is in Port, and why.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use port_agent_core::text::printable;
use port_agent_state::{EntityRecord, Intent, RunRecord, StateError, StateStore};
use serde_json::{Value, json};

use crate::Failure;
use crate::config;
use crate::http::{Beacon, loopback_side};

#[derive(Debug)]
pub struct InspectArgs {
    pub config: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub blueprint: Option<String>,
    pub identifier: Option<String>,
    pub kind: Option<String>,
    pub json: bool,
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn entity_json(key: &(String, String), r: &EntityRecord) -> Value {
    let mut value = json!({
        "blueprint": key.0, "identifier": key.1, "hash": hex(&r.hash),
        "later_hashes": r.later.iter().map(hex).collect::<Vec<_>>(), "kind": r.kind, "resource": r.resource,
        "last_seen_run": r.last_seen_run, "written_run": r.written_run, "written_at": iso(r.written_at_ms),
    });
    if let Some(doubt) = &r.doubt {
        value["in_doubt"] = match doubt.intent {
            Intent::Upsert(hash) => {
                json!({"write": "upsert", "hash": hex(&hash), "since_run": doubt.since_run})
            }
            Intent::Delete => json!({"write": "deletion", "since_run": doubt.since_run}),
        };
    }
    value
}

fn run_json(run: &RunRecord) -> Value {
    let mut value = serde_json::to_value(run).unwrap_or(Value::Null);
    value["started_at"] = Value::from(iso(run.started_at_ms));
    if let Some(finished) = run.finished_at_ms {
        value["finished_at"] = Value::from(iso(finished));
    }
    value
}

/// A resync's checkpoint as a line for a person; anything else as stored.
fn describe_checkpoint(text: &str) -> String {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return text.to_owned();
    };
    let (Some(run), Some(status)) = (value["run"].as_u64(), value["status"].as_str()) else {
        return text.to_owned();
    };
    let mut line = format!("run {run} {status}");
    if let Some(at) = value["finished_at"]
        .as_str()
        .or(value["started_at"].as_str())
    {
        line.push_str(&format!(" at {at}"));
    }
    if let Some(counters) = value["counters"].as_object() {
        for name in [
            "fetched",
            "mapped",
            "unchanged",
            "upserted",
            "failed",
            "deleted",
        ] {
            line.push_str(&format!(
                " {name} {}",
                counters.get(name).unwrap_or(&Value::Null)
            ));
        }
    }
    line
}

/// The state file named by `--state`, or by the config's `state.path`.
pub fn state_path(
    config_file: &Option<PathBuf>,
    state: &Option<PathBuf>,
) -> Result<PathBuf, Failure> {
    match (state, config_file) {
        (Some(path), _) => Ok(path.clone()),
        (None, Some(config)) => Ok(config::load(config)?.state_path()),
        (None, None) => Err(Failure::Config(anyhow!(
            "give --config FILE or --state PATH"
        ))),
    }
}

/// Opens the file to read it.
fn open(path: &Path) -> Result<StateStore, Failure> {
    StateStore::open_read_only(path).map_err(|e| Failure::Run(e.into()))
}

/// Opens the file to change it (no agent may be running on it).
fn open_to_write(path: &Path) -> Result<StateStore, Failure> {
    StateStore::open_existing(path).map_err(|e| Failure::Run(e.into()))
}

/// Ignores a closed pipe (`| head`), which is not a failure.
fn finish_output(result: std::io::Result<()>) -> Result<(), Failure> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| Failure::Run(e.into())),
    }
}

/// `state stats`: counts by blueprint and kind, runs, file size.
pub fn stats(
    config_file: &Option<PathBuf>,
    state: &Option<PathBuf>,
    as_json: bool,
) -> Result<(), Failure> {
    let path = state_path(config_file, state)?;
    let store = open(&path)?;
    let mut by_blueprint: std::collections::BTreeMap<String, u64> = Default::default();
    let mut by_kind: std::collections::BTreeMap<String, u64> = Default::default();
    // Counted while scanning; nothing is kept.
    store
        .entities(|(bp, _), r| {
            *by_blueprint.entry(bp.clone()).or_default() += 1;
            *by_kind.entry(r.kind.clone()).or_default() += 1;
            false
        })
        .map_err(|e| Failure::Run(e.into()))?;
    let entities: u64 = by_blueprint.values().sum();
    let runs = store.runs(usize::MAX).map_err(|e| Failure::Run(e.into()))?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let last = runs.first().map(run_json).unwrap_or(Value::Null);
    let usage = store.usage().map_err(|e| Failure::Run(e.into()))?;
    let tables: serde_json::Map<String, Value> = usage
        .iter()
        .map(|u| {
            let value = json!({"entries": u.entries, "stored_bytes": u.stored_bytes, "metadata_bytes": u.metadata_bytes, "fragmented_bytes": u.fragmented_bytes});
            (u.table.to_owned(), value)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    finish_output(if as_json {
        writeln!(
            out,
            "{}",
            json!({"state": path.display().to_string(), "bytes": bytes, "entities": entities, "by_blueprint": by_blueprint, "by_kind": by_kind, "runs": runs.len(), "last_run": last, "tables": tables})
        )
    } else {
        (|| {
            writeln!(
                out,
                "state {} ({:.1} MiB): {entities} entities, {} runs",
                path.display(),
                bytes as f64 / 1048576.0,
                runs.len()
            )?;
            for (bp, n) in &by_blueprint {
                writeln!(out, "  blueprint {bp}: {n}")?;
            }
            for (kind, n) in &by_kind {
                writeln!(out, "  kind {kind}: {n}")?;
            }
            let mib = |bytes: u64| bytes as f64 / 1048576.0;
            for u in &usage {
                writeln!(
                    out,
                    "  table {}: {} entries, {:.1} MiB stored, {:.1} MiB b-tree, {:.1} MiB fragmented",
                    u.table,
                    u.entries,
                    mib(u.stored_bytes),
                    mib(u.metadata_bytes),
                    mib(u.fragmented_bytes)
                )?;
            }
            if let Some(run) = runs.first() {
                writeln!(
                    out,
                    "  last run {} {:?} started {}",
                    run.id,
                    run.status,
                    iso(run.started_at_ms)
                )?;
            }
            Ok(())
        })()
    })
}

/// `state compact`: the file without its free pages.
pub fn compact(config_file: &Option<PathBuf>, state: &Option<PathBuf>) -> Result<(), Failure> {
    let path = state_path(config_file, state)?;
    let mut store = open_to_write(&path)?;
    let started = std::time::Instant::now();
    let (before, after) = store.compact().map_err(|e| Failure::Run(e.into()))?;
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let mut out = std::io::stdout();
    finish_output(writeln!(
        out,
        "compacted {}: {:.1} MiB -> {:.1} MiB in {:.2} s",
        path.display(),
        mib(before),
        mib(after),
        started.elapsed().as_secs_f64()
    ))
}

/// `state retry-dead-letters`: live events that kept failing go back to the inbox, in their
/// places, for the agent to apply again.
pub async fn retry_dead_letters(
    config_file: &Option<PathBuf>,
    state: &Option<PathBuf>,
) -> Result<(), Failure> {
    let path = state_path(config_file, state)?;
    let retried = match StateStore::open_existing(&path) {
        Ok(store) => store
            .retry_dead_letters()
            .map_err(|e| Failure::Run(e.into()))?,
        // An agent runs on it: it puts them back and applies them.
        Err(StateError::Locked { .. }) => {
            let address = running_agent_address(&path, config_file)?;
            let answer: Value = reqwest::Client::new()
                .post(format!("http://{address}/state/retry-dead-letters"))
                .timeout(std::time::Duration::from_secs(30))
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| unreachable_agent(&address, e))?
                .json()
                .await
                .map_err(|e| unreachable_agent(&address, e))?;
            answer["retried"].as_u64().unwrap_or(0) as usize
        }
        Err(e) => return Err(Failure::Run(e.into())),
    };
    let mut out = std::io::stdout();
    finish_output(writeln!(
        out,
        "{retried} dead letters back in the inbox of {}",
        path.display()
    ))
}

/// `state export --jsonl`: one JSON line per entity record.
pub fn export(config_file: &Option<PathBuf>, state: &Option<PathBuf>) -> Result<(), Failure> {
    let path = state_path(config_file, state)?;
    let store = open(&path)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = store
        .each_entity(|key, record| writeln!(out, "{}", entity_json(&key, &record)))
        .map_err(|e| Failure::Run(e.into()))?;
    finish_output(written.and_then(|()| out.flush()))
}

/// `state reset`: forgets everything, so the next resync sends every entity once. Asks first,
/// unless `--yes`.
pub fn reset(
    config_file: &Option<PathBuf>,
    state: &Option<PathBuf>,
    yes: bool,
) -> Result<(), Failure> {
    let path = state_path(config_file, state)?;
    if !path.exists() {
        return Err(Failure::Run(anyhow!(
            "{} does not exist: nothing to reset",
            path.display()
        )));
    }
    // Opening proves no agent holds the file (redb locks it) and that it is a state file.
    let store = open_to_write(&path)?;
    let identifier = store.identity().integration_identifier.clone();
    let count = store.entity_count().map_err(|e| Failure::Run(e.into()))?;
    drop(store);
    if !yes {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Err(Failure::Config(anyhow!(
                "state reset asks for confirmation; run it on a terminal, or pass --yes"
            )));
        }
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "This forgets the {count} entities port-agent believes are in Port for '{identifier}'; the next resync sends them all again.\nType the integration identifier to confirm: "
        );
        let _ = err.flush();
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| Failure::Run(e.into()))?;
        if answer.trim() != identifier {
            return Err(Failure::Run(anyhow!(
                "not confirmed; the state is unchanged"
            )));
        }
    }
    std::fs::remove_file(&path)
        .map_err(|e| Failure::Run(anyhow!("cannot remove {}: {e}", path.display())))?;
    let mut out = std::io::stdout();
    finish_output(writeln!(
        out,
        "reset: removed {} ({count} entities forgotten)",
        path.display()
    ))
}

/// Which records `state inspect` shows.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct InspectFilter {
    pub blueprint: Option<String>,
    pub identifier: Option<String>,
    pub kind: Option<String>,
}

/// What `state inspect --json` prints: the integration, the records `filter` selects (with any
/// write in doubt), the last runs and the checkpoints. Also what a running agent serves on
/// `/state/inspect`.
pub fn inspect_report(store: &StateStore, filter: &InspectFilter) -> Result<Value, StateError> {
    let entities = store.entities(|(bp, id), r| {
        filter.blueprint.as_ref().is_none_or(|b| b == bp)
            && filter.identifier.as_ref().is_none_or(|i| i == id)
            && filter.kind.as_ref().is_none_or(|k| *k == r.kind)
    })?;
    // What last wrote each entity: a resync (its trigger) or a live event, while the run is in
    // the history.
    let triggers: std::collections::HashMap<u64, String> = store
        .runs(port_agent_state::RUNS_KEPT as usize)?
        .into_iter()
        .map(|run| (run.id, run.trigger))
        .collect();
    let runs = store.runs(10)?;
    let checkpoints = store.checkpoints()?;
    let (waiting, _) = store.inbox_depth()?;
    let now = jiff::Timestamp::now().as_millisecond();
    // The events themselves stay out: they are the sender's data, and may be large.
    let dead_letters: Vec<Value> = store
        .dead_letters()?
        .iter()
        .map(|d| {
            json!({
                "sequence": d.sequence,
                "attempts": d.attempts,
                "first_failed_at": iso(d.first_failed_ms),
                "age_seconds": (now - d.first_failed_ms).max(0) / 1000,
                "last_error": d.last_error,
            })
        })
        .collect();
    let identity = store.identity();
    // Asked about one entity the state has no record of: say what that means.
    let not_found = match (&filter.identifier, entities.is_empty()) {
        (Some(identifier), true) => Some(format!(
            "no record of {identifier}: port-agent has not written it to Port (or deleted it since). Either no resource's mapping produces it from the items fetched (try `port-agent mapping test` on an item), or Port refused it (see the runs' notes below), or the runs that would write it did not complete"
        )),
        _ => None,
    };
    Ok(json!({
        "not_found": not_found,
        "state": store.path().display().to_string(),
        "integration": {"type": identity.integration_type, "identifier": identity.integration_identifier, "port_base_url": identity.port_base_url},
        "entities": entities.iter().map(|(k, r)| {
            let mut entity = entity_json(k, r);
            if let Some(trigger) = triggers.get(&r.written_run) {
                entity["written_by"] = json!(trigger);
            }
            entity
        }).collect::<Vec<_>>(),
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        "checkpoints": checkpoints.into_iter().map(|(k, v)| {
            let value = serde_json::from_str(&v).unwrap_or(Value::String(v));
            (k, value)
        }).collect::<serde_json::Map<_, _>>(),
        "live_events": {"waiting": waiting, "dead_letters": dead_letters},
    }))
}

pub async fn inspect(args: &InspectArgs) -> Result<(), Failure> {
    let path = state_path(&args.config, &args.state)?;
    let filter = InspectFilter {
        blueprint: args.blueprint.clone(),
        identifier: args.identifier.clone(),
        kind: args.kind.clone(),
    };
    let report = match StateStore::open_read_only(&path) {
        Ok(store) => inspect_report(&store, &filter).map_err(|e| Failure::Run(e.into()))?,
        // An agent runs on it: it answers for its state.
        Err(StateError::Locked { .. }) => ask_the_running_agent(&path, args, &filter).await?,
        Err(e) => return Err(Failure::Run(e.into())),
    };
    let mut out = std::io::stdout().lock();
    finish_output(if args.json {
        writeln!(out, "{report}")
    } else {
        write_inspect_text(&mut out, &report)
    })
}

/// Where the agent holding `state` serves: the address it noted beside the state, else the
/// loopback side of the config's `http.listen`.
fn running_agent_address(state: &Path, config_file: &Option<PathBuf>) -> Result<String, Failure> {
    let noted = Beacon::read(state);
    let configured = match config_file {
        Some(config) => loopback_side(&config::load(config)?.config.http.listen),
        None => None,
    };
    noted.or(configured).ok_or_else(|| {
        Failure::Run(anyhow!(
            "{} is held by a running agent; give --config so that its HTTP address is known",
            state.display()
        ))
    })
}

fn unreachable_agent(address: &str, e: reqwest::Error) -> Failure {
    Failure::Run(anyhow!(
        "the state file is held by a running agent, which did not answer on {address} ({}); stop it to read the file directly",
        e.without_url()
    ))
}

/// The running agent's `/state/inspect`: at the address it noted beside the state, else on
/// the loopback side of the config's `http.listen`.
async fn ask_the_running_agent(
    state: &Path,
    args: &InspectArgs,
    filter: &InspectFilter,
) -> Result<Value, Failure> {
    let address = running_agent_address(state, &args.config)?;
    let mut query: Vec<(&str, &str)> = Vec::new();
    for (name, value) in [
        ("blueprint", &filter.blueprint),
        ("identifier", &filter.identifier),
        ("kind", &filter.kind),
    ] {
        if let Some(value) = value {
            query.push((name, value));
        }
    }
    let unreachable = |e: reqwest::Error| unreachable_agent(&address, e);
    let answer = reqwest::Client::new()
        .get(format!("http://{address}/state/inspect"))
        .query(&query)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(unreachable)?;
    answer.json().await.map_err(unreachable)
}

fn write_inspect_text(out: &mut impl Write, report: &Value) -> std::io::Result<()> {
    let text = |v: &Value| printable(v.as_str().unwrap_or_default()).into_owned();
    let integration = &report["integration"];
    writeln!(
        out,
        "state {} of integration {}/{} at {}",
        text(&report["state"]),
        text(&integration["type"]),
        text(&integration["identifier"]),
        text(&integration["port_base_url"])
    )?;
    let entities = report["entities"].as_array().cloned().unwrap_or_default();
    writeln!(out, "{} entities believed in Port:", entities.len())?;
    if let Some(why) = report["not_found"].as_str() {
        writeln!(out, "  {}", printable(why))?;
    }
    for e in &entities {
        let later = e["later_hashes"].as_array().map_or(0, Vec::len);
        writeln!(
            out,
            "  {}/{}  hash {}{}  kind {} (resources[{}])  last compared in run {}  written in run {}{} at {}{}",
            text(&e["blueprint"]),
            text(&e["identifier"]),
            text(&e["hash"]).get(..16).unwrap_or_default(),
            match later {
                0 => String::new(),
                n => format!(" (+{n} later contributions)"),
            },
            text(&e["kind"]),
            e["resource"],
            e["last_seen_run"],
            e["written_run"],
            match e.get("written_by") {
                Some(by) => format!(" ({})", text(by)),
                None => String::new(),
            },
            text(&e["written_at"]),
            match e.get("in_doubt") {
                Some(doubt) => format!(
                    "  IN DOUBT since run {}: a {} Port has not answered (re-sent next run)",
                    doubt["since_run"],
                    text(&doubt["write"])
                ),
                None => String::new(),
            }
        )?;
    }
    writeln!(out, "runs (newest first):")?;
    for run in report["runs"].as_array().into_iter().flatten() {
        let t = &run["totals"];
        writeln!(
            out,
            "  run {} {} ({}) started {}: fetched {} mapped {} unchanged {} upserted {} failed {} deleted {}",
            run["id"],
            text(&run["status"]),
            text(&run["trigger"]),
            text(&run["started_at"]),
            t["fetched"],
            t["mapped"],
            t["unchanged"],
            t["upserted"],
            t["failed"],
            t["deleted"]
        )?;
        for note in run["notes"].as_array().into_iter().flatten() {
            writeln!(out, "    note: {}", text(note))?;
        }
    }
    let live = &report["live_events"];
    let dead = live["dead_letters"].as_array().cloned().unwrap_or_default();
    writeln!(
        out,
        "live events: {} waiting, {} dead letters{}",
        live["waiting"],
        dead.len(),
        if dead.is_empty() {
            ""
        } else {
            " (retry them with `port-agent state retry-dead-letters`)"
        }
    )?;
    for d in &dead {
        writeln!(
            out,
            "  dead letter {}: {} attempts, failing for {} s: {}",
            d["sequence"],
            d["attempts"],
            d["age_seconds"],
            text(&d["last_error"])
        )?;
    }
    for (kind, checkpoint) in report["checkpoints"].as_object().into_iter().flatten() {
        writeln!(
            out,
            "checkpoint {}: {}",
            printable(kind),
            describe_checkpoint(&checkpoint.to_string())
        )?;
    }
    Ok(())
}
