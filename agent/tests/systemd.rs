//! `port-agent run` as systemd runs it (`packaging/systemd/port-agent.service`: Type=notify,
//! WatchdogSec, StateDirectory): a real process with `NOTIFY_SOCKET` pointing at this test's
//! socket, `WATCHDOG_USEC` and `STATE_DIRECTORY` set, stopped with SIGTERM.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Project, use_listener};

/// Datagrams received on `socket` until `done` says so or `limit` passes.
fn receive_until(
    socket: &UnixDatagram,
    limit: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&received) && Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    received
}

/// The entities `state inspect` reports, with the state in `state_dir`.
fn entities(root: &std::path::Path, state_dir: &std::path::Path) -> Option<usize> {
    let inspect = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["state", "inspect", "--config", "agent.yaml", "--json"])
        .current_dir(root)
        .env_remove("PORT_AGENT_CONFIG")
        .env("STATE_DIRECTORY", state_dir)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&inspect.stdout).ok()?;
    Some(report["entities"].as_array()?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_it_is_ready_pings_the_watchdog_and_stops_cleanly() {
    let project = Project::new(3).await;
    use_listener(&project, "event_listener: {type: WEBHOOK}");
    // No state.path: the file goes where the unit's StateDirectory= says.
    let config_path = project.root().join("agent.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let without_state = config.replace("state: {path: ./state/agent.redb}\n", "");
    assert_ne!(config, without_state);
    std::fs::write(&config_path, without_state).unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let socket_dir = tempfile::tempdir().unwrap();
    let socket_path = socket_dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();

    let agent = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["run", "--config", "agent.yaml"])
        .current_dir(project.root())
        .env_remove("PORT_AGENT_CONFIG")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .env("STATE_DIRECTORY", state_dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = std::sync::Arc::new(socket);
    let listening = socket.clone();
    let received = tokio::task::spawn_blocking(move || {
        receive_until(&listening, Duration::from_secs(30), |got| {
            got.iter().any(|m| m == "READY=1")
                && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3
        })
    })
    .await
    .unwrap();
    assert!(received.iter().any(|m| m == "READY=1"), "{received:?}");
    assert!(
        received.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "{received:?}"
    );

    // The first resync ends (asked of the running agent, which holds the file).
    let deadline = Instant::now() + Duration::from_secs(30);
    while entities(project.root(), state_dir.path()) != Some(8) {
        assert!(Instant::now() < deadline, "the first resync never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let output = support::terminate(agent).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let after = receive_until(&socket, Duration::from_secs(2), |got| {
        got.iter().any(|m| m == "STOPPING=1")
    });
    assert!(after.iter().any(|m| m == "STOPPING=1"), "{after:?}");

    // The state is intact after the stop, in the StateDirectory (read from the file now).
    assert_eq!(entities(project.root(), state_dir.path()), Some(8));
    assert!(
        std::fs::read_dir(state_dir.path()).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "redb")),
        "the state file is in STATE_DIRECTORY"
    );
}

/// `port-agent health`, a container's HEALTHCHECK where no curl is: 0 when the agent is ready,
/// 1 when none answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_tells_a_ready_agent_from_none() {
    let project = Project::new(2).await;
    use_listener(&project, "event_listener: {type: WEBHOOK}");
    let service = support::RunningService::start(project.root()).await;
    let address = service.address.clone();
    let health = |address: String| async move {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_port-agent"))
                .args(["health", "--address", &address])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let out = health(address.clone()).await;
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(ready.status.success(), "{ready:?}");
    assert_eq!(String::from_utf8_lossy(&ready.stdout).trim(), "200: ready");
    service.terminate().await;
    let gone = health(address).await;
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
}
