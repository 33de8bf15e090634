//! `port-agent resync` as a user runs it: a real process, a real redb file, the Port emulator.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::{Project, mapping, service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_what_changed_reaches_port() {
    let project = Project::new(300).await;

    let (code, first, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["totals"]["upserted"], 305);
    assert_eq!(first["kinds"]["service"]["fetched"], 300);
    for field in ["run_id", "duration_ms"] {
        assert!(first[field].is_u64(), "{field}: {first}");
    }
    assert_eq!(project.stats()["entities_total"], 305);

    // Nothing changed: zero writes.
    let writes_before = project.writes();
    let (code, second, _) = project.resync(&[]).await;
    assert_eq!(code, 0);
    assert_eq!(second["totals"]["unchanged"], 305);
    assert_eq!(second["totals"]["upserted"], 0);
    assert_eq!(
        project.writes(),
        writes_before,
        "an unchanged resync must send no write"
    );

    // One changed raw item: exactly one upsert.
    let mut services: Vec<Value> = (0..300).map(service).collect();
    services[42]["lang"] = json!("zig");
    project.write_services(&services);
    let (_, third, _) = project.resync(&[]).await;
    assert_eq!(third["totals"]["upserted"], 1);
    assert_eq!(project.stats()["upserts_per_entity"]["service/svc-0042"], 2);
    assert_eq!(project.stats()["upserts_per_entity"]["service/svc-0043"], 1);
    assert_eq!(
        project.port_entity("svc-0042")["properties"]["language"],
        "zig"
    );

    // One removed: exactly one delete.
    services.remove(7);
    project.write_services(&services);
    let (_, fourth, _) = project.resync(&[]).await;
    assert_eq!(
        (
            fourth["totals"]["upserted"].as_u64(),
            fourth["totals"]["deleted"].as_u64()
        ),
        (Some(0), Some(1))
    );
    assert_eq!(project.stats()["entities_deleted"], 1);
    let entities = project.emulator.entities();
    assert!(
        !entities
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["identifier"] == "svc-0007")
    );

    // Port holds what one run of the final data on a fresh Port would leave.
    support::assert_same_content(
        &project.port_content(),
        &support::uninterrupted_run(&services).await,
    );

    // `state inspect` agrees with Port.
    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let state: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(state["entities"].as_array().unwrap().len(), 304);
    assert_eq!(state["runs"][0]["status"], "completed");
    assert!(!String::from_utf8_lossy(&inspect.stdout).contains("emulator-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_change_resends_only_the_entities_it_changes() {
    let project = Project::new(300).await;
    assert_eq!(project.resync(&[]).await.0, 0);
    std::fs::write(project.root().join("port-app-config.yaml"), mapping(200)).unwrap();
    let (code, summary, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    let affected = (0..300)
        .filter(|&i| (101..=200).contains(&((i * 37) % 400)))
        .count() as u64;
    assert!(affected > 0);
    assert_eq!(summary["totals"]["upserted"].as_u64(), Some(affected));
    assert_eq!(
        summary["totals"]["unchanged"].as_u64(),
        Some(305 - affected)
    );
    // Values, not counts: every entity carries the new mapping's tier.
    let reference = Project::new(300).await;
    std::fs::write(reference.root().join("port-app-config.yaml"), mapping(200)).unwrap();
    assert_eq!(reference.resync(&[]).await.0, 0);
    support::assert_same_content(&project.port_content(), &reference.port_content());
}

/// The raw-item cache: an unchanged item is not even mapped (`totals.mapped` counts the items
/// jq ran on), and a changed one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_items_are_not_mapped_again() {
    let project = Project::new(100).await;
    let (_, first, _) = project.resync(&[]).await;
    assert_eq!(first["totals"]["mapped"], 105);
    let (_, second, _) = project.resync(&[]).await;
    assert_eq!(second["totals"]["mapped"], 0, "{second}");
    assert_eq!(second["totals"]["unchanged"], 105, "{second}");
    let mut services: Vec<Value> = (0..100).map(service).collect();
    services[5]["stars"] = json!(1);
    project.write_services(&services);
    let (_, third, _) = project.resync(&[]).await;
    assert_eq!(third["totals"]["mapped"], 1, "{third}");
    assert_eq!(third["totals"]["upserted"], 1, "{third}");
    assert_eq!(project.port_entity("svc-0005")["properties"]["stars"], 1);
}

/// `--kind` limits the deletions to that kind, even after a full run recorded other kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_scoped_run_deletes_only_its_own_kind() {
    let project = Project::new(30).await;
    assert_eq!(project.resync(&[]).await.0, 0);
    let services: Vec<Value> = (1..30).map(service).collect();
    project.write_services(&services);
    project.write_lines(
        "teams.jsonl",
        &(0..4)
            .map(|t| json!({"id": format!("team-{t}"), "size": t}))
            .collect::<Vec<_>>(),
    );
    let (code, summary, stderr) = project.resync(&["--kind", "team"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["totals"]["deleted"], 1, "{summary}");
    let content = project.port_content();
    assert!(!content.contains_key(&("team".to_owned(), "team-4".to_owned())));
    assert!(
        content.contains_key(&("service".to_owned(), "svc-0000".to_owned())),
        "a team-scoped run deleted a service"
    );
    let (code, summary, _) = project.resync(&[]).await;
    assert_eq!(code, 0);
    assert_eq!(summary["totals"]["deleted"], 1, "{summary}");
    assert!(
        !project
            .port_content()
            .contains_key(&("service".to_owned(), "svc-0000".to_owned()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_in_one_kind_blocks_every_deletion() {
    let project = Project::new(50).await;
    assert_eq!(project.resync(&[]).await.0, 0);
    // A team disappears, and the service file breaks: the run must fail and delete nothing.
    project.write_lines(
        "teams.jsonl",
        &(0..4)
            .map(|t| json!({"id": format!("team-{t}"), "size": t}))
            .collect::<Vec<_>>(),
    );
    std::fs::write(
        project.root().join("services.jsonl"),
        "{\"name\": \"svc-0000\"}\n{\"name\": \n",
    )
    .unwrap();
    let (code, summary, _) = project.resync(&[]).await;
    assert_eq!(code, 1);
    assert_eq!(summary["status"], "failed");
    let notes = summary["notes"].to_string();
    assert!(
        notes.contains("services.jsonl: line 2") && notes.contains("deletions skipped"),
        "{notes}"
    );
    assert_eq!(project.stats()["entities_deleted"], 0);
    assert_eq!(summary["totals"]["deleted"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_above_the_threshold_are_skipped_loudly() {
    let project = Project::new(100).await;
    assert_eq!(project.resync(&["--kind", "service"]).await.0, 0);
    project.write_services(&(0..5).map(service).collect::<Vec<_>>());
    let (code, summary, stderr) = project.resync(&["--kind", "service"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(project.stats()["entities_deleted"], 0);
    let notes = summary["notes"].to_string();
    assert!(
        notes.contains("95 of 100 entities") && notes.contains("entityDeletionThreshold"),
        "{notes}"
    );
    assert!(
        stderr.contains("deletions skipped"),
        "said loudly on stderr too: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_anywhere() {
    let project = Project::new(20).await;
    let (code, summary, stderr) = project.resync(&["--dry-run"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["plan"].as_array().unwrap().len(), 25);
    assert_eq!(summary["plan"][0]["reason"], "new");
    assert!(
        !project.state_path().exists(),
        "a dry run must not create the state file"
    );
    assert_eq!(
        project.stats()["requests"].as_object().unwrap().len(),
        0,
        "a dry run must not call Port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_state_file_is_refused() {
    let project = Project::new(5).await;
    assert_eq!(project.resync(&[]).await.0, 0);
    let identity = port_agent_state::Identity {
        integration_type: "json".into(),
        integration_identifier: "my-services".into(),
        port_base_url: project.emulator.base_url(),
    };
    let _held = port_agent_state::StateStore::open(&project.state_path(), &identity).unwrap();
    let out = project.agent(&["resync", "--config", "agent.yaml"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked by another process"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_reported_and_left_alone() {
    let project = Project::new(5).await;
    std::fs::create_dir_all(project.state_path().parent().unwrap()).unwrap();
    std::fs::write(
        project.state_path(),
        b"definitely not a redb file, but long enough to look like one..".repeat(100),
    )
    .unwrap();
    let before = std::fs::read(project.state_path()).unwrap();
    let out = project.agent(&["resync", "--config", "agent.yaml"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("corrupt") && stderr.contains("agent.redb"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(project.state_path()).unwrap(), before);
    assert_eq!(project.stats()["entities_total"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_stats_export_and_reset() {
    let project = Project::new(30).await;
    assert_eq!(project.resync(&[]).await.0, 0);

    let stats = project
        .agent(&["state", "stats", "--config", "agent.yaml", "--json"])
        .await;
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["entities"], 35);
    assert_eq!(stats["by_blueprint"]["service"], 30);
    assert_eq!(stats["by_kind"]["team"], 5);
    assert_eq!(stats["last_run"]["status"], "completed");
    let entities_table = &stats["tables"]["entities"];
    assert_eq!(entities_table["entries"], 35);
    // Each record holds at least its 32-byte hash and its key.
    assert!(
        entities_table["stored_bytes"].as_u64().unwrap() > 35 * 40,
        "{stats}"
    );
    assert_eq!(stats["tables"]["runs"]["entries"], 1);

    let export = project
        .agent(&["state", "export", "--config", "agent.yaml", "--jsonl"])
        .await;
    let lines: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 35);
    assert!(
        lines
            .iter()
            .all(|l| l["hash"].as_str().is_some_and(|h| h.len() == 64))
    );

    // Compaction keeps every record: the next resync still has nothing to send.
    let compacted = project
        .agent(&["state", "compact", "--config", "agent.yaml"])
        .await;
    assert_eq!(compacted.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&compacted.stdout).starts_with("compacted "));
    assert_eq!(project.resync(&[]).await.1["totals"]["unchanged"], 35);

    // Without a terminal and without --yes, reset refuses and changes nothing.
    let refused = project
        .agent(&["state", "reset", "--config", "agent.yaml"])
        .await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(project.state_path().exists());

    let reset = project
        .agent(&["state", "reset", "--config", "agent.yaml", "--yes"])
        .await;
    support::assert_success(&reset);
    assert!(!project.state_path().exists());
    let (_, summary, _) = project.resync(&[]).await;
    assert_eq!(
        summary["totals"]["upserted"], 35,
        "after a reset every entity is sent once more"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_missing_related_entities_targets_are_upserted_first() {
    let project = Project::new(0).await;
    std::fs::write(
        project.root().join(".port/resources/blueprints.json"),
        r#"[{"identifier": "service", "schema": {"properties": {}}, "relations": {"dependsOn": {"target": "service", "required": false, "many": true}}}]"#,
    )
    .unwrap();
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        "createMissingRelatedEntities: false\nresources:\n  - kind: service\n    selector: {query: 'true'}\n    port:\n      entity:\n        mappings: {identifier: .name, blueprint: '\"service\"', relations: {dependsOn: .deps}}\n",
    )
    .unwrap();
    // Each service depends on the next one in the file: every target comes after its dependent.
    let services: Vec<Value> = (0..60).map(|i| json!({"name": format!("s{i}"), "deps": if i < 59 { vec![format!("s{}", i + 1)] } else { vec![] }})).collect();
    project.write_services(&services);
    let (code, summary, stderr) = project.resync(&["--kind", "service"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["totals"]["upserted"], 60, "{summary}");
    assert_eq!(summary["totals"]["failed"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_from_port_avoids_resending_what_port_already_holds() {
    let project = Project::new(50).await;
    assert_eq!(project.resync(&[]).await.0, 0);
    // A fresh agent taking over (as from Ocean): Port holds everything, the agent nothing.
    assert_eq!(
        project
            .agent(&["state", "reset", "--config", "agent.yaml", "--yes"])
            .await
            .status
            .code(),
        Some(0)
    );
    let mut services: Vec<Value> = (0..50).map(service).collect();
    services[3]["lang"] = json!("zig");
    services.remove(10);
    project.write_services(&services);

    let out = project
        .agent(&["state", "rebuild", "--from-port", "--config", "agent.yaml"])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("53 entities adopted")
            && stdout.contains("1 differ and 0 are missing")
            && stdout.contains("1 in Port are produced by no item"),
        "{stdout}"
    );
    let writes = project.stats()["entities_upserted"].as_u64().unwrap();

    let (code, summary, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["totals"]["upserted"], 1);
    assert_eq!(summary["totals"]["deleted"], 1);
    assert_eq!(summary["totals"]["unchanged"], 53);
    assert_eq!(
        project.stats()["entities_upserted"].as_u64().unwrap(),
        writes + 1
    );
    assert_eq!(project.stats()["upserts_per_entity"]["service/svc-0003"], 2);

    // An existing state is not replaced without --yes.
    let again = project
        .agent(&["state", "rebuild", "--from-port", "--config", "agent.yaml"])
        .await;
    assert_eq!(again.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_hand_made_drift_and_repair_fixes_it() {
    let project = Project::new(40).await;
    assert_eq!(project.resync(&[]).await.0, 0);
    let clean = project
        .agent(&["state", "verify", "--config", "agent.yaml"])
        .await;
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );

    // Someone deletes one entity and edits another in Port's UI, and adds one by hand with the
    // integration's datasource.
    let client_config = {
        let mut c = port_agent_core::port::PortClientConfig::new(
            project.emulator.base_url(),
            "emulator-client",
            port_agent_core::Secret::new("emulator-secret"),
            port_agent_core::port::IntegrationIdentity {
                integration_type: "json".into(),
                version: "hand".into(),
                identifier: "my-services".into(),
            },
        );
        c.retry.max_attempts = 2;
        c
    };
    let hand = port_agent_core::port::PortClient::new(client_config).unwrap();
    hand.delete_entities("service", &["svc-0005".to_owned()], false)
        .await
        .unwrap();
    let mut edited = port_agent_core::port::Entity::new("service", "svc-0006");
    edited.set_property("language", json!("cobol"));
    let options = port_agent_core::port::UpsertOptions {
        merge: true,
        create_missing_related_entities: true,
    };
    hand.upsert_entities(
        "service",
        &[
            edited,
            port_agent_core::port::Entity::new("service", "stray"),
        ],
        options,
    )
    .await
    .unwrap();

    let drift = project
        .agent(&["state", "verify", "--config", "agent.yaml"])
        .await;
    let stdout = String::from_utf8_lossy(&drift.stdout);
    assert_eq!(drift.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("3 drifted"), "{stdout}");
    assert!(
        stdout.contains("service/svc-0005: missing in Port"),
        "{stdout}"
    );
    assert!(
        stdout.contains("service/svc-0006: content differs"),
        "{stdout}"
    );
    assert!(
        stdout.contains("service/stray: unknown to the state"),
        "{stdout}"
    );

    let repair = project
        .agent(&["state", "verify", "--repair", "--config", "agent.yaml"])
        .await;
    let stdout = String::from_utf8_lossy(&repair.stdout);
    assert_eq!(
        repair.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&repair.stderr)
    );
    assert!(stdout.contains("re-sent 2 and deleted 1"), "{stdout}");
    let after = project
        .agent(&["state", "verify", "--config", "agent.yaml"])
        .await;
    assert_eq!(
        after.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&after.stdout)
    );
    assert_eq!(
        project.port_entity("svc-0006")["properties"]["language"],
        "rust"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_runs_every_n_resyncs_when_configured() {
    let project = Project::new(10).await;
    let config = std::fs::read_to_string(project.root().join("agent.yaml")).unwrap();
    std::fs::write(
        project.root().join("agent.yaml"),
        config.replace(
            "state: {path: ./state/agent.redb}",
            "state: {path: ./state/agent.redb, verify_every: 2}",
        ),
    )
    .unwrap();
    let (_, first, _) = project.resync(&[]).await;
    assert!(!first["notes"].to_string().contains("verified"), "{first}");
    let (_, second, _) = project.resync(&[]).await;
    assert!(
        second["notes"]
            .to_string()
            .contains("verified against Port: 0 of 15 entities drifted"),
        "{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_whose_mapping_reads_the_environment_are_always_mapped_again() {
    let project = Project::new(20).await;
    let mapping = std::fs::read_to_string(project.root().join("port-app-config.yaml")).unwrap();
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        mapping.replace(
            "stars: .stars",
            "stars: .stars\n            language: env.PORT_AGENT_TEST_LANGUAGE",
        ),
    )
    .unwrap();
    let resync = |language: &'static str| {
        let root = project.root().to_owned();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_port-agent"))
                .args([
                    "resync",
                    "--config",
                    "agent.yaml",
                    "--json",
                    "--kind",
                    "service",
                ])
                .env("PORT_AGENT_TEST_LANGUAGE", language)
                .current_dir(root)
                .output()
                .unwrap();
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        })
    };
    assert_eq!(resync("rust").await.unwrap()["totals"]["upserted"], 20);
    assert_eq!(resync("rust").await.unwrap()["totals"]["upserted"], 0);
    // Same raw items, different environment: the raw-item cache must not vouch for them.
    assert_eq!(resync("go").await.unwrap()["totals"]["upserted"], 20);
}

/// Regression: an entity produced by two resources (or twice by one) had one hash in the state,
/// so each contribution looked changed against the other's and every resync re-sent both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_made_by_two_resources_is_not_resent_when_unchanged() {
    let project = Project::new(40).await;
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        r#"
resources:
  - kind: service
    selector: {query: 'true'}
    port:
      entity:
        mappings: {identifier: .name, blueprint: '"service"', properties: {language: .lang, stars: .stars}}
  - kind: service
    selector: {query: 'true'}
    port:
      entity:
        mappings: {identifier: .name, blueprint: '"service"', properties: {tier: '.tier // "none"'}}
"#,
    )
    .unwrap();
    let mut services: Vec<Value> = (0..40).map(service).collect();
    // The same entity twice in one file (one batch): Port keeps the later item's language.
    services.push(json!({"name": "svc-0001", "lang": "zig", "stars": 1, "tier": "gold"}));
    project.write_services(&services);

    let (code, first, stderr) = project.resync(&["--kind", "service"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first["totals"]["upserted"], 82);
    let merged = project.port_entity("svc-0001");
    assert_eq!(merged["properties"]["language"], "zig");
    assert_eq!(merged["properties"]["tier"], "gold");
    assert_eq!(
        project.port_entity("svc-0002")["properties"]["tier"],
        "none"
    );
    assert_eq!(
        project.port_entity("svc-0002")["properties"]["language"],
        "rust"
    );

    let writes = project.writes();
    let (_, second, _) = project.resync(&["--kind", "service"]).await;
    assert_eq!(second["totals"]["unchanged"], 82, "{second}");
    assert_eq!(
        project.writes(),
        writes,
        "an unchanged resync must send no write"
    );
    let (_, plan, _) = project.resync(&["--kind", "service", "--dry-run"]).await;
    assert_eq!(plan["totals"]["unchanged"], 82, "{plan}");

    // The first contribution changes: it is sent, and the second follows it so that Port merges
    // them in the same order as a full send would.
    services[3]["lang"] = json!("ocaml");
    project.write_services(&services);
    let (_, third, _) = project.resync(&["--kind", "service"]).await;
    assert_eq!(third["totals"]["upserted"], 2, "{third}");
    assert_eq!(project.stats()["upserts_per_entity"]["service/svc-0003"], 4);
    assert_eq!(
        project.port_entity("svc-0003")["properties"]["language"],
        "ocaml"
    );
    let writes = project.writes();
    let (_, fourth, _) = project.resync(&["--kind", "service"]).await;
    assert_eq!(fourth["totals"]["upserted"], 0, "{fourth}");
    assert_eq!(project.writes(), writes);

    let inspect = project
        .agent(&[
            "state",
            "inspect",
            "--config",
            "agent.yaml",
            "--identifier",
            "svc-0001",
            "--json",
        ])
        .await;
    let state: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        state["entities"][0]["later_hashes"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(state["checkpoints"]["service"]["status"], "completed");
    assert_eq!(state["checkpoints"]["service"]["counters"]["unchanged"], 82);
    let text = project
        .agent(&[
            "state",
            "inspect",
            "--config",
            "agent.yaml",
            "--identifier",
            "svc-0001",
        ])
        .await;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("(+3 later contributions)"), "{text}");
    assert!(
        text.contains("checkpoint service: run 4 completed at "),
        "{text}"
    );
    assert!(text.contains("unchanged 82 upserted 0"), "{text}");
    assert!(!text.contains("no record of"), "{text}");
    // An entity it never wrote: inspect says what that means.
    let missing = project
        .agent(&[
            "state",
            "inspect",
            "--config",
            "agent.yaml",
            "--identifier",
            "svc-nowhere",
        ])
        .await;
    let missing = String::from_utf8_lossy(&missing.stdout);
    assert!(missing.contains("0 entities believed in Port"), "{missing}");
    assert!(
        missing.contains("no record of svc-nowhere: port-agent has not written it"),
        "{missing}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mapping_can_come_from_the_integration_in_port() {
    let project = Project::new(20).await;
    let config_path = project.root().join("agent.yaml");
    let local = std::fs::read_to_string(&config_path).unwrap();
    let from_port = local.replace("mapping: ./port-app-config.yaml", "mapping: port");
    assert_ne!(local, from_port);

    // Before the integration exists Port has no mapping to give: a config error, nothing sent.
    std::fs::write(&config_path, &from_port).unwrap();
    let out = project.agent(&["resync", "--config", "agent.yaml"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not exist in Port"), "{stderr}");
    assert_eq!(project.stats()["entities_total"], 0);

    // The first start creates the integration with the local mapping; later starts read it back
    // from Port and find nothing to send.
    std::fs::write(&config_path, &local).unwrap();
    assert_eq!(project.resync(&[]).await.1["totals"]["upserted"], 25);
    std::fs::write(&config_path, &from_port).unwrap();
    let writes = project.writes();
    let (code, summary, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["totals"]["unchanged"], 25, "{summary}");
    assert_eq!(project.writes(), writes);
}

/// Regression: contributions were compared by position, so a `--kind` run (which produces only
/// some of an entity's contributions) found them out of place and re-sent them, and the next
/// full run re-sent the rest: alternating runs never settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kind_scoped_runs_do_not_resend_an_entity_two_kinds_make() {
    let project = Project::new(5).await;
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        r#"
resources:
  - kind: service
    selector: {query: 'true'}
    port:
      entity:
        mappings: {identifier: .name, blueprint: '"service"', properties: {language: .lang}}
  - kind: team
    selector: {query: 'true'}
    port:
      entity:
        mappings: {identifier: '"svc-000" + (.size | tostring)', blueprint: '"service"', properties: {stars: .size}}
"#,
    )
    .unwrap();
    let (code, first, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(first["totals"]["upserted"], 10);
    let writes = project.writes();
    for scope in [
        &["--kind", "team"][..],
        &[],
        &["--kind", "service"],
        &[],
        &["--kind", "team"],
    ] {
        let (code, summary, stderr) = project.resync(scope).await;
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(summary["totals"]["upserted"], 0, "{scope:?}: {summary}");
        let (_, plan, _) = project.resync(&[scope, &["--dry-run"][..]].concat()).await;
        assert_eq!(plan["plan"], serde_json::json!([]), "{scope:?}: {plan}");
    }
    assert_eq!(
        project.writes(),
        writes,
        "alternating runs must send nothing"
    );
    let svc3 = project.port_entity("svc-0003");
    assert_eq!(
        (
            &svc3["properties"]["language"],
            &svc3["properties"]["stars"]
        ),
        (&serde_json::json!("go"), &serde_json::json!(3))
    );
}

/// An entity the raw-item cache vouched for that a second resource starts producing in the
/// same run: the cached contribution counts first, so the new one is sent once and the next
/// run sends nothing (not both again, as a comparison from the wrong position would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_gaining_a_second_producer_is_sent_once() {
    let project = Project::new(20).await;
    assert_eq!(project.resync(&["--kind", "service"]).await.0, 0);
    let (_, cached, _) = project.resync(&["--kind", "service"]).await;
    assert_eq!(
        cached["totals"]["mapped"], 0,
        "the cache vouches for every item: {cached}"
    );
    let second = r#"
  - kind: service
    selector: {query: 'true'}
    port:
      entity:
        mappings:
          identifier: .name
          blueprint: '"service"'
          properties: {tier: '"from the second resource"'}
"#;
    let path = project.root().join("port-app-config.yaml");
    let mapping = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{}{second}", mapping.trim_end())).unwrap();
    let (code, third, stderr) = project.resync(&["--kind", "service"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(third["totals"]["upserted"], 20, "{third}");
    assert_eq!(
        project.port_entity("svc-0003")["properties"]["tier"],
        "from the second resource"
    );
    let writes = project.writes();
    let (_, fourth, _) = project.resync(&["--kind", "service"]).await;
    assert_eq!(fourth["totals"]["upserted"], 0, "{fourth}");
    assert_eq!(project.writes(), writes);
}

/// Regression: a fetched batch's block (the raw-item cache's entry for a whole batch) was looked
/// up before the batches ahead of it were written. When one of those changed an entity this
/// batch also produces, the block still vouched for it: its later contribution was not re-sent
/// after the changed first one, and Port kept the first one's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_does_not_vouch_for_an_entity_an_earlier_batch_changed() {
    let project = Project::new(0).await;
    let mut services: Vec<Value> = (0..600).map(service).collect();
    // svc-0003 again in the second batch (items 500 on): Port keeps this later language.
    services[550] = json!({"name": "svc-0003", "lang": "zig", "stars": 1, "team": "team-0"});
    project.write_services(&services);
    for _ in 0..2 {
        let (code, _, stderr) = project.resync(&[]).await;
        assert_eq!(code, 0, "{stderr}");
    }
    services[3]["lang"] = json!("ocaml");
    services[3]["stars"] = json!(7);
    project.write_services(&services);
    let (code, report, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        project.port_entity("svc-0003")["properties"]["language"],
        "zig",
        "{report}"
    );
    support::assert_same_content(
        &project.port_content(),
        &support::uninterrupted_run(&services).await,
    );
}

/// A live event that kept failing is a dead letter: `state inspect` shows it (count, attempts,
/// age, last error; not the event), and `state retry-dead-letters` puts it back in the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_shown_by_inspect_and_retried_into_the_inbox() {
    let project = Project::new(3).await;
    let (code, _, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    let path = project.state_path();
    tokio::task::block_in_place(|| {
        let store = port_agent_state::StateStore::open_existing(&path).unwrap();
        for id in ["d-1", "d-2"] {
            store
                .inbox_accept(Some(id), br#"{"kind": "service", "upsert": []}"#, 10)
                .unwrap();
        }
        store
            .inbox_dead_letter(1, 5, "Port answered 422: no such relation")
            .unwrap();
    });
    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml"])
        .await;
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("live events: 1 waiting, 1 dead letters")
            && text.contains("dead letter 1: 5 attempts")
            && text.contains("Port answered 422: no such relation"),
        "{text}"
    );
    let json = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["live_events"]["dead_letters"][0]["attempts"], 5);
    assert!(
        report["live_events"]["dead_letters"][0]
            .get("event")
            .is_none()
    );

    let retry = project
        .agent(&["state", "retry-dead-letters", "--config", "agent.yaml"])
        .await;
    support::assert_success(&retry);
    assert!(String::from_utf8_lossy(&retry.stdout).contains("1 dead letters back in the inbox"));
    let json = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["live_events"]["waiting"], 2, "{report}");
    assert_eq!(report["live_events"]["dead_letters"], json!([]));
}
