//! The promise: kill -9 at any moment, lose any answer of Port's, change the data between runs,
//! and after one clean run Port holds exactly what an uninterrupted run would leave there, with
//! no orphan, and `state verify` finds nothing. Meanwhile the state never claims a value Port
//! does not hold.
//!
//! Every random choice comes from a seed, printed; `TEST_SEED=N` replays the choices (kills are
//! timed, so a replay lands them near, not exactly, where they fell). `FAULT_CYCLES=N` runs N
//! cycles instead of the CI's few dozen (a bench-style run: hundreds of kills).

// The seed and the progress per cycle are printed so that a failure can be understood and replayed.
#![allow(clippy::print_stderr)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use port_agent_core::entity_hash::hash_entity;
use port_agent_core::mapping::value::parse_raw;
use port_agent_core::mapping::{CompiledMapping, EnvAccess, PortAppConfig};
use port_agent_core::port::Entity;
use port_agent_core::rebuild::port_holds;
use port_agent_state::{Identity, StateStore};
use port_emulator::{Emulator, EmulatorConfig, FaultSpec};
use serde_json::{Value, json};

const ITEMS: usize = 4000;
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

/// A small deterministic generator.
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

/// `TEST_SEED` when set, else the clock; printed either way.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: TEST_SEED={seed}");
    seed
}

fn identity(base_url: &str) -> Identity {
    Identity {
        integration_type: "json".into(),
        integration_identifier: "crashy".into(),
        port_base_url: base_url.into(),
    }
}

fn item(i: usize, n: u64) -> Value {
    json!({"name": format!("svc-{i:05}"), "n": n})
}

fn write_items(dir: &Path, items: &[Value]) {
    let text: String = items.iter().map(|v| format!("{v}\n")).collect();
    // Written whole then renamed: a run never reads half a file.
    let partial = dir.join("services.jsonl.partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(partial, dir.join("services.jsonl")).unwrap();
}

fn setup(dir: &Path, base_url: &str, items: &[Value]) {
    std::fs::create_dir_all(dir.join(".port/resources")).unwrap();
    std::fs::write(
        dir.join(".port/resources/blueprints.json"),
        r#"[{"identifier": "service", "schema": {"properties": {"n": {"type": "number"}, "tag": {"type": "string"}}}}]"#,
    )
    .unwrap();
    std::fs::write(dir.join("port-app-config.yaml"), MAPPING).unwrap();
    write_items(dir, items);
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "port: {{base_url: '{base_url}', client_id: emulator-client, client_secret: emulator-secret, max_concurrency: {CONCURRENCY}, max_retries: 1}}\n\
             integration: {{identifier: crashy, type: json, config: {{kinds: {{service: ./services.jsonl}}}}}}\n\
             mapping: ./port-app-config.yaml\nstate: {{path: ./state.redb}}\n"
        ),
    )
    .unwrap();
}

fn initial_items() -> Vec<Value> {
    (0..ITEMS).map(|i| item(i, i as u64)).collect()
}

/// An emulator slowed down so that a resync takes about a second (kills and signals land inside
/// it), and a project folder pointing at it.
async fn slow_port_and_project() -> (Emulator, tempfile::TempDir) {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    slow(&emulator);
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &emulator.base_url(), &initial_items());
    (emulator, dir)
}

fn slow(emulator: &Emulator) {
    emulator
        .set_faults(FaultSpec {
            latency_ms: Some(25),
            ..Default::default()
        })
        .unwrap();
}

/// What the mapping makes of each item, by identifier: the entity and its hash, computed by the
/// same engine the agent runs.
struct Oracle {
    mapping: CompiledMapping,
    /// Every entity any version of the data produced, by hash: what a record may claim.
    by_hash: HashMap<[u8; 32], Entity>,
}

impl Oracle {
    fn new() -> Self {
        let config = PortAppConfig::from_yaml(MAPPING).unwrap();
        Self {
            mapping: CompiledMapping::compile(&config, EnvAccess::Denied.value()),
            by_hash: HashMap::new(),
        }
    }

