//! `port-agent config validate`: every problem a run would trip over, reported at once.

mod support;

use support::{BLUEPRINTS, Project, mapping};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sound_project_validates() {
    let project = Project::new(3).await;
    let out = project
        .agent(&["config", "validate", "--config", "agent.yaml"])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    support::assert_success(&out);
    assert!(
        stdout.contains("2 resources, 2 kinds, 2 blueprints"),
        "{stdout}"
    );
    // Port is not contacted.
    let requests = project.stats()["requests"].clone();
    assert!(
        requests.as_object().is_some_and(|r| r.is_empty()),
        "{requests}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_is_reported_at_once() {
    let project = Project::new(3).await;
    let root = project.root();
    let broken_mapping = mapping(100).replace("stars: .stars", "stars: .stars | ((")
        + "  - kind: repository\n    selector: {query: 'true'}\n    port:\n      entity:\n        mappings: {identifier: .id, blueprint: '\"repo\"'}\n";
    std::fs::write(root.join("port-app-config.yaml"), broken_mapping).unwrap();
    std::fs::write(
        root.join(".port/resources/blueprints.json"),
        BLUEPRINTS.replacen("\"identifier\": \"team\", ", "", 1),
    )
    .unwrap();
    std::fs::remove_file(root.join("teams.jsonl")).unwrap();

    let out = project
        .agent(&["config", "validate", "--config", "agent.yaml"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "properties.stars",
        "resources[2] (json): kind 'repository': this integration cannot fetch it",
        "blueprint [0] has no \"identifier\"",
        "integration.config.kinds.team: cannot read",
        "4 problems",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrations_list_shows_each_built_in_with_its_settings() {
    let project = Project::new(0).await;
    let out = project.agent(&["integrations", "list"]).await;
    support::assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "custom ",
        "json ",
        "baseUrl                    url      required",
        "apiToken                   string   required when authType is bearer_token; sensitive",
        "webhookSecret              string   sensitive",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

/// `integration.config` is held to the integration's `.port/spec.yaml`: every setting's problem
/// named at once, no value repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_settings_are_checked_against_the_spec() {
    let project = Project::new(0).await;
    let config = std::fs::read_to_string(project.root().join("agent.yaml"))
        .unwrap()
        .replace(
            "type: json, config: {kinds: {service: ./services.jsonl, team: ./teams.jsonl}}",
            "type: custom, config: {paginationType: pages-s3cret, verifySsl: maybe, customAuthRequest: '[1]'}",
        );
    std::fs::write(project.root().join("agent.yaml"), config).unwrap();
    let out = project
        .agent(&["config", "validate", "--config", "agent.yaml"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for expected in [
        "integration.config.baseUrl: required",
        "integration.config.paginationType: expected one of",
        "integration.config.verifySsl: expected true or false",
        "integration.config.customAuthRequest: expected an object",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

/// No mapping file and no blueprints where Ocean looks for them: the integration's own
/// `.port/resources/` stand in (Ocean's `initializePortResources`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resources_the_integration_s_defaults_are_used() {
    let project = Project::new(0).await;
    std::fs::remove_dir_all(project.root().join(".port")).unwrap();
    let config = std::fs::read_to_string(project.root().join("agent.yaml"))
        .unwrap()
        .replace("mapping: ./port-app-config.yaml\n", "");
    std::fs::write(project.root().join("agent.yaml"), config).unwrap();
    let out = project
        .agent(&["config", "validate", "--config", "agent.yaml"])
        .await;
    support::assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("0 resources"), "{stdout}");
}

/// `config show`: each value with its source, secrets redacted whatever set them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_show_tells_each_value_s_source_and_hides_secrets() {
    let project = Project::new(0).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["config", "show", "--config", "agent.yaml"])
        .current_dir(project.root())
        .env_remove("PORT_AGENT_CONFIG")
        .env("OCEAN__PORT__CLIENT_SECRET", "s3cret-from-env")
        .env("OCEAN__INTEGRATION__CONFIG__WEBHOOK_SECRET", "hook-s3cret")
        .output()
        .unwrap();
    support::assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
            .to_owned()
    };
    assert!(line("port.client_secret").contains("[redacted]    # env OCEAN__PORT__CLIENT_SECRET"));
    assert!(line("integration.config.webhook_secret").contains("[redacted]"));
    assert!(line("port.client_id").contains("emulator-client    # file"));
    assert!(line("http.listen").ends_with("# default"), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
}

/// Regression: an error's cause was told twice ("No such file or directory (os error 2): No
/// such file or directory (os error 2)") — once in the message, once more as its source.
#[tokio::test]
async fn a_failure_s_cause_is_told_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jsonl"), "").unwrap();
    let config = |extra: &str| {
        format!(
            "port: {{client_id: a, client_secret: b, base_url: 'http://127.0.0.1:9', max_retries: 0}}\n\
             integration: {{identifier: x, type: json, config: {{kinds: {{a: a.jsonl}}}}}}\n{extra}\n"
        )
    };
    let cases = [
        ("missing-config.yaml", None, "No such file or directory"),
        (
            "missing-mapping.yaml",
            Some(config("mapping: nowhere.yml")),
            "No such file or directory",
        ),
        (
            "state-nowhere.yaml",
            Some(config("state: {path: /proc/nowhere/state.redb}")),
            "No such file or directory",
        ),
        (
            "port-unreachable.yaml",
            Some(config("state: {path: state.redb}")),
            "Connection refused",
        ),
    ];
    for (file, content, cause) in cases {
        if let Some(content) = content {
            std::fs::write(dir.path().join(file), content).unwrap();
        }
        let out = support::agent_in(dir.path(), &["resync", "--config", file]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{file}");
        assert_eq!(stderr.matches(cause).count(), 1, "{file}: {stderr}");
        if file.starts_with("port") {
            assert_eq!(
                stderr.matches("error sending request").count(),
                1,
                "{stderr}"
            );
        }
    }
}
