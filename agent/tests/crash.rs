//! The promise: kill -9 at any moment, start again, and nothing is lost, nothing Port already
//! acknowledged is sent again (beyond the writes in flight at the kill), nothing is deleted
//! wrongly, and Port ends as an uninterrupted run would leave it.

// The seed and the progress per kill are printed so that a failure can be understood and replayed.
#![allow(clippy::print_stderr)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use port_agent_state::{Identity, StateStore};
use port_emulator::{Emulator, EmulatorConfig, FaultSpec};
use serde_json::{Value, json};

const ITEMS: usize = 4000;
const KILLS: usize = 10;
/// `port.max_concurrency` of the agent under test: at most this many bulk requests in flight.
const CONCURRENCY: u64 = 2;

const MAPPING: &str = r#"
resources:
  - kind: service
    selector: {query: 'true'}
    port:
      entity:
        mappings:
          identifier: .name
          blueprint: '"service"'
          properties: {n: .n, tag: '.name | ascii_upcase'}
"#;

/// A small deterministic generator; the seed is printed so a failure can be replayed.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn identity(base_url: &str) -> Identity {
    Identity {
        integration_type: "json".into(),
        integration_identifier: "crashy".into(),
        port_base_url: base_url.into(),
    }
}

fn setup(dir: &Path, base_url: &str) {
    std::fs::create_dir_all(dir.join(".port/resources")).unwrap();
    std::fs::write(
        dir.join(".port/resources/blueprints.json"),
        r#"[{"identifier": "service", "schema": {"properties": {"n": {"type": "number"}, "tag": {"type": "string"}}}}]"#,
    )
    .unwrap();
    std::fs::write(dir.join("port-app-config.yaml"), MAPPING).unwrap();
    let items: String = (0..ITEMS)
        .map(|i| format!("{}\n", json!({"name": format!("svc-{i:05}"), "n": i})))
        .collect();
    std::fs::write(dir.join("services.jsonl"), items).unwrap();
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "port: {{base_url: '{base_url}', client_id: emulator-client, client_secret: emulator-secret, max_concurrency: {CONCURRENCY}, max_retries: 2}}\n\
             integration: {{identifier: crashy, type: json, config: {{kinds: {{service: ./services.jsonl}}}}}}\n\
             mapping: ./port-app-config.yaml\nstate: {{path: ./state.redb}}\n"
        ),
    )
    .unwrap();
}

