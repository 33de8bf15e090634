//! Bad input never kills or hangs the agent (issue 8, finding 4): an item nested thousands deep,
//! a jq expression that never ends, recurses without end, collects without end or backtracks
//! catastrophically each fail their own item, named, within the item's budget; the other items
//! sync, and the run deletes nothing.

mod support;

use serde_json::{Value, json};
use support::{Project, mapping, service};

const SERVICES: usize = 20;

/// A project whose service mapping evaluates `bomb` for items with `"bomb": true`.
async fn project_with_bomb(bomb: &str) -> Project {
    let project = Project::new(SERVICES).await;
    let (code, _, stderr) = project.resync(&[]).await;
    assert_eq!(code, 0, "{stderr}");
    let tier = r#"tier: 'if .stars > 100 then "high" else "low" end'"#;
    let with_bomb = mapping(100).replace(
        tier,
        &format!("tier: 'if .bomb then ({bomb}) else (if .stars > 100 then \"high\" else \"low\" end) end'"),
    );
    assert_ne!(
        with_bomb,
        mapping(100),
        "the mapping has the tier line to replace"
    );
    std::fs::write(project.root().join("port-app-config.yaml"), with_bomb).unwrap();
    project.append_config("limits: {item_time_ms: 300}");
    project
}

/// The services, with item `at` replaced by `bomb_item`.
fn services_with(at: usize, bomb_item: Value) -> Vec<Value> {
    let mut services: Vec<Value> = (0..SERVICES).map(service).collect();
    services[at] = bomb_item;
    services
}

/// The run ended `completed_with_errors` (exit 1), naming item `number` and `why`; the other
/// services are in Port as before; nothing was deleted.
fn failed_alone(project: &Project, run: (i32, Value, String), number: usize, why: &str) {
    let (code, summary, stderr) = run;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(summary["status"], "completed_with_errors", "{summary}");
    let notes = summary["notes"].to_string();
    assert!(
        notes.contains(&format!("item #{number} of kind service")) && notes.contains(why),
        "{notes}"
    );
    assert_eq!(project.stats()["entities_deleted"], 0);
    for i in (0..SERVICES).filter(|&i| i != number - 1) {
        project.port_entity(&format!("svc-{i:04}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_nested_20000_deep_fails_alone_and_the_agent_carries_on() {
    let project = project_with_bomb("1").await;
    let depth = 20_000;
    let mut services: Vec<String> = (0..SERVICES).map(|i| service(i).to_string()).collect();
    services[6] = format!(
        r#"{{"name": "svc-0006", "deep": {}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    std::fs::write(project.root().join("services.jsonl"), services.join("\n")).unwrap();
    let run = project.resync(&[]).await;
    failed_alone(&project, run, 7, "more than 1000 levels deep");
    // And again: the item fails each time, the agent never dies on it.
    let (code, _, _) = project.resync(&[]).await;
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jq_function_that_never_returns_fails_its_item_on_time() {
    let project = project_with_bomb("def f: f; f").await;
    let mut bomb = service(3);
    bomb["bomb"] = json!(true);
    project.write_services(&services_with(3, bomb));
    let run = project.resync(&[]).await;
    failed_alone(&project, run, 4, "longer than 300 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_recursion_fails_its_item_instead_of_overflowing_the_stack() {
    let project = project_with_bomb("def f: 1 + f; f").await;
    let mut bomb = service(0);
    bomb["bomb"] = json!(true);
    project.write_services(&services_with(0, bomb));
    let run = project.resync(&[]).await;
    failed_alone(&project, run, 1, "recursion went deeper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_generators_fail_their_item_on_time() {
    for bomb in ["last(range(1e9))", "[repeat(1)] | length"] {
        let project = project_with_bomb(bomb).await;
        let mut item = service(9);
        item["bomb"] = json!(true);
        project.write_services(&services_with(9, item));
        let run = project.resync(&[]).await;
        failed_alone(&project, run, 10, "longer than 300 ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catastrophic_backtracking_fails_its_item_naming_the_field() {
    let project = project_with_bomb(r#".long | test("^(a+)+$")"#).await;
    let mut item = service(2);
    item["bomb"] = json!(true);
    item["long"] = json!(format!("{}b", "a".repeat(100)));
    project.write_services(&services_with(2, item));
    let run = project.resync(&[]).await;
    failed_alone(
        &project,
        run,
        3,
        "resources[0].port.entity.mappings.properties.tier: a regular expression backtracked",
    );
}
