//! Live events pushed to `port-agent run` (`POST /integration/webhook`, the `json`
//! integration's push endpoint): a real agent process, the Port emulator, a real redb state.

mod support;

use std::process::Command;
use std::time::Duration;

use port_emulator::FaultSpec;
use serde_json::{Value, json};
use support::{Project, RunningService, use_listener};

const SECRET: &str = "push-s3cret";

const MAPPING: &str = r#"
resources:
  - kind: service
    selector: {query: '.archived != true'}
    port:
      entity:
        mappings:
          identifier: .name
          title: .name
          blueprint: '"service"'
          properties: {language: .lang, stars: .stars}
  - kind: team
    selector: {query: 'true'}
    port:
      entity:
        mappings: {identifier: .id, title: .id, blueprint: '"team"', properties: {size: .size}}
"#;

/// A project served with the WEBHOOK listener, the push secret set and `extra` config added.
fn project_with(project: &Project, extra: &str) {
    project_listening(
        project,
        &format!("event_listener: {{type: WEBHOOK}}\n{extra}"),
    );
}

/// A project with this test's mapping, the push secret set, and `listener` (YAML) as its event
/// listener section.
fn project_listening(project: &Project, listener: &str) {
    std::fs::write(project.root().join("port-app-config.yaml"), MAPPING).unwrap();
    let path = project.root().join("agent.yaml");
    let config = std::fs::read_to_string(&path).unwrap().replace(
        "config: {kinds:",
        &format!("config: {{webhookSecret: {SECRET}, kinds:"),
    );
    std::fs::write(&path, config).unwrap();
    use_listener(project, listener);
}

/// Port's behaviour from now on (`FaultSpec::default()`: healthy again).
fn port_faults(project: &Project, spec: FaultSpec) {
    project.emulator.set_faults(spec).unwrap();
}

/// Port answers every request `ms` late.
fn slow_port(project: &Project, ms: u64) {
    port_faults(
        project,
        FaultSpec {
            latency_ms: Some(ms),
            ..Default::default()
        },
    );
}

/// A project of `services` items served with the WEBHOOK listener (and `extra` config), ready.
async fn serving(services: usize, extra: &str) -> (Project, RunningService) {
    let project = Project::new(services).await;
    project_with(&project, extra);
    let service = started(&project).await;
    (project, service)
}

