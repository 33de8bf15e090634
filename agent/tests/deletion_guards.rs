//! Deletions never run on an incomplete picture, and never leave the state claiming entities
//! Port no longer has (issue 8, findings 2 and 3).

mod support;

use serde_json::{Value, json};
use support::{Project, mapping, service};

const SERVICES: usize = 50;

async fn synced_project() -> Project {
    let project = Project::new(SERVICES).await;
    let (code, _, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    project
}

/// The run deleted nothing, said why, and ended `completed_with_errors` with a non-zero exit;
/// Port holds what it held before.
fn completed_with_errors(
    project: &Project,
    run: (i32, Value, String),
    before: &std::collections::BTreeMap<(String, String), Value>,
    why: &str,
) {
    let (code, summary, stderr) = run;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(summary["status"], "completed_with_errors", "{summary}");
    assert_eq!(summary["totals"]["deleted"], 0, "{summary}");
    let notes = summary["notes"].to_string();
    assert!(notes.contains(why), "{notes}");
    assert!(notes.contains("deletions skipped"), "{notes}");
    assert_eq!(project.stats()["entities_deleted"], 0);
    support::assert_same_content(&project.port_content(), before);
}

/// Regression: a source renamed the field the identifier reads; every identifier became null
/// (a warning), and all 50 entities of the kind were deleted, with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_renaming_the_identifier_field_deletes_nothing_and_exits_non_zero() {
    let project = synced_project().await;
    let before = project.port_content();
    let renamed: Vec<Value> = (0..SERVICES)
        .map(|i| {
            let mut item = service(i);
            let name = item.as_object_mut().unwrap().remove("name").unwrap();
            item["service_name"] = name;
            item
        })
        .collect();
    project.write_services(&renamed);
    let run = project.resync(&[]).await;
    assert!(
        run.1["notes"].to_string().contains(
            "item #1 of kind service: resources[0].port.entity.mappings.identifier gave null"
        ),
        "{}",
        run.1
    );
    completed_with_errors(&project, run, &before, "50 item(s) failed to map");
}

/// Regression: a mapping pointed at a blueprint Port lacks; every upsert was refused, and the
/// entities the old blueprint held were deleted all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_port_refuses_block_the_deletions_and_the_run_exits_non_zero() {
    let project = synced_project().await;
    let before = project.port_content();
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        mapping(100).replace(
            "blueprint: '\"service\"'",
            "blueprint: '\"no-such-blueprint\"'",
        ),
    )
    .unwrap();
    let run = project.resync(&[]).await;
    assert_eq!(run.1["totals"]["failed"], SERVICES as u64, "{}", run.1);
    completed_with_errors(
        &project,
        run,
        &before,
        "Port refused entities (50 of kind service)",
    );

    // Fixed mapping: the next run completes, and the old entities are found unchanged.
    std::fs::write(project.root().join("port-app-config.yaml"), mapping(100)).unwrap();
    let (code, summary, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["status"], "completed");
    assert_eq!(summary["totals"]["upserted"], 0, "{summary}");
    support::assert_same_content(&project.port_content(), &before);
}

/// Regression: with `deleteDependentEntities: true` (Ocean's default), deleting a team made
/// Port delete the services related to it; the state still held them, so every later run said
/// "unchanged" and never re-created them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_port_deletes_as_dependents_are_not_claimed_by_the_state() {
    let project = synced_project().await;
    std::fs::write(
        project.root().join("port-app-config.yaml"),
        format!("deleteDependentEntities: true\n{}", mapping(100)),
    )
    .unwrap();
    // team-0 leaves the data; its services still name it.
    project.write_lines(
        "teams.jsonl",
        &(1..5)
            .map(|t| json!({"id": format!("team-{t}"), "size": t}))
            .collect::<Vec<_>>(),
    );
    let (code, summary, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(summary["totals"]["deleted"], 1, "{summary}");
    let cascaded: Vec<String> = (0..SERVICES)
        .filter(|i| i % 5 == 0)
        .map(|i| format!("svc-{i:04}"))
        .collect();
    let content = project.port_content();
    for id in &cascaded {
        assert!(
            !content.contains_key(&("service".to_owned(), id.clone())),
            "Port deleted {id} as a dependent of team-0"
        );
    }
    assert!(
        summary["notes"].to_string().contains("dependents"),
        "the run says Port deleted dependents: {summary}"
    );

    // The state does not claim them: the next run re-creates every service the data still has.
    let (code, summary, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        summary["totals"]["upserted"],
        cascaded.len() as u64,
        "{summary}"
    );
    for id in &cascaded {
        project.port_entity(id);
    }
    // (Port re-creates team-0 as an empty related entity: the services still name it.)
    let (code, summary, _) = project.resync(&[]).await;
    assert_eq!(code, 0);
    assert_eq!(summary["totals"]["upserted"], 0, "settled: {summary}");
}
