//! Writes `migrations/fixtures/v{SCHEMA_VERSION}.redb`, the file a later schema's migration is
//! tested on: `cargo run -p port-agent-state --example write_fixture`.

use port_agent_state::{
    Identity, Intent, RunRecord, RunStatus, SCHEMA_VERSION, Sending, StateStore, Written,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../migrations/fixtures/v{SCHEMA_VERSION}.redb"));
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let identity = Identity {
        integration_type: "json".into(),
        integration_identifier: "fixture".into(),
        port_base_url: "http://127.0.0.1:5555".into(),
    };
    let store = StateStore::open(&path, &identity)?;
    let run = store.start_run("fixture")?;
    let written: Vec<Written> = (0..3u8)
        .map(|i| Written {
            key: ("service".into(), format!("svc-{i}")),
            hash: [i; 32],
            kind: "service".into(),
            resource: 0,
        })
        .collect();
    store.record_written(run.id, &written)?;
    // A second contribution to svc-0 (another resource producing the same entity).
    store.record_written(
        run.id,
        &[Written {
            key: ("service".into(), "svc-0".into()),
            hash: [9; 32],
            kind: "service".into(),
            resource: 1,
        }],
    )?;
    // Writes whose answers never came: an update of svc-1, a deletion of svc-2, a new svc-3.
    store.mark_sending(
        run.id,
        &[
            ("svc-1", Intent::Upsert([11; 32])),
            ("svc-2", Intent::Delete),
            ("svc-3", Intent::Upsert([13; 32])),
        ]
        .map(|(id, intent)| Sending {
            key: ("service".into(), id.into()),
            intent,
            kind: "service".into(),
            resource: 0,
        }),
    )?;
    store.set_checkpoint("service", r#"{"done": true}"#)?;
    // A confirmed block of the raw-item cache (schema 4), naming two entities' key fingerprints.
    store.raw_remember(run.id, &[], &[([4; 32], vec![1, 2])])?;
    store.confirm_blocks(run.id)?;
    store.finish_run(&RunRecord {
        status: RunStatus::Completed,
        ..run
    })?;
    Ok(())
}
