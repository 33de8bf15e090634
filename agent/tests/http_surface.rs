//! The service's HTTP surface under hostile clients (issue 8): slow connections are cut and
//! capped, a stop does not wait on idle clients, `/resync` can require a token and is rate
//! bounded, and `state inspect` reads a running agent's state through it.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Project, RunningService, use_listener};
use tokio::io::AsyncReadExt;

async fn webhook_service(extra: &str) -> (Project, RunningService) {
    let project = Project::new(10).await;
    use_listener(
        &project,
        &format!("event_listener: {{type: WEBHOOK}}\n{extra}"),
    );
    let agent = RunningService::start(project.root()).await;
    agent
        .wait_for_metric("port_agent_runs_total{status=\"completed\"}", 1.0)
        .await;
    (project, agent)
}

/// Regression: 3,000 connections that never sent a request stayed open, and with few file
/// descriptors `/health/live` stopped answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_cut_and_health_answers_again() {
    let (_project, agent) = webhook_service("").await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(
            tokio::net::TcpStream::connect(&agent.address)
                .await
                .unwrap(),
        );
    }
    // Each is closed by the server: within the header timeout, or at once past the cap.
    for mut stream in silent {
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buffer)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent connection was kept open: {read:?}"
        );
    }
    assert_eq!(
        agent.http("GET", "/health/live").await.map(|r| r.0),
        Some(200)
    );
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// Regression: the service stayed alive 45 s after SIGTERM, waiting on idle connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_does_not_wait_for_idle_clients() {
    let (_project, agent) = webhook_service("").await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(
            tokio::net::TcpStream::connect(&agent.address)
                .await
                .unwrap(),
        );
    }
    // terminate() fails past 30 s; the drain is bounded well under that.
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
    drop(idle);
}

async fn post_resync(agent: &RunningService, token: Option<&str>) -> u16 {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(&agent.address)
        .await
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /resync HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_only_requests_carrying_it_start_a_run() {
    let (_project, agent) =
        webhook_service("http: {listen: '127.0.0.1:0', resync_token: let-me-in}").await;
    assert_eq!(post_resync(&agent, None).await, 401);
    assert_eq!(post_resync(&agent, Some("let-me-out")).await, 401);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        agent
            .metric("port_agent_runs_total{status=\"completed\"}")
            .await,
        Some(1.0),
        "a refused request started nothing"
    );
    assert_eq!(post_resync(&agent, Some("let-me-in")).await, 202);
    agent
        .wait_for_metric("port_agent_runs_total{status=\"completed\"}", 2.0)
        .await;
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("let-me-in"), "{stderr}");
}

/// Regression: a loop posting to /resync caused 378 resyncs in 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_resync_requests_makes_few_runs() {
    let (_project, agent) =
        webhook_service("http: {listen: '127.0.0.1:0', min_resync_interval: 2}").await;
    for _ in 0..40 {
        assert_eq!(post_resync(&agent, None).await, 202);
    }
    // The first request runs at once; all the others wait out the interval and make one run.
    agent
        .wait_for_metric("port_agent_runs_total{status=\"completed\"}", 3.0)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        agent
            .metric("port_agent_runs_total{status=\"completed\"}")
            .await,
        Some(3.0)
    );
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// Regression: `state inspect` needed write access and failed on a running agent's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_inspect_works_on_a_running_agent() {
    let (project, agent) = webhook_service("").await;
    let out = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    support::assert_success(&out);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["entities"].as_array().unwrap().len(), 15);
    let out = project
        .agent(&[
            "state",
            "inspect",
            "--config",
            "agent.yaml",
            "--identifier",
            "svc-0003",
        ])
        .await;
    support::assert_success(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 entities believed in Port") && text.contains("service/svc-0003"),
        "{text}"
    );
    // Writing commands are refused while the agent holds the file.
    let out = project
        .agent(&["state", "reset", "--config", "agent.yaml", "--yes"])
        .await;
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
}
