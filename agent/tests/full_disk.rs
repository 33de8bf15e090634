//! A full disk under the state (issue 8, finding 5): the run in progress ends failed with a
//! message naming the file, `/health/ready` says why, SIGTERM still stops the service, and once
//! space returns the next run completes with Port and the state in step.
//!
//! The state lives on a tmpfs of its own, mounted for the test (the test needs root, as CI has).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Project, RunningService, use_listener};

const SERVICES: usize = 2000;

/// A tmpfs mounted at a folder of its own; unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount(8) runs");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (CAP_SYS_ADMIN)"
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success(), "remounting the tmpfs failed");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn state_on(project: &Project, disk: &SmallDisk) -> PathBuf {
    let state = disk.path().join("agent.redb");
    let path = project.root().join("agent.yaml");
    let config = std::fs::read_to_string(&path).unwrap();
    let changed = config.replace(
        "state: {path: ./state/agent.redb}",
        &format!("state: {{path: '{}'}}", state.display()),
    );
    assert_ne!(config, changed);
    std::fs::write(path, changed).unwrap();
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_run_clearly_and_the_agent_recovers_when_space_returns() {
    let disk = SmallDisk::mount("512k");
    let project = Project::new(SERVICES).await;
    let state = state_on(&project, &disk);
    use_listener(&project, "event_listener: {type: WEBHOOK}");
    let agent = RunningService::start(project.root()).await;

    agent
        .wait_for_metric("port_agent_runs_total{status=\"failed\"}", 1.0)
        .await;
    assert_eq!(agent.metric("port_agent_run_in_progress").await, Some(0.0));
    assert_eq!(
        agent.http("GET", "/health/live").await.map(|r| r.0),
        Some(200)
    );
    let (status, why) = agent.http("GET", "/health/ready").await.unwrap();
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains(&state.display().to_string()) && why.contains("No space left on device"),
        "{why}"
    );
    let stderr = agent.stderr();
    assert!(
        stderr.contains("ERROR") && stderr.contains("No space left on device"),
        "said above debug: {stderr}"
    );

    // Space returns: the next run (here a webhook's) opens the state again and completes.
    disk.grow("64m");
    assert_eq!(agent.http("POST", "/resync").await.map(|r| r.0), Some(202));
    agent
        .wait_for_metric("port_agent_runs_total{status=\"completed\"}", 1.0)
        .await;
    assert_eq!(
        agent.http("GET", "/health/ready").await,
        Some((200, "ready".to_owned()))
    );
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");

    let verify = project
        .agent(&["state", "verify", "--config", "agent.yaml"])
        .await;
    support::assert_success(&verify);
    let reference = Project::new(SERVICES).await;
    let (code, _, stderr) = reference.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    support::assert_same_content(&project.port_content(), &reference.port_content());
}

/// SIGTERM while the state cannot be written: the service stops at once, cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_service_whose_disk_is_full() {
    let disk = SmallDisk::mount("512k");
    let project = Project::new(SERVICES).await;
    state_on(&project, &disk);
    use_listener(&project, "event_listener: {type: POLLING, interval: 600}");
    let agent = RunningService::start(project.root()).await;
    agent
        .wait_for_metric("port_agent_runs_total{status=\"failed\"}", 1.0)
        .await;
    let (code, _, stderr) = agent.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
}