async fn started(project: &Project) -> RunningService {
    let service = RunningService::start(project.root()).await;
    let address = service.address.clone();
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..3000 {
        if let Some((200, _)) = support::http(&address, "GET", "/health/ready").await {
            ready.store(true, std::sync::atomic::Ordering::Relaxed);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        ready.load(std::sync::atomic::Ordering::Relaxed),
        "{}",
        service.stderr()
    );
    service
}

fn signed(body: &[u8]) -> String {
    port_agent_integrations::push::signature(SECRET.as_bytes(), body)
}

/// Posts `event`, signed with `signature` (`None`: unsigned); the status, the JSON answer and
/// the Retry-After header.
async fn post(
    service: &RunningService,
    body: &[u8],
    signature: Option<String>,
) -> (u16, Value, Option<String>) {
    let mut request = reqwest::Client::new()
        .post(format!("http://{}/integration/webhook", service.address))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header("X-Port-Agent-Signature-256", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        retry_after,
    )
}

async fn push(service: &RunningService, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    let (status, answer, _) = post(service, body.as_bytes(), Some(signed(body.as_bytes()))).await;
    (status, answer)
}

fn svc(name: &str, lang: &str) -> Value {
    json!({"name": name, "lang": lang, "stars": 3})
}

fn in_port(project: &Project, id: &str) -> Option<Value> {
    project.emulator.entity(id)
}

const APPLIED: &str = "port_agent_live_events_total{outcome=\"applied\",path=\"/integration/webhook\",kind=\"service\"}";

/// Waits until the agent has applied `n` live events of kind `service`.
async fn applied(service: &RunningService, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while service.metric(APPLIED).await.unwrap_or(0.0) < n as f64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} live events were never applied:\n{}",
            service.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_events_create_change_and_delete_and_an_identical_one_sends_nothing() {
    let (project, service) = serving(2, "").await;

    let (status, answer) = push(
        &service,
        &json!({"id": "d-1", "kind": "service", "upsert": [svc("svc-live", "rust")]}),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    applied(&service, 1).await;
    assert_eq!(
        in_port(&project, "svc-live").unwrap()["properties"]["language"],
        "rust"
    );

    let writes = project.writes();
    push(
        &service,
        &json!({"id": "d-2", "kind": "service", "upsert": [svc("svc-live", "rust")]}),
    )
    .await;
    applied(&service, 2).await;
    assert_eq!(
        project.writes(),
        writes,
        "an identical event sends no request"
    );

    push(
        &service,
        &json!({"id": "d-3", "kind": "service", "upsert": [svc("svc-live", "go")]}),
    )
    .await;
    applied(&service, 3).await;
    // `state inspect` (asking the running agent) says what last wrote each entity.
    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let report: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let written_by = |id: &str| {
        report["entities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["identifier"] == id)
            .map(|e| e["written_by"].clone())
    };
    assert_eq!(
        written_by("svc-live"),
        Some(json!("live-event")),
        "{report}"
    );
    assert_eq!(written_by("svc-0000"), Some(json!("start")), "{report}");
    assert_eq!(
        in_port(&project, "svc-live").unwrap()["properties"]["language"],
        "go"
    );

    // The item left the selector: its entity goes.
    let mut archived = svc("svc-live", "go");
    archived["archived"] = json!(true);
    push(
        &service,
        &json!({"id": "d-4", "kind": "service", "upsert": [archived]}),
    )
    .await;
    applied(&service, 4).await;
    assert!(in_port(&project, "svc-live").is_none());

    // A deleted item: the resync-made entity goes too.
    assert!(in_port(&project, "svc-0001").is_some());
    push(
        &service,
        &json!({"id": "d-5", "kind": "service", "delete": [{"name": "svc-0001"}]}),
    )
    .await;
    applied(&service, 5).await;
    assert!(in_port(&project, "svc-0001").is_none());
    service
        .wait_for_metric(
            "port_agent_live_events_total{outcome=\"applied\",path=\"/integration/webhook\",kind=\"service\"}",
            5.0,
        )
        .await;
    service
        .wait_for_metric("port_agent_live_event_ack_seconds_count", 5.0)
        .await;
    service
        .wait_for_metric("port_agent_inbox_waiting", 0.0)
        .await;
    let (code, _, stderr) = service.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_bodies_and_kinds_are_refused_and_nothing_is_applied() {
    let (project, service) = serving(1, "").await;
    let writes = project.writes();
    let body = json!({"kind": "service", "upsert": [svc("svc-x", "c")]}).to_string();
    let (status, answer, _) = post(&service, body.as_bytes(), None).await;
    assert_eq!(status, 401, "{answer}");
    let wrong = port_agent_integrations::push::signature(b"not-the-secret", body.as_bytes());
    let (status, _, _) = post(&service, body.as_bytes(), Some(wrong)).await;
    assert_eq!(status, 401);
    let (status, answer, _) = post(&service, b"{not json", Some(signed(b"{not json"))).await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = push(&service, &json!({"kind": "unmapped", "upsert": []})).await;
    assert_eq!(status, 400, "{answer}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(in_port(&project, "svc-x").is_none());
    assert_eq!(project.writes(), writes);
    assert!(!service.stderr().contains(SECRET));
    service
        .wait_for_metric(
            "port_agent_live_events_total{outcome=\"rejected\",path=\"/integration/webhook\",kind=\"\"}",
            4.0,
        )
        .await;
    service.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_applied_once() {
    let (project, service) = serving(1, "").await;
    let event =
        json!({"id": "gh-delivery-7", "kind": "service", "upsert": [svc("svc-once", "zig")]});
    let (first, _) = push(&service, &event).await;
    let (second, answer) = push(&service, &event).await;
    assert_eq!((first, second), (202, 202));
    assert_eq!(answer["duplicate"], true, "{answer}");
    applied(&service, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.metric(APPLIED).await, Some(1.0));
    assert_eq!(project.stats()["upserts_per_entity"]["service/svc-once"], 1);
    service.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_answers_503_with_retry_after() {
    let (project, service) = serving(1, "live_events: {inbox_capacity: 1}").await;
    // Port slow: the first event stays in the inbox while it is applied.
    slow_port(&project, 1500);
    let (status, _) = push(
        &service,
        &json!({"id": "a", "kind": "service", "upsert": [svc("svc-a", "c")]}),
    )
    .await;
    assert_eq!(status, 202);
    let body = json!({"id": "b", "kind": "service", "upsert": [svc("svc-b", "c")]}).to_string();
    let (status, answer, retry_after) =
        post(&service, body.as_bytes(), Some(signed(body.as_bytes()))).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(retry_after.as_deref(), Some("5"));
    port_faults(&project, FaultSpec::default());
    applied(&service, 1).await;
    // Refused, not remembered: the sender's retry is taken.
    let (status, _, _) = post(&service, body.as_bytes(), Some(signed(body.as_bytes()))).await;
    assert_eq!(status, 202);
    applied(&service, 2).await;
    assert!(in_port(&project, "svc-b").is_some());
    service.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_accepted_before_a_kill_is_applied_once_after_the_restart() {
    let (project, service) = serving(1, "").await;
    // Port slow: the agent is killed after its 202, before the write reaches Port.
    slow_port(&project, 3000);
    let (status, _) = push(
        &service,
        &json!({"id": "k-1", "kind": "service", "upsert": [svc("svc-kept", "ada")]}),
    )
    .await;
    assert_eq!(status, 202);
    let killed = Command::new("kill")
        .args(["-KILL", &service.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    port_faults(&project, FaultSpec::default());
    assert!(in_port(&project, "svc-kept").is_none());
    // The source has the item too (the push only announced it): the restart's resync must find
    // it unchanged, not create it.
    project.write_services(&[support::service(0), svc("svc-kept", "ada")]);

    let restarted = started(&project).await;
    for _ in 0..3000 {
        if in_port(&project, "svc-kept").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        in_port(&project, "svc-kept").is_some(),
        "the event never reached Port:\n{}",
        restarted.stderr()
    );
    assert_eq!(
        in_port(&project, "svc-kept").unwrap()["properties"]["language"],
        "ada"
    );
    // The inbox kept the event: the drain applied it before the start run, which found it
    // unchanged. (Regression: the log was read once, right after the entity reached Port, and
    // the drain's line can come a moment later — the test failed now and then.)
    support::wait_until(
        Duration::from_secs(30),
        "the drain's line for the kept event",
        || {
            restarted.stderr().lines().any(|l| {
                l.contains("live events applied first_sequence=1") && l.contains("upserted=1")
            })
        },
    )
    .await;
    assert_eq!(project.stats()["upserts_per_entity"]["service/svc-kept"], 1);
    restarted.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_while_port_is_unavailable_and_apply_once_it_is_back() {
    let (project, service) = serving(1, "").await;
    port_faults(
        &project,
        FaultSpec {
            status: Some(503),
            ..Default::default()
        },
    );
    let (status, _) = push(
        &service,
        &json!({"id": "p-1", "kind": "service", "upsert": [svc("svc-patient", "ml")]}),
    )
    .await;
    assert_eq!(status, 202, "accepting needs only the state, not Port");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(in_port(&project, "svc-patient").is_none());
    // The waiting event's age is told (the agent tries again after 2 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let age = service.metric("port_agent_inbox_oldest_age_seconds").await;
        if age.is_some_and(|a| a >= 1.5) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "oldest age {age:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(service.metric("port_agent_inbox_waiting").await, Some(1.0));
    port_faults(&project, FaultSpec::default());
    applied(&service, 1).await;
    assert_eq!(
        in_port(&project, "svc-patient").unwrap()["properties"]["language"],
        "ml"
    );
    assert_eq!(
        project.stats()["upserts_per_entity"]["service/svc-patient"],
        1
    );
    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let report: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        report["live_events"]["dead_letters"],
        json!([]),
        "Port's outage is not the event's fault"
    );
    service.terminate().await;
}

/// The service applies live events between runs: an event that arrives while a resync runs is
/// applied after it, so neither the resync's data (read before the event) nor its deletions
/// undo it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_event_during_a_resync_is_not_undone_by_it() {
    let (project, service) = serving(2, "").await;
    // The data changes svc-0001 (the resync sends it) and Port is slow, so the run lasts.
    let mut changed = support::service(1);
    changed["lang"] = json!("cobol");
    project.write_services(&[support::service(0), changed]);
    slow_port(&project, 300);
    let (status, _) = service.http("POST", "/resync").await.unwrap();
    assert_eq!(status, 202);
    service
        .wait_for_metric("port_agent_run_in_progress", 1.0)
        .await;
    push(&service, &json!({"id": "r-1", "kind": "service", "upsert": [svc("svc-0001", "live"), svc("svc-during", "live")]})).await;
    applied(&service, 1).await;
    port_faults(&project, FaultSpec::default());
    service
        .wait_for_metric("port_agent_runs_total{status=\"completed\"}", 2.0)
        .await;
    assert_eq!(
        in_port(&project, "svc-0001").unwrap()["properties"]["language"],
        "live"
    );
    assert!(
        in_port(&project, "svc-during").is_some(),
        "the resync deleted what the event made"
    );
    service.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_only_applies_live_events_and_runs_no_resync() {
    let project = Project::new(2).await;
    project_listening(&project, "event_listener: {type: WEBHOOKS_ONLY}");
    let service = started(&project).await;
    push(
        &service,
        &json!({"id": "w-1", "kind": "service", "upsert": [svc("svc-pushed", "go")]}),
    )
    .await;
    applied(&service, 1).await;
    assert!(in_port(&project, "svc-pushed").is_some());
    assert!(
        in_port(&project, "svc-0000").is_none(),
        "no resync reads the source"
    );
    // A request for a resync is not served: WEBHOOKS_ONLY runs none.
    push(&service, &json!({"id": "w-2", "resync": true})).await;
    service
        .wait_for_metric(
            "port_agent_live_events_total{outcome=\"ignored\",path=\"\",kind=\"resync\"}",
            1.0,
        )
        .await;
    assert_eq!(
        service
            .metric("port_agent_runs_total{status=\"completed\"}")
            .await,
        Some(0.0)
    );
    assert!(in_port(&project, "svc-0000").is_none());
    service.terminate().await;
}

/// An event that asks for a resync (Ocean's ACTION processors) gets one, in its place in line:
/// the events before it are applied first, those after it after the resync, so the resync's
/// data (read before them) does not undo them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_asking_for_a_resync_gets_one_in_its_place_in_line() {
    let (project, service) = serving(1, "").await;
    project.write_services(&[
        support::service(0),
        svc("svc-a", "go"),
        svc("svc-new", "ada"),
    ]);
    // Port is slow: the three events wait in the inbox together.
    slow_port(&project, 100);
    for event in [
        json!({"id": "r-1", "kind": "service", "upsert": [svc("svc-a", "go")]}),
        json!({"id": "r-2", "resync": true}),
        json!({"id": "r-3", "kind": "service", "upsert": [svc("svc-a", "rust")]}),
    ] {
        assert_eq!(push(&service, &event).await.0, 202);
    }
    applied(&service, 2).await;
    port_faults(&project, FaultSpec::default());
    assert!(in_port(&project, "svc-new").is_some(), "the resync ran");
    assert_eq!(
        in_port(&project, "svc-a").unwrap()["properties"]["language"],
        "rust",
        "the event after the resync request is not undone by it"
    );
    // The request logged, then its resync, then the last events applied. (The drain logs a
    // batch just after counting it: the log is read until that line is there.)
    let in_order = |log: &str| {
        let Some(asked) = log.find("a live event asked for a resync") else {
            return false;
        };
        let resync = log[asked..].find("trigger=\"event-request\"");
        let last = log.rfind("live events applied");
        matches!((resync, last), (Some(at), Some(last)) if asked + at < last)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !in_order(&service.stderr()) {
        assert!(std::time::Instant::now() < deadline, "{}", service.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let report: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(report["live_events"]["waiting"], 0, "{report}");
    service.terminate().await;
}

/// Events that wait together are applied as one run, in arrival order: forty changes of one
/// entity pushed while Port is slow end with the last, in fewer requests than events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_waiting_together_apply_as_one_run_and_the_last_change_stands() {
    let (project, service) = serving(1, "").await;
    slow_port(&project, 100);
    for i in 1..=40u64 {
        let mut item = svc("svc-busy", "go");
        item["stars"] = json!(i);
        let event = json!({"id": format!("b-{i}"), "kind": "service", "upsert": [item]});
        assert_eq!(push(&service, &event).await.0, 202);
    }
    applied(&service, 40).await;
    port_faults(&project, FaultSpec::default());
    assert_eq!(
        in_port(&project, "svc-busy").unwrap()["properties"]["stars"],
        40
    );
    let sent = project.stats()["upserts_per_entity"]["service/svc-busy"]
        .as_u64()
        .unwrap();
    assert!(
        sent < 40,
        "{sent} upserts for 40 events: none were applied together"
    );
    service.terminate().await;
}

/// An event Port refuses (a property of the wrong type) fails the same way on every attempt: it
/// is a dead letter at once, shown with Port's reason; what it could apply is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_port_refuses_is_a_dead_letter_with_the_reason() {
    let (project, service) = serving(1, "").await;
    let mut bad = svc("svc-bad", "go");
    bad["stars"] = json!("many");
    push(
        &service,
        &json!({"id": "x-1", "kind": "service", "upsert": [bad, svc("svc-good", "go")]}),
    )
    .await;
    service
        .wait_for_metric(
            "port_agent_live_events_total{outcome=\"dead_lettered\",path=\"/integration/webhook\",kind=\"service\"}",
            1.0,
        )
        .await;
    assert!(in_port(&project, "svc-good").is_some());
    assert!(in_port(&project, "svc-bad").is_none());
    let inspect = project
        .agent(&["state", "inspect", "--config", "agent.yaml", "--json"])
        .await;
    let report: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let letter = &report["live_events"]["dead_letters"][0];
    assert_eq!(letter["attempts"], 1, "{report}");
    assert!(
        letter["last_error"]
            .as_str()
            .unwrap()
            .contains("Port refused service svc-bad"),
        "{letter}"
    );
    // Retried through the running agent (it holds the file): back in the inbox, applied again,
    // refused again.
    let retry = project
        .agent(&["state", "retry-dead-letters", "--config", "agent.yaml"])
        .await;
    support::assert_success(&retry);
    assert!(String::from_utf8_lossy(&retry.stdout).contains("1 dead letters back in the inbox"));
    service
        .wait_for_metric(
            "port_agent_live_events_total{outcome=\"dead_lettered\",path=\"/integration/webhook\",kind=\"service\"}",
            2.0,
        )
        .await;
    service.terminate().await;
}
