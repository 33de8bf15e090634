//! Logs for log pipelines: `--log-format json` writes one JSON object a line, each line of a
//! run carrying the run (id, trigger) and the resource (index, kind) it belongs to, and no
//! secret.

mod support;

use serde_json::Value;
use support::Project;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_run_and_the_resource_and_no_secret() {
    let project = Project::new(3).await;
    // A broken item, so the run logs inside a resource.
    project.write_services(&[support::service(0), serde_json::json!({"lang": "no name"})]);
    let out = project
        .agent(&[
            "--log-format",
            "json",
            "--log",
            "debug",
            "resync",
            "--config",
            "agent.yaml",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    assert!(!lines.is_empty());
    let in_resource = lines
        .iter()
        .filter_map(|l| l["spans"].as_array())
        .find(|spans| spans.iter().any(|s| s["name"] == "resource"))
        .unwrap_or_else(|| panic!("no line inside a resource:\n{stderr}"));
    let run = in_resource.iter().find(|s| s["name"] == "run").unwrap();
    assert_eq!(run["id"], 1, "{run}");
    assert_eq!(run["trigger"], "cli", "{run}");
    let resource = in_resource
        .iter()
        .find(|s| s["name"] == "resource")
        .unwrap();
    assert!(
        resource["kind"] == "service" || resource["kind"] == "team",
        "{resource}"
    );
    assert!(!stderr.contains("emulator-secret"), "{stderr}");
}

/// `port-agent run` (the service) on a config that is not there, its stderr given to
/// `stderr`, with `JOURNAL_STREAM` set as systemd sets it when given.
fn failing_run(
    stderr: std::process::Stdio,
    journal_stream: Option<String>,
) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_port-agent"));
    command
        .args(["run", "--config", "/nonexistent/agent.yaml"])
        .env_remove("PORT_AGENT_LOG_FORMAT")
        .env_remove("JOURNAL_STREAM")
        .stderr(stderr);
    if let Some(stream) = journal_stream {
        command.env("JOURNAL_STREAM", stream);
    }
    command.output().unwrap()
}

/// The file's `device:inode`, as `JOURNAL_STREAM` names the journal's stream.
fn device_and_inode(file: &std::fs::File) -> String {
    use std::os::unix::fs::MetadataExt;
    let metadata = file.metadata().unwrap();
    format!("{}:{}", metadata.dev(), metadata.ino())
}

#[test]
fn by_default_the_service_logs_json_off_a_terminal_and_text_to_the_journal_and_a_terminal() {
    let is_json = |text: &str| {
        !text.is_empty()
            && text
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok())
    };
    // A pipe (a container's log, a log shipper): JSON.
    let out = failing_run(std::process::Stdio::piped(), None);
    let piped = String::from_utf8_lossy(&out.stderr);
    assert!(is_json(&piped), "{piped}");
    assert!(piped.contains("cannot read config file"));

    // Another command's output is read by a person or a CI log: text, even through a pipe.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["resync", "--config", "/nonexistent/agent.yaml"])
        .env_remove("PORT_AGENT_LOG_FORMAT")
        .output()
        .unwrap();
    let command = String::from_utf8_lossy(&out.stderr);
    assert!(
        command.starts_with("error: cannot read config file"),
        "{command}"
    );

    // The journal's stream: text. A JOURNAL_STREAM inherited by a process whose stderr went
    // elsewhere does not count.
    let dir = tempfile::tempdir().unwrap();
    let journal = std::fs::File::create(dir.path().join("journal")).unwrap();
    let elsewhere = std::fs::File::create(dir.path().join("elsewhere")).unwrap();
    let stream = device_and_inode(&journal);
    failing_run(journal.into(), Some(stream.clone()));
    let to_journal = std::fs::read_to_string(dir.path().join("journal")).unwrap();
    assert!(
        to_journal.starts_with("error: cannot read config file"),
        "{to_journal}"
    );
    failing_run(elsewhere.into(), Some(stream));
    let redirected = std::fs::read_to_string(dir.path().join("elsewhere")).unwrap();
    assert!(is_json(&redirected), "{redirected}");

    // A terminal (script(1) gives the agent one): text.
    let command = format!(
        "{} run --config /nonexistent/agent.yaml",
        env!("CARGO_BIN_EXE_port-agent")
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("PORT_AGENT_LOG_FORMAT")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(
        terminal
            .trim_start()
            .starts_with("error: cannot read config file"),
        "{terminal}"
    );
}
