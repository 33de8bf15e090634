//! `port-agent state inspect`: what the agent believes is in Port, and why.

use std::io::Write;
use std::path::PathBuf;

use anyhow::anyhow;
use port_agent_state::{EntityRecord, RunRecord, StateStore};
use serde_json::{Value, json};

use crate::Failure;
use crate::config;

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
    json!({
        "blueprint": key.0, "identifier": key.1, "hash": hex(&r.hash), "kind": r.kind, "resource": r.resource,
        "last_seen_run": r.last_seen_run, "written_run": r.written_run, "written_at": iso(r.written_at_ms),
    })
}

fn run_json(run: &RunRecord) -> Value {
    let mut value = serde_json::to_value(run).unwrap_or(Value::Null);
    value["started_at"] = Value::from(iso(run.started_at_ms));
    if let Some(finished) = run.finished_at_ms {
        value["finished_at"] = Value::from(iso(finished));
    }
    value
}

pub fn inspect(args: &InspectArgs) -> Result<(), Failure> {
    let path = match (&args.state, &args.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => config::load(config)?.state_path(),
        (None, None) => {
            return Err(Failure::Config(anyhow!(
                "give --config FILE or --state PATH"
            )));
        }
    };
    let store = StateStore::open_existing(&path).map_err(|e| Failure::Run(e.into()))?;
    let entities = store
        .entities(|(bp, id), r| {
            args.blueprint.as_ref().is_none_or(|b| b == bp)
                && args.identifier.as_ref().is_none_or(|i| i == id)
                && args.kind.as_ref().is_none_or(|k| *k == r.kind)
        })
        .map_err(|e| Failure::Run(e.into()))?;
    let runs = store.runs(10).map_err(|e| Failure::Run(e.into()))?;
    let checkpoints = store.checkpoints().map_err(|e| Failure::Run(e.into()))?;
    let identity = store.identity();
    let mut out = std::io::stdout().lock();
    let result = if args.json {
        writeln!(
            out,
            "{}",
            json!({
                "state": path.display().to_string(),
                "integration": {"type": identity.integration_type, "identifier": identity.integration_identifier, "port_base_url": identity.port_base_url},
                "entities": entities.iter().map(|(k, r)| entity_json(k, r)).collect::<Vec<_>>(),
                "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
                "checkpoints": checkpoints.into_iter().map(|(k, v)| (k, Value::from(v))).collect::<serde_json::Map<_, _>>(),
            })
        )
    } else {
        (|| {
            writeln!(
                out,
                "state {} of integration {}/{} at {}",
                path.display(),
                identity.integration_type,
                identity.integration_identifier,
                identity.port_base_url
            )?;
            writeln!(out, "{} entities believed in Port:", entities.len())?;
            for ((bp, id), r) in &entities {
                writeln!(
                    out,
                    "  {bp}/{id}  hash {}  kind {} (resources[{}])  seen in run {}  written in run {} at {}",
                    &hex(&r.hash)[..16],
                    r.kind,
                    r.resource,
                    r.last_seen_run,
                    r.written_run,
                    iso(r.written_at_ms)
                )?;
            }
            writeln!(out, "runs (newest first):")?;
            for run in &runs {
                let t = &run.totals;
                writeln!(
                    out,
                    "  run {} {:?} ({}) started {}: fetched {} mapped {} unchanged {} upserted {} failed {} deleted {}",
                    run.id,
                    run.status,
                    run.trigger,
                    iso(run.started_at_ms),
                    t.fetched,
                    t.mapped,
                    t.unchanged,
                    t.upserted,
                    t.failed,
                    t.deleted
                )?;
                for note in &run.notes {
                    writeln!(out, "    note: {note}")?;
                }
            }
            for (kind, checkpoint) in &checkpoints {
                writeln!(out, "checkpoint {kind}: {checkpoint}")?;
            }
            Ok(())
        })()
    };
    match result {
        // `state inspect | head` closes the pipe early; that is not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e: std::io::Error| Failure::Run(e.into())),
    }
}