    /// Learns the entities `items` produce.
    fn learn(&mut self, items: &[Value]) {
        let Some(Ok(resource)) = self.mapping.resources.first() else {
            panic!("the test mapping compiles")
        };
        for raw in items {
            let raw = parse_raw(raw.to_string().as_bytes()).unwrap();
            for entity in self.mapping.map_item(resource, &raw).entities {
                self.by_hash.insert(hash_entity(&entity).0, entity);
            }
        }
    }
}

/// Every record the state holds settled (not in doubt) names a value Port must hold: the
/// entity whose hash it recorded. Returns (settled, in doubt).
fn state_never_claims_more_than_port_has(
    dir: &Path,
    emulator: &Emulator,
    oracle: &Oracle,
) -> (usize, usize) {
    let path = dir.join("state.redb");
    if !path.exists() {
        return (0, 0);
    }
    let store = StateStore::open(&path, &identity(&emulator.base_url()))
        .expect("the state opens after any fault");
    let in_port: HashMap<String, Value> = emulator
        .entities()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["identifier"].as_str().unwrap().to_owned(), e.clone()))
        .collect();
    let (mut settled, mut doubtful) = (0, 0);
    for ((_, id), record) in store.entities(|_, _| true).unwrap() {
        if record.doubt.is_some() {
            doubtful += 1;
            continue;
        }
        settled += 1;
        let claimed = oracle
            .by_hash
            .get(&record.hash)
            .unwrap_or_else(|| panic!("{id}: the state records a hash no data ever produced"));
        let held = in_port
            .get(&id)
            .unwrap_or_else(|| panic!("the state records {id}, which Port does not have"));
        assert!(
            port_holds(claimed, held),
            "the state claims Port holds {claimed:?} for {id}; Port holds {held}"
        );
    }
    (settled, doubtful)
}

/// Changes the data as a source would between runs: values going back and forth, items
/// removed and coming back, new items.
fn change_data(rng: &mut Lcg, present: &mut BTreeMap<usize, u64>) {
    // Some cycles change nothing: the raw-item cache then vouches for whole batches.
    if rng.below(4) == 0 {
        return;
    }
    for _ in 0..rng.below(40) {
        let i = rng.below(ITEMS as u64 + 200) as usize;
        match rng.below(3) {
            // A value flips between two versions: back and forth.
            0 => {
                let n = present.entry(i).or_insert(i as u64);
                *n = if *n == i as u64 {
                    i as u64 + 1_000_000
                } else {
                    i as u64
                };
            }
            1 => {
                present.remove(&i);
            }
            _ => {
                present.entry(i).or_insert(i as u64);
            }
        }
    }
}

fn items_of(present: &BTreeMap<usize, u64>) -> Vec<Value> {
    present.iter().map(|(&i, &n)| item(i, n)).collect()
}

