//! `port-agent port check` as a user runs it: a real process against the Port emulator.

use std::path::Path;
use std::process::{Command, Output};

use port_emulator::{Emulator, EmulatorConfig};

fn write_config(dir: &Path, base_url: &str, secret: &str) -> std::path::PathBuf {
    let path = dir.join("agent.yaml");
    std::fs::write(
        &path,
        format!(
            "port: {{base_url: '{base_url}', client_id: emulator-client, client_secret: '{secret}'}}\n\
             integration: {{identifier: my-services, type: json}}\n"
        ),
    )
    .unwrap();
    path
}

/// Runs the agent off the async runtime, so the in-process emulator keeps serving.
async fn port_agent(args: &[&str], envs: &[(&str, &str)], dir: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_port-agent"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("PORT_AGENT_CONFIG");
    for (key, value) in envs {
        command.env(key, value);
    }
    tokio::task::spawn_blocking(move || command.output().expect("port-agent runs"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_credentials_print_a_one_line_verdict() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &emulator.base_url(), "emulator-secret");
    let out = port_agent(
        &["port", "check", "--config", config.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout} stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("ok: ")
            && stdout.contains("org_emulator")
            && stdout.contains("does not exist yet"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_exits_1_and_never_prints_the_secret() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &emulator.base_url(), "wrong-secret-5c1f");
    let out = port_agent(
        &[
            "port",
            "check",
            "-c",
            config.to_str().unwrap(),
            "--log",
            "debug",
        ],
        &[],
        dir.path(),
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout} stderr: {stderr}"
    );
    assert!(
        stderr.contains("rejected the credentials") && stderr.contains("emulator-client"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-secret-5c1f") && !stdout.contains("wrong-secret-5c1f"),
        "the secret leaked: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocean_environment_variables_override_the_file() {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "http://127.0.0.1:1", "wrong");
    let base_url = emulator.base_url();
    let envs = [
        ("OCEAN__PORT__CLIENT_SECRET", "emulator-secret"),
        ("OCEAN__PORT__BASE_URL", base_url.as_str()),
    ];
    let out = port_agent(
        &["port", "check", "-c", config.to_str().unwrap()],
        &envs,
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A .env file in the working directory counts too, below the process environment.
    std::fs::write(
        dir.path().join(".env"),
        format!("OCEAN__PORT__CLIENT_SECRET=emulator-secret\nOCEAN__PORT__BASE_URL={base_url}\n"),
    )
    .unwrap();
    let out = port_agent(
        &["port", "check", "-c", config.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "not-a-url", "s");
    let out = port_agent(
        &["port", "check", "-c", config.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("port.base_url") && stderr.contains("agent.yaml"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_port_exits_1_quickly_with_the_address() {
    // Bind and drop, so nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &format!("http://127.0.0.1:{port}"), "s");
    let out = port_agent(
        &["port", "check", "-c", config.to_str().unwrap()],
        &[],
        dir.path(),
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("no answer from Port"),
        "{stderr}"
    );
}
