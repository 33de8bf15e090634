//! Writes whose answer never arrived (issue 8, finding 1). Port may have applied them or not;
//! the state must not keep claiming the old value, nor forget an entity Port may hold. Each test
//! ends by comparing Port's whole content with what one uninterrupted run on the same data
//! leaves there.

mod support;

use std::time::Duration;

use port_emulator::FaultSpec;
use serde_json::{Value, json};
use support::{Project, service};

const SERVICES: usize = 10;

/// A project whose agent gives up on Port quickly (two attempts per request).
async fn project() -> Project {
    let project = Project::new(SERVICES).await;
    project.set_port_settings("max_retries: 1");
    let (code, _, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    project
}

fn lose_every_answer(project: &Project) {
    project
        .emulator
        .set_faults(FaultSpec {
            lose_answers: Some(true),
            ..Default::default()
        })
        .unwrap();
}

fn heal(project: &Project) {
    project.emulator.set_faults(FaultSpec::default()).unwrap();
}

/// With Port healthy again and the data at `services`, one run completes, Port then holds what
/// one uninterrupted run of the same data leaves, and `state verify` finds nothing. Returns the
/// run's summary.
async fn the_next_clean_run_leaves_port_as_one_run_would(
    project: &Project,
    services: &[Value],
) -> Value {
    project.write_services(services);
    let (code, summary, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    support::assert_same_content(
        &project.port_content(),
        &support::uninterrupted_run(services).await,
    );
    verify_is_clean(project).await;
    summary
}

/// The state agrees with Port afterwards: `state verify` finds nothing.
async fn verify_is_clean(project: &Project) {
    let out = project
        .agent(&["state", "verify", "--config", "agent.yaml"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "state verify found drift: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Regression: Rust → Go with the answer lost (Port applied Go), then back to Rust. The state
/// kept Rust's hash, so every later resync reported "unchanged" while Port kept Go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_answer_was_lost_is_sent_again_when_the_item_goes_back() {
    let project = project().await;
    let mut services: Vec<Value> = (0..SERVICES).map(service).collect();
    let original = services[4]["lang"].clone();
    services[4]["lang"] = json!("zig");
    project.write_services(&services);
    lose_every_answer(&project);
    let (code, summary, _) = project.resync(&[]).await;
    assert_eq!(code, 1, "{summary}");
    assert_eq!(summary["status"], "failed");
    assert_eq!(
        project.port_entity("svc-0004")["properties"]["language"],
        "zig",
        "the fault applies the write and loses only its answer"
    );

    heal(&project);
    services[4]["lang"] = original.clone();
    the_next_clean_run_leaves_port_as_one_run_would(&project, &services).await;
    assert_eq!(
        project.port_entity("svc-0004")["properties"]["language"],
        original
    );

    // Once settled, nothing is in doubt: the next run sends nothing.
    let writes = project.writes();
    let (_, summary, _) = project.resync(&[]).await;
    assert_eq!(summary["totals"]["upserted"], 0, "{summary}");
    assert_eq!(project.writes(), writes);
}

/// Regression: a deletion Port applied without the agent hearing of it. The state kept the
/// entity, so when the item came back it was "unchanged" and never re-created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_whose_answer_was_lost_is_not_forgotten_when_the_item_comes_back() {
    let project = project().await;
    let services: Vec<Value> = (0..SERVICES).map(service).collect();
    let without: Vec<Value> = services
        .iter()
        .filter(|s| s["name"] != "svc-0005")
        .cloned()
        .collect();
    project.write_services(&without);
    lose_every_answer(&project);
    let (code, summary, _) = project.resync(&[]).await;
    assert_ne!(code, 0, "{summary}");
    assert!(
        !project
            .port_content()
            .contains_key(&("service".to_owned(), "svc-0005".to_owned())),
        "the fault applies the deletion and loses only its answer"
    );

    heal(&project);
    the_next_clean_run_leaves_port_as_one_run_would(&project, &services).await;
}

/// Regression: a new entity Port created without the agent hearing of it, then removed from
/// the data: the state never knew it, so it stayed in Port for ever, an orphan.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_entity_whose_answer_was_lost_is_deleted_once_no_item_produces_it() {
    let project = project().await;
    let services: Vec<Value> = (0..SERVICES).map(service).collect();
    let mut with_new = services.clone();
    with_new.push(service(SERVICES));
    project.write_services(&with_new);
    lose_every_answer(&project);
    let (code, summary, _) = project.resync(&[]).await;
    assert_eq!(code, 1, "{summary}");
    project.port_entity(&format!("svc-{SERVICES:04}"));

    heal(&project);
    let summary = the_next_clean_run_leaves_port_as_one_run_would(&project, &services).await;
    assert_eq!(summary["totals"]["deleted"], 1, "{summary}");
}

/// The same story with a kill: Port applied the update, the agent was killed (SIGKILL) before
/// the answer arrived, and the item went back to its old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_applied_just_before_a_kill_is_sent_again_when_the_item_goes_back() {
    let project = project().await;
    let mut services: Vec<Value> = (0..SERVICES).map(service).collect();
    let original = services[2]["lang"].clone();
    services[2]["lang"] = json!("zig");
    project.write_services(&services);
    project
        .emulator
        .set_faults(FaultSpec {
            answer_delay_ms: Some(60_000),
            ..Default::default()
        })
        .unwrap();
    let upserted_before = project.stats()["entities_upserted"].as_u64().unwrap();
    let mut child = support::start_agent_in(project.root(), &["resync", "--config", "agent.yaml"]);
    support::wait_until(Duration::from_secs(30), "Port applies the update", || {
        project.stats()["entities_upserted"].as_u64().unwrap() > upserted_before
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        project.port_entity("svc-0002")["properties"]["language"],
        "zig"
    );

    heal(&project);
    services[2]["lang"] = original.clone();
    the_next_clean_run_leaves_port_as_one_run_would(&project, &services).await;
}
