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
