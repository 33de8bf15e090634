//! `port-agent run`: the agent as a long-running service against the Port emulator.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Project, service, start_agent_in, terminate};

/// Sets the event listener and has the HTTP server listen on a free loopback port; returns it.
fn listen_with(project: &Project, listener: &str) -> String {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = free.local_addr().unwrap().to_string();
    drop(free);
    let path = project.root().join("agent.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    let changed = config.replace(
        "event_listener: {type: ONCE}",
        &format!("{listener}\nhttp: {{listen: '{address}'}}"),
    );
    assert_ne!(config, changed);
    std::fs::write(path, changed).unwrap();
    address
}

/// One plain HTTP/1.1 request: the status and the body.
async fn http(address: &str, method: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// The value of one series in `/metrics`.
async fn metric(address: &str, series: &str) -> Option<f64> {
    let (_, text) = http(address, "GET", "/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
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
    let address = listen_with(&project, "event_listener: {type: POLLING, interval: 1}");
    let child = start_agent_in(project.root(), &["run", "--config", "agent.yaml"]);

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
    assert_eq!(
        http(&address, "GET", "/health/ready").await,
        Some((200, "ready".to_owned()))
    );
    assert_eq!(
        metric(&address, "port_agent_runs_total{status=\"completed\"}").await,
        Some(2.0)
    );
    assert_eq!(
        metric(&address, "port_agent_state_entities").await,
        Some(55.0)
    );
    // POLLING has no webhook trigger.
    assert_eq!(
        http(&address, "POST", "/resync").await.map(|r| r.0),
        Some(404)
    );

    let out = terminate(child).await;
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
    let path = project.root().join("agent.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{config}scheduled_resync_interval: 90\n")).unwrap();
    let out = project.agent(&["run", "--config", "agent.yaml"]).await;
    support::assert_success(&out);
    assert_eq!(project.stats()["entities_total"], 15);

    // Port's resync state tells when the next scheduled run is due, as Ocean reports it.
    let integration = project.emulator.integration("my-services").unwrap();
    let resync = &integration["resyncState"];
    assert_eq!(resync["status"], "completed");
    assert_eq!(resync["intervalInMinuets"], 90);
    let time =
        |field: &str| -> jiff::Timestamp { resync[field].as_str().unwrap().parse().unwrap() };
    let ahead = time("nextResync").duration_since(time("lastResyncEnd"));
    assert!(
        (ahead.as_secs() - 90 * 60).abs() <= 1,
        "next resync {ahead:?} after the last one"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_webhook_a_post_to_resync_starts_a_run() {
    let project = Project::new(20).await;
    let address = listen_with(&project, "event_listener: {type: WEBHOOK}");
    let child = start_agent_in(project.root(), &["run", "--config", "agent.yaml"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((status, _)) = http(&address, "GET", "/health/live").await {
            assert_eq!(status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "the HTTP server never came up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ready = None;
    while ready != Some(200) {
        assert!(Instant::now() < deadline, "never ready");
        ready = http(&address, "GET", "/health/ready").await.map(|r| r.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(project.stats()["entities_total"], 25);

    let mut services: Vec<Value> = (0..20).map(service).collect();
    services[3]["stars"] = json!(9999);
    project.write_services(&services);
    assert_eq!(
        http(&address, "POST", "/resync").await.map(|r| r.0),
        Some(202)
    );
    wait_until("the webhook's resync sent the change", || {
        upserts_of(&project, "service/svc-0003") == 2
    })
    .await;
    let mut completed = None;
    while completed != Some(2.0) {
        assert!(Instant::now() < deadline, "the second run never ended");
        completed = metric(&address, "port_agent_runs_total{status=\"completed\"}").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(&address, "port_agent_entities_total{outcome=\"upserted\"}").await,
        Some(26.0)
    );

    let out = terminate(child).await;
    support::assert_success(&out);
    assert!(
        http(&address, "GET", "/health/live").await.is_none(),
        "still serving after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_start_by_themselves_and_pick_up_changes() {
    let project = Project::new(10).await;
    // 0.02 minutes = 1.2 s; Port's resync request is polled too rarely to matter here.
    let address = listen_with(
        &project,
        "event_listener: {type: POLLING, interval: 600}\nscheduled_resync_interval: 0.02",
    );
    let child = start_agent_in(project.root(), &["run", "--config", "agent.yaml"]);
    let completed = "port_agent_runs_total{status=\"completed\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&address, completed).await.unwrap_or(0.0) < 2.0 {
        assert!(Instant::now() < deadline, "no scheduled run came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut services: Vec<Value> = (0..10).map(service).collect();
    services[4]["lang"] = json!("zig");
    project.write_services(&services);
    wait_until("a scheduled run sent the change", || {
        upserts_of(&project, "service/svc-0004") == 2
    })
    .await;
    let out = terminate(child).await;
    assert_eq!(out.status.code(), Some(0));
    // Only the changed entity was sent again, however many runs came.
    assert_eq!(project.stats()["entities_upserted"], 16);

    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let state: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let triggers: Vec<&str> = state["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trigger"].as_str().unwrap())
        .collect();
    assert!(triggers.len() >= 3, "{triggers:?}");
    assert_eq!(triggers.last(), Some(&"start"));
    assert!(
        triggers[..triggers.len() - 1]
            .iter()
            .all(|t| *t == "schedule"),
        "{triggers:?}"
    );
}