/// One resync with a fault: killed at a random moment, answers lost, answers slowed and the
/// agent killed while Port has applied a write, or Port failing mid-run. Returns what it did.
async fn faulty_run(rng: &mut Lcg, dir: &Path, emulator: &Emulator) -> &'static str {
    let fault = rng.below(4);
    let spec = match fault {
        1 => FaultSpec {
            latency_ms: Some(25),
            lose_answers: Some(true),
            ratio: Some(0.3),
            ..Default::default()
        },
        2 => FaultSpec {
            latency_ms: Some(25),
            answer_delay_ms: Some(200 + rng.below(400)),
            ..Default::default()
        },
        3 => FaultSpec {
            latency_ms: Some(25),
            status: Some(503),
            ratio: Some(0.2),
            ..Default::default()
        },
        _ => FaultSpec {
            latency_ms: Some(25),
            ..Default::default()
        },
    };
    emulator.set_faults(spec).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["resync", "--config", "agent.yaml"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kill_after = Duration::from_millis(50 + rng.below(1500));
    let deadline = tokio::time::Instant::now() + kill_after;
    let killed = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        if tokio::time::Instant::now() >= deadline {
            // Child::kill is SIGKILL on Unix: no destructor, no flush, no goodbye.
            child.kill().unwrap();
            tokio::task::spawn_blocking(move || child.wait().unwrap())
                .await
                .unwrap();
            break true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    match (fault, killed) {
        (1, true) => "answers lost, then killed",
        (1, false) => "answers lost",
        (2, true) => "killed while answers were held back",
        (2, false) => "answers held back",
        (3, true) => "Port failing, then killed",
        (3, false) => "Port failing",
        (_, true) => "killed",
        (_, false) => "ran to the end",
    }
}

/// Port's content (values, not only identifiers) after one uninterrupted run of `items` on a
/// fresh Port and a fresh state.
async fn uninterrupted(items: &[Value]) -> BTreeMap<(String, String), Value> {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), &emulator.base_url(), items);
    let out = support::agent_in(dir.path(), &["resync", "--config", "agent.yaml"]).await;
    support::assert_success(&out);
    support::port_content(&emulator)
}

fn cycles() -> usize {
    std::env::var("FAULT_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kills_lost_answers_and_data_changes_port_ends_as_an_uninterrupted_run_leaves_it() {
    let mut rng = Lcg(seed("fault loop"));
    let (emulator, dir) = slow_port_and_project().await;
    let mut oracle = Oracle::new();
    let mut present: BTreeMap<usize, u64> = (0..ITEMS).map(|i| (i, i as u64)).collect();
    oracle.learn(&items_of(&present));

    let mut kills = 0;
    for cycle in 0..cycles() {
        if cycle > 0 {
            change_data(&mut rng, &mut present);
            let items = items_of(&present);
            oracle.learn(&items);
            write_items(dir.path(), &items);
        }
        let what = faulty_run(&mut rng, dir.path(), &emulator).await;
        kills += usize::from(what.contains("killed"));
        emulator.set_faults(FaultSpec::default()).unwrap();
        let (settled, doubtful) = tokio::task::block_in_place(|| {
            state_never_claims_more_than_port_has(dir.path(), &emulator, &oracle)
        });
        eprintln!("cycle {cycle}: {what}; state: {settled} settled, {doubtful} in doubt");
    }
    assert!(
        kills > 0,
        "no cycle killed the agent; the test proved nothing"
    );

    // One clean run: Port must hold exactly what an uninterrupted run leaves, value for value.
    let out = support::agent_in(dir.path(), &["resync", "--config", "agent.yaml", "--json"]).await;
    support::assert_success(&out);
    let expected = uninterrupted(&items_of(&present)).await;
    support::assert_same_content(&support::port_content(&emulator), &expected);
    let (_, doubtful) = state_never_claims_more_than_port_has(dir.path(), &emulator, &oracle);
    assert_eq!(doubtful, 0, "a clean run settles every doubt");
    let verify =
        support::agent_in(dir.path(), &["state", "verify", "--config", "agent.yaml"]).await;
    support::assert_success(&verify);

    // And it stays settled: the next run sends nothing.
    let before = emulator.stats()["entities_upserted"].clone();
    let out = support::agent_in(dir.path(), &["resync", "--config", "agent.yaml", "--json"]).await;
    support::assert_success(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["totals"]["upserted"], 0, "{summary}");
    assert_eq!(summary["totals"]["deleted"], 0, "{summary}");
    assert_eq!(emulator.stats()["entities_upserted"], before);
}

/// Without data changes, kills cost at most the writes in doubt: nothing Port acknowledged is
/// sent again beyond them, and nothing is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_the_agent_resends_only_what_was_in_doubt() {
    let mut rng = Lcg(seed("kill loop"));
    let (emulator, dir) = slow_port_and_project().await;
    let mut oracle = Oracle::new();
    oracle.learn(&initial_items());
    let mut doubtful_after_kills = 0;
    for _ in 0..10 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_port-agent"))
            .args(["resync", "--config", "agent.yaml"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50 + rng.below(600))).await;
        child.kill().unwrap();
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        let (_, doubtful) = tokio::task::block_in_place(|| {
            state_never_claims_more_than_port_has(dir.path(), &emulator, &oracle)
        });
        doubtful_after_kills += doubtful as u64;
    }
    emulator.set_faults(FaultSpec::default()).unwrap();
    let out = support::agent_in(dir.path(), &["resync", "--config", "agent.yaml"]).await;
    support::assert_success(&out);
    let stats = emulator.stats();
    assert_eq!(stats["entities_total"], ITEMS as u64);
    assert_eq!(
        stats["entities_deleted"], 0,
        "a kill must never lead to deletions"
    );
    let upserts: u64 = stats["upserts_per_entity"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let resent = upserts - ITEMS as u64;
    eprintln!("{resent} entities sent again; {doubtful_after_kills} were in doubt after the kills");
    assert!(
        resent <= doubtful_after_kills,
        "{resent} entities were sent again, more than the {doubtful_after_kills} in doubt"
    );
    support::assert_same_content(
        &support::port_content(&emulator),
        &uninterrupted(&initial_items()).await,
    );
}