/// An emulator slowed down so that a resync takes about a second (kills and signals land inside
/// it), and a project folder pointing at it.
async fn slow_port_and_project() -> (Emulator, tempfile::TempDir) {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emulator
        .set_faults(FaultSpec {
            latency_ms: Some(25),
            ..Default::default()
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &emulator.base_url());
    (emulator, dir)
}

/// Every entity the state says Port has must be in Port, with the content the state hashed.
fn state_never_claims_more_than_port_has(dir: &Path, emulator: &Emulator) -> usize {
    let store = StateStore::open(&dir.join("state.redb"), &identity(&emulator.base_url()))
        .expect("the state opens after a kill");
    let recorded = store.entities(|_, _| true).unwrap();
    let in_port: std::collections::HashMap<String, Value> = emulator
        .entities()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["identifier"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    for ((_, id), _) in &recorded {
        let entity = in_port
            .get(id)
            .unwrap_or_else(|| panic!("the state records {id}, which Port does not have"));
        let n: usize = id.trim_start_matches("svc-").parse().unwrap();
        assert_eq!(entity["properties"]["n"], n, "{id}");
    }
    recorded.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_the_agent_ends_where_an_uninterrupted_run_would() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash loop seed {seed}");
    let mut rng = Lcg(seed);
    let (emulator, dir) = slow_port_and_project().await;

    let mut recorded_after_kills = Vec::new();
    for _ in 0..KILLS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_port-agent"))
            .args(["resync", "--config", "agent.yaml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(600))).await;
        // Child::kill is SIGKILL on Unix: no destructor, no flush, no goodbye.
        child.kill().unwrap();
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let dir_path = dir.path().to_owned();
        let recorded = tokio::task::spawn_blocking({
            let base_url = emulator.base_url();
            let entities = emulator.entities();
            move || {
                // Re-check against a snapshot taken after the kill, so no write is in flight.
                let store = StateStore::open(&dir_path.join("state.redb"), &identity(&base_url));
                match store {
                    Ok(store) => {
                        let recorded = store.entities(|_, _| true).unwrap();
                        let ids: std::collections::HashSet<&str> = entities
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| e["identifier"].as_str().unwrap())
                            .collect();
                        for ((_, id), _) in &recorded {
                            assert!(
                                ids.contains(id.as_str()),
                                "the state records {id}, which Port does not have"
                            );
                        }
                        recorded.len()
                    }
                    // Killed before the state file was first written: nothing recorded.
                    Err(port_agent_state::StateError::Corrupt { .. }) => {
                        panic!("a kill left a corrupt state file")
                    }
                    Err(_) => 0,
                }
            }
        })
        .await
        .unwrap();
        recorded_after_kills.push(recorded);
    }
    eprintln!("entities recorded after each kill: {recorded_after_kills:?}");

    // Now let it finish.
    emulator.set_faults(FaultSpec::default()).unwrap();
    let out = support::agent_in(dir.path(), &["resync", "--config", "agent.yaml", "--json"]).await;
    support::assert_success(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Port holds exactly what an uninterrupted run would have put there.
    let stats = emulator.stats();
    assert_eq!(stats["entities_total"], ITEMS as u64);
    assert_eq!(
        stats["entities_deleted"], 0,
        "a killed run must never lead to deletions"
    );
    assert_eq!(
        state_never_claims_more_than_port_has(dir.path(), &emulator),
        ITEMS
    );
    // What the last run still had to send is what the killed runs had not got acknowledged.
    let last_recorded = *recorded_after_kills.last().unwrap() as u64;
    assert_eq!(
        summary["totals"]["upserted"].as_u64().unwrap(),
        ITEMS as u64 - last_recorded
    );

    // Nothing acknowledged is sent again: resends are bounded by the writes in flight at each
    // kill (CONCURRENCY bulk requests of 20).
    let upserts: u64 = stats["upserts_per_entity"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let resent = upserts - ITEMS as u64;
    eprintln!("upserts {upserts} for {ITEMS} entities: {resent} resent across {KILLS} kills");
    assert!(
        resent <= KILLS as u64 * CONCURRENCY * 20,
        "{resent} entities were sent again"
    );
    assert!(
        recorded_after_kills.iter().any(|&n| n > 0),
        "no kill landed after progress was made; the test proved nothing"
    );
}

/// Waits until Port has taken `n` entities: the run is well under way.
async fn wait_for_upserts(emulator: &Emulator, n: u64) {
    while emulator.stats()["entities_upserted"].as_u64().unwrap() < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An interrupted run's summary: exit 1, `status`, a note containing `note`, and how many
/// entities it sent, which Port and the state must both hold exactly, with nothing deleted.
fn interrupted_run(out: &Output, dir: &Path, emulator: &Emulator, status: &str, note: &str) -> u64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], status, "{summary}");
    assert!(summary["notes"].to_string().contains(note), "{summary}");
    let sent = summary["totals"]["upserted"].as_u64().unwrap();
    assert!(sent >= 400 && sent < ITEMS as u64, "{summary}");
    let stats = emulator.stats();
    assert_eq!(stats["entities_total"], sent);
    assert_eq!(stats["entities_deleted"], 0);
    let store = StateStore::open(&dir.join("state.redb"), &identity(&emulator.base_url())).unwrap();
    assert_eq!(
        serde_json::to_value(store.runs(1).unwrap()[0].status).unwrap(),
        status,
        "the run is recorded as it ended"
    );
    drop(store);
    assert_eq!(
        state_never_claims_more_than_port_has(dir, emulator) as u64,
        sent
    );
    sent
}

/// With Port healthy again, the next run sends exactly what the interrupted one had not: every
/// entity reaches Port once.
async fn the_next_run_sends_the_rest(dir: &Path, emulator: &Emulator, sent: u64) {
    emulator.set_faults(FaultSpec::default()).unwrap();
    let out = support::agent_in(dir, &["resync", "--config", "agent.yaml", "--json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["totals"]["upserted"].as_u64(),
        Some(ITEMS as u64 - sent)
    );
    let stats = emulator.stats();
    assert_eq!(stats["entities_total"], ITEMS as u64);
    assert_eq!(stats["entities_deleted"], 0);
    let per_entity = stats["upserts_per_entity"].as_object().unwrap();
    assert_eq!(per_entity.len(), ITEMS);
    assert!(
        per_entity.values().all(|n| n == 1),
        "an entity Port had acknowledged was sent again"
    );
}

/// SIGTERM (systemd stopping the service) mid-resync: the run ends as aborted once the Port
/// requests in flight are answered and recorded, deletes nothing, and the next run sends only
/// what the stopped one had not: every entity reaches Port exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_signal_ends_the_run_as_aborted_and_nothing_is_sent_twice() {
    let (emulator, dir) = slow_port_and_project().await;
    let child =
        support::start_agent_in(dir.path(), &["resync", "--config", "agent.yaml", "--json"]);
    wait_for_upserts(&emulator, 400).await;
    let out = support::terminate(child).await;
    let sent = interrupted_run(&out, dir.path(), &emulator, "aborted", "asked to stop");
    the_next_run_sends_the_rest(dir.path(), &emulator, sent).await;
}

/// Port fails for good in the middle of a resync: the run ends as failed (recorded, not left
/// "running"), deletes nothing, and once Port is back the next run sends only what Port had not
/// acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_failing_mid_run_ends_the_run_as_failed_and_the_next_sends_the_rest() {
    let (emulator, dir) = slow_port_and_project().await;
    let child =
        support::start_agent_in(dir.path(), &["resync", "--config", "agent.yaml", "--json"]);
    wait_for_upserts(&emulator, 400).await;
    emulator
        .set_faults(FaultSpec {
            status: Some(503),
            ..Default::default()
        })
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let sent = interrupted_run(&out, dir.path(), &emulator, "failed", "503");
    the_next_run_sends_the_rest(dir.path(), &emulator, sent).await;
}
