//! `port-agent run`: the agent as a long-running service against the Port emulator.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Project, RunningService, service, use_listener};

async fn wait_until(what: &str, done: impl FnMut() -> bool) {
    support::wait_until(Duration::from_secs(30), what, done).await;
}

fn upserts_of(project: &Project, key: &str) -> u64 {
    project.stats()["upserts_per_entity"][key]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_resyncs_at_start_and_on_a_port_request_then_stops_cleanly() {
    let project = Project::new(50).await;
    use_listener(&project, "event_listener: {type: POLLING, interval: 1}");
    let agent = RunningService::start(project.root()).await;

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
        agent.http("GET", "/health/ready").await,
        Some((200, "ready".to_owned()))
    );
    agent
        .wait_for_metric("port_agent_runs_total{status=\"completed\"}", 2.0)
        .await;
    assert_eq!(agent.metric("port_agent_state_entities").await, Some(55.0));
    // POLLING has no webhook trigger.
    assert_eq!(agent.http("POST", "/resync").await.map(|r| r.0), Some(404));

    let (code, stdout, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
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
    use_listener(&project, "event_listener: {type: KAFKA}");
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
    use_listener(&project, "event_listener: {type: WEBHOOK}");
    let agent = RunningService::start(project.root()).await;
    assert_eq!(
        agent.http("GET", "/health/live").await.map(|r| r.0),
        Some(200)
    );
    wait_until("ready", || project.stats()["entities_total"] == 25).await;
    let completed = "port_agent_runs_total{status=\"completed\"}";
    agent.wait_for_metric(completed, 1.0).await;
    assert_eq!(
        agent.http("GET", "/health/ready").await.map(|r| r.0),
        Some(200)
    );

    let mut services: Vec<Value> = (0..20).map(service).collect();
    services[3]["stars"] = json!(9999);
    project.write_services(&services);
    assert_eq!(agent.http("POST", "/resync").await.map(|r| r.0), Some(202));
    wait_until("the webhook's resync sent the change", || {
        upserts_of(&project, "service/svc-0003") == 2
    })
    .await;
    agent.wait_for_metric(completed, 2.0).await;
    assert_eq!(
        agent
            .metric("port_agent_entities_total{outcome=\"upserted\"}")
            .await,
        Some(26.0)
    );

    let address = agent.address.clone();
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        support::http(&address, "GET", "/health/live")
            .await
            .is_none(),
        "still serving after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_runs_start_by_themselves_and_pick_up_changes() {
    let project = Project::new(10).await;
    // 0.02 minutes = 1.2 s; Port's resync request is polled too rarely to matter here.
    use_listener(
        &project,
        "event_listener: {type: POLLING, interval: 600}\nscheduled_resync_interval: 0.02",
    );
    let agent = RunningService::start(project.root()).await;
    let completed = "port_agent_runs_total{status=\"completed\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while agent.metric(completed).await.unwrap_or(0.0) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled run came"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Written whole then renamed: a scheduled run never reads half a file (an empty read
    // would delete everything).
    let mut services: Vec<Value> = (0..10).map(service).collect();
    services[4]["lang"] = json!("zig");
    project.write_services(&services);
    wait_until("a scheduled run sent the change", || {
        upserts_of(&project, "service/svc-0004") == 2
    })
    .await;
    let (code, _, _) = agent.terminate().await;
    assert_eq!(code, Some(0));
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

/// Regression: SIGHUP killed the service (exit 129) and left its run "running". It now reads
/// the configuration again and resyncs with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_configuration_again_and_resyncs() {
    let project = Project::new(10).await;
    use_listener(&project, "event_listener: {type: WEBHOOK}");
    let agent = RunningService::start(project.root()).await;
    let completed = "port_agent_runs_total{status=\"completed\"}";
    agent.wait_for_metric(completed, 1.0).await;
    // A mapping change: services above 0 stars are now "high".
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        support::mapping(0),
    )
    .unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    agent.wait_for_metric(completed, 2.0).await;
    assert_eq!(
        project.port_entity("svc-0001")["properties"]["tier"],
        "high"
    );
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let state: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(state["runs"][0]["trigger"], "reload");
    assert_eq!(state["runs"][0]["status"], "completed");
}

/// A run that cannot start (Port down) is logged and counted; the service carries on, and the
/// next run, with the configuration as it is then, works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_carries_on_when_a_run_cannot_start() {
    let project = Project::new(10).await;
    project.set_port_settings("max_retries: 0");
    project
        .emulator
        .set_faults(port_emulator::FaultSpec {
            status: Some(503),
            ..Default::default()
        })
        .unwrap();
    use_listener(&project, "event_listener: {type: WEBHOOK}");
    let agent = RunningService::start(project.root()).await;
    agent
        .wait_for_metric("port_agent_runs_total{status=\"not_started\"}", 1.0)
        .await;
    assert_eq!(
        agent.http("GET", "/health/live").await.map(|r| r.0),
        Some(200)
    );
    // Port is back, and the mapping changed meanwhile: the next run reads it.
    project
        .emulator
        .set_faults(port_emulator::FaultSpec::default())
        .unwrap();
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        support::mapping(0),
    )
    .unwrap();
    assert_eq!(agent.http("POST", "/resync").await.map(|r| r.0), Some(202));
    agent
        .wait_for_metric("port_agent_runs_total{status=\"completed\"}", 1.0)
        .await;
    assert_eq!(
        project.port_entity("svc-0001")["properties"]["tier"],
        "high"
    );
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the resync could not run"), "{stderr}");
}
