//! `port-agent run`: the agent as a long-running service against the Port emulator.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Project, service};

fn listen_with(project: &Project, listener: &str) {
    let path = project.root().join("agent.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    let changed = config.replace("event_listener: {type: ONCE}", listener);
    assert_ne!(config, changed);
    std::fs::write(path, changed).unwrap();
}

/// Waits (up to 30 s) until `done` holds.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn upserts_of(project: &Project, key: &str) -> u64 {
    project.stats()["upserts_per_entity"][key]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_resyncs_at_start_and_on_a_port_request_then_stops_cleanly() {
    let project = Project::new(50).await;
    listen_with(&project, "event_listener: {type: POLLING, interval: 1}");
    let child = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["run", "--config", "agent.yaml"])
        .current_dir(project.root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    wait_until("the start resync sent everything", || {
        project.stats()["entities_total"] == 55
    })
    .await;

    // Data changes, then someone presses "Resync" in Port: only the changed entity is sent.
    let mut services: Vec<Value> = (0..50).map(service).collect();
    services[7]["lang"] = json!("zig");
    project.write_services(&services);
    project.emulator.request_resync("my-services");
    wait_until("the requested resync sent the change", || {
        upserts_of(&project, "service/svc-0007") == 2
    })
    .await;
    // A poll that finds the same request does not start another run.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let stopped = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(project.stats()["entities_upserted"], 56, "{stderr}");

    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let state: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let runs: Vec<(String, String)> = state["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["trigger"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Newest first: exactly the start run and the requested one.
    assert_eq!(
        runs,
        [
            ("port-request".to_owned(), "completed".to_owned()),
            ("start".to_owned(), "completed".to_owned())
        ]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("Completed").count(), 2, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_once_the_service_runs_one_resync_and_exits() {
    let project = Project::new(10).await;
    let out = project.agent(&["run", "--config", "agent.yaml"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(project.stats()["entities_total"], 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_not_built_yet_is_refused_before_anything_is_sent() {
    let project = Project::new(10).await;
    listen_with(&project, "event_listener: {type: KAFKA}");
    let out = project.agent(&["run", "--config", "agent.yaml"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("agent.yaml") && stderr.contains("Kafka"),
        "{stderr}"
    );
    assert_eq!(project.stats()["entities_total"], 0);
}