/// An interrupted run's summary: exit 1, `status`, a note containing `note`, and how many
/// entities it sent, which Port and the state must both hold, with nothing deleted.
fn interrupted_run(out: &Output, dir: &Path, emulator: &Emulator, status: &str, note: &str) -> u64 {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["status"], status, "{summary}");
    assert!(summary["notes"].to_string().contains(note), "{summary}");
    let sent = summary["totals"]["upserted"].as_u64().unwrap();
    assert!(sent >= 400 && sent < ITEMS as u64, "{summary}");
    let stats = emulator.stats();
    assert_eq!(stats["entities_deleted"], 0);
    let store = StateStore::open(&dir.join("state.redb"), &identity(&emulator.base_url())).unwrap();
    assert_eq!(
        serde_json::to_value(store.runs(1).unwrap()[0].status).unwrap(),
        status,
        "the run is recorded as it ended"
    );
    drop(store);
    let mut oracle = Oracle::new();
    oracle.learn(&initial_items());
    let (settled, _) = state_never_claims_more_than_port_has(dir, emulator, &oracle);
    assert_eq!(
        settled as u64, sent,
        "the state records what Port acknowledged"
    );
    sent
}

/// With Port healthy again, the next run sends what the interrupted one had not got
/// acknowledged, and Port ends as an uninterrupted run leaves it.
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
    support::assert_same_content(
        &support::port_content(emulator),
        &uninterrupted(&initial_items()).await,
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
    assert_eq!(emulator.stats()["entities_total"], sent);
    assert_eq!(
        emulator.integration("crashy").unwrap()["resyncState"]["status"],
        "aborted",
        "Port is told the run was aborted"
    );
    the_next_run_sends_the_rest(dir.path(), &emulator, sent).await;
    let per_entity = emulator.stats()["upserts_per_entity"].clone();
    assert!(
        per_entity.as_object().unwrap().values().all(|n| n == 1),
        "an entity Port had acknowledged was sent again"
    );
}

/// Port fails for good in the middle of a resync: the run ends as failed (recorded, not left
/// "running"), deletes nothing, and once Port is back the next run sends only what Port had not
/// acknowledged (what was in flight when it failed is in doubt, and sent again).
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

/// Waits until Port has taken `n` entities: the run is well under way.
async fn wait_for_upserts(emulator: &Emulator, n: u64) {
    support::wait_until(Duration::from_secs(60), "Port takes the upserts", || {
        emulator.stats()["entities_upserted"].as_u64().unwrap() >= n
    })
    .await;
}
