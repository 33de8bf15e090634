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
        "resources[2].kind 'repository': integration json cannot fetch it",
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
