//! How fast the Port emulator takes bulk upserts from the Port client, over loopback.
//!
//! `cargo bench -p port-agent-core --bench emulator_bulk_upsert` (set BENCH_ENTITIES to change
//! the count, 100000 by default). The emulator runs on its own runtime thread, the client on
//! another, as two processes would share this machine's two cores.

use std::io::Write;
use std::time::Instant;

use port_agent_core::Secret;
use port_agent_core::port::{
    Entity, IntegrationIdentity, PortClient, PortClientConfig, UpsertOptions, UpsertOutcome,
};
use port_emulator::{EmulatorConfig, EmulatorThread};
use serde_json::json;

fn entity(i: usize) -> Entity {
    let mut e = Entity::new("service", format!("service-{i:07}"));
    e.title = Some(json!(format!("Service {i}")));
    e.team = Some(json!([format!("team-{}", i % 50)]));
    let p = e.properties.get_or_insert_with(Default::default);
    p.insert(
        "url".into(),
        json!(format!("https://git.example.com/org/service-{i}")),
    );
    p.insert(
        "language".into(),
        json!(["rust", "go", "python", "java"][i % 4]),
    );
    p.insert("stars".into(), json!(i % 1000));
    p.insert("archived".into(), json!(i.is_multiple_of(17)));
    p.insert("created".into(), json!("2026-01-02T03:04:05.000Z"));
    p.insert(
        "topics".into(),
        json!(["backend", format!("domain-{}", i % 9)]),
    );
    e
}

/// The same allocator as the `port-agent` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let count: usize = std::env::var("BENCH_ENTITIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);

    let emulator = EmulatorThread::start(
        EmulatorConfig::default(),
        vec![json!({"identifier": "service", "schema": {"properties": {
            "url": {"type": "string"}, "language": {"type": "string"}, "stars": {"type": "number"},
            "archived": {"type": "boolean"}, "created": {"type": "string", "format": "date-time"},
            "topics": {"type": "array"}
        }}})],
    )
    .unwrap();
    let base_url = emulator.base_url().to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let entities: Vec<Entity> = (0..count).map(entity).collect();
    let client = PortClient::new(PortClientConfig::new(
        base_url,
        "emulator-client",
        Secret::new("emulator-secret"),
        IntegrationIdentity {
            integration_type: "json".into(),
            version: "bench".into(),
            identifier: "bench".into(),
        },
    ))
    .unwrap();
    let started = Instant::now();
    let outcomes = runtime
        .block_on(client.upsert_entities("service", &entities, UpsertOptions::default()))
        .unwrap();
    let elapsed = started.elapsed();
    let accepted = outcomes
        .iter()
        .filter(|o| matches!(o, UpsertOutcome::Upserted { .. }))
        .count();
    let stats = emulator.stop();

    assert_eq!(accepted, count, "every entity must be accepted");
    assert_eq!(stats["entities_total"], count as u64);
    let requests = stats["requests"]["POST /v1/blueprints/{bp}/entities/bulk"]
        .as_u64()
        .unwrap_or(0);
    let mut out = std::io::stdout();
    writeln!(
        out,
        "emulator bulk upsert: {count} entities in {requests} bulk requests of up to 20"
    )
    .unwrap();
    writeln!(
        out,
        "  {:.2} s, {:.0} entities/s, {:.0} requests/s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    )
    .unwrap();
}
