//! The Port client against the Port emulator, over real HTTP on loopback.

use std::time::{Duration, Instant};

use port_agent_core::Secret;
use port_agent_core::port::{
    Entity, IntegrationIdentity, NewIntegration, PortClient, PortClientConfig, PortError,
    ResyncState, ResyncStatus, RetryPolicy, UpsertOptions, UpsertOutcome,
};
use port_emulator::{Emulator, EmulatorConfig, FaultSpec};
use serde_json::{Value, json};

fn identity(identifier: &str) -> IntegrationIdentity {
    IntegrationIdentity {
        integration_type: "json".into(),
        version: "0.1.0".into(),
        identifier: identifier.into(),
    }
}

fn config(emulator: &Emulator) -> PortClientConfig {
    let mut config = PortClientConfig::new(
        emulator.base_url(),
        emulator.config().client_id.clone(),
        Secret::new(emulator.config().client_secret.clone()),
        identity("my-services"),
    );
    // Fast retries keep the suite quick; the policy itself is the same code.
    config.retry = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
        jitter: 0.1,
    };
    config
}

fn requests(emulator: &Emulator, route: &str) -> u64 {
    emulator.stats()["requests"][route].as_u64().unwrap_or(0)
}

async fn start() -> Emulator {
    start_with(EmulatorConfig::default()).await
}

async fn start_with(config: EmulatorConfig) -> Emulator {
    let emulator = Emulator::start(config).await.expect("emulator starts");
    emulator
        .put_blueprint(json!({"identifier": "team", "title": "Team"}))
        .unwrap();
    emulator
        .put_blueprint(json!({
            "identifier": "service",
            "title": "Service",
            "schema": {
                "properties": {"url": {"type": "string"}, "stars": {"type": "number"}, "notes": {"type": "string"}},
                "required": ["url"]
            },
            "relations": {"owner": {"target": "team", "required": false, "many": false}}
        }))
        .unwrap();
    emulator
}

fn service(id: &str) -> Entity {
    let mut entity = Entity::new("service", id);
    entity.title = Some(json!(format!("Service {id}")));
    entity.set_property("url", json!(format!("https://example.com/{id}")));
    entity.set_property("stars", json!(3));
    entity
}

#[tokio::test]
async fn token_is_fetched_once_and_reused() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    for _ in 0..3 {
        assert_eq!(client.get_organization().await.unwrap().id, "org_emulator");
    }
    assert_eq!(client.stats().token_requests, 1);
    assert_eq!(requests(&emulator, "POST /v1/auth/access_token"), 1);
}

#[tokio::test]
async fn revoked_token_is_refreshed_once_on_401() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    client.get_organization().await.unwrap();
    emulator.revoke_tokens();
    client.get_organization().await.unwrap();
    assert_eq!(client.stats().token_requests, 2);
    // First call, the refused call, and the call with the new token.
    assert_eq!(requests(&emulator, "GET /v1/organization"), 3);
}

#[tokio::test]
async fn expiring_token_is_renewed_before_port_refuses_it() {
    let emulator = start_with(EmulatorConfig {
        token_ttl: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    let client = PortClient::new(config(&emulator)).unwrap();
    client.get_organization().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    client.get_organization().await.unwrap();
    assert_eq!(client.stats().token_requests, 2);
    // No attempt was refused with 401: exactly the two calls reached the route.
    assert_eq!(requests(&emulator, "GET /v1/organization"), 2);
}

#[tokio::test]
async fn wrong_secret_is_a_clear_credentials_error_without_the_secret() {
    let emulator = start().await;
    let mut config = config(&emulator);
    config.client_secret = Secret::new("not-the-secret-xyz");
    let client = PortClient::new(config).unwrap();
    let error = client.get_organization().await.unwrap_err();
    assert!(
        matches!(error, PortError::Credentials { status: 401, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("emulator-client"), "{message}");
    assert!(!message.contains("not-the-secret-xyz"), "{message}");
    assert!(!format!("{error:?}").contains("not-the-secret-xyz"));
    // Credentials are not retried: one refusal is final.
    assert_eq!(requests(&emulator, "POST /v1/auth/access_token"), 1);
}

#[tokio::test]
async fn rate_limited_call_waits_for_retry_after() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    client.get_organization().await.unwrap();
    emulator
        .set_faults(FaultSpec {
            status: Some(429),
            count: Some(1),
            retry_after: Some(1),
            ..Default::default()
        })
        .unwrap();
    let started = Instant::now();
    client.get_organization().await.unwrap();
    let stats = client.stats();
    assert_eq!(stats.retries, 1);
    // Port's hint is used as given (no jitter on it), and the client really waited it out.
    assert_eq!(stats.retry_wait, Duration::from_secs(1));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported_with_status_and_trace_id() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    client.get_organization().await.unwrap();

    emulator
        .set_faults(FaultSpec {
            status: Some(500),
            count: Some(2),
            ..Default::default()
        })
        .unwrap();
    client
        .get_organization()
        .await
        .expect("two 500s, then success on the third attempt");
    assert_eq!(client.stats().retries, 2);

    emulator
        .set_faults(FaultSpec {
            status: Some(503),
            ..Default::default()
        })
        .unwrap();
    let before = requests(&emulator, "GET /v1/organization");
    let error = client.get_organization().await.unwrap_err();
    match &error {
        PortError::Api {
            status,
            attempts,
            trace_id,
            error,
            ..
        } => {
            assert_eq!((*status, *attempts), (503, 4));
            assert!(trace_id.is_some());
            assert_eq!(error.as_deref(), Some("injected_fault"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(requests(&emulator, "GET /v1/organization") - before, 4);
    let message = error.to_string();
    assert!(
        message.contains("GET /v1/organization")
            && message.contains("503")
            && message.contains("x-trace-id"),
        "{message}"
    );
}

#[tokio::test]
async fn not_implemented_is_not_retried() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    client.get_organization().await.unwrap();
    emulator
        .set_faults(FaultSpec {
            status: Some(501),
            count: Some(1),
            ..Default::default()
        })
        .unwrap();
    let error = client.get_organization().await.unwrap_err();
    assert_eq!(error.status(), Some(501));
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test]
async fn dropped_connections_are_retried() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    client.get_organization().await.unwrap();
    emulator
        .set_faults(FaultSpec {
            drop_connections: Some(true),
            count: Some(2),
            ..Default::default()
        })
        .unwrap();
    client
        .get_organization()
        .await
        .expect("succeeds once connections stop dropping");
    assert_eq!(client.stats().retries, 2);

    emulator
        .set_faults(FaultSpec {
            drop_connections: Some(true),
            ..Default::default()
        })
        .unwrap();
    let error = client.get_organization().await.unwrap_err();
    assert!(
        matches!(error, PortError::Network { attempts: 4, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn bulk_upsert_reports_each_entity() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    let mut no_url = service("b");
    no_url.properties.as_mut().unwrap().remove("url");
    let mut wrong_type = service("d");
    wrong_type.set_property("stars", json!("many"));
    let entities = vec![service("a"), no_url, service("c"), wrong_type, service("e")];

    let outcomes = client
        .upsert_entities("service", &entities, UpsertOptions::default())
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 5);
    assert_eq!(
        outcomes[0],
        UpsertOutcome::Upserted {
            identifier: "a".into(),
            created: true
        }
    );
    match &outcomes[1] {
        UpsertOutcome::Failed(e) => {
            assert_eq!(e.status, Some(422));
            assert!(e.message.contains("url"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(outcomes[2].is_upserted() && outcomes[4].is_upserted());
    assert!(matches!(&outcomes[3], UpsertOutcome::Failed(e) if e.message.contains("stars")));
    assert_eq!(emulator.stats()["entities_total"], 3);

    // The same entity again is an update, not a creation.
    let again = client
        .upsert_entities("service", &[service("a")], UpsertOptions::default())
        .await
        .unwrap();
    assert_eq!(
        again[0],
        UpsertOutcome::Upserted {
            identifier: "a".into(),
            created: false
        }
    );
    assert_eq!(emulator.stats()["upserts_per_entity"]["service/a"], 2);
}

#[tokio::test]
async fn bulk_upserts_are_cut_into_batches_of_twenty() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    let entities: Vec<Entity> = (0..45).map(|i| service(&format!("s{i}"))).collect();
    let outcomes = client
        .upsert_entities("service", &entities, UpsertOptions::default())
        .await
        .unwrap();
    assert!(outcomes.iter().all(UpsertOutcome::is_upserted));
    // Outcomes come back in input order even though batches run concurrently.
    for (i, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            *outcome,
            UpsertOutcome::Upserted {
                identifier: format!("s{i}"),
                created: true
            }
        );
    }
    assert_eq!(
        requests(&emulator, "POST /v1/blueprints/{bp}/entities/bulk"),
        3
    );
}

#[tokio::test]
async fn too_large_bulk_falls_back_to_single_upserts() {
    let emulator = start_with(EmulatorConfig {
        max_body_bytes: 4000,
        ..Default::default()
    })
    .await;
    let client = PortClient::new(config(&emulator)).unwrap();
    let entities: Vec<Entity> = (0..10)
        .map(|i| {
            let mut e = service(&format!("big{i}"));
            e.set_property("notes", json!("x".repeat(600)));
            e
        })
        .collect();
    let mut orphan = service("orphan");
    orphan.set_relation("owner", json!("no-such-team"));
    let mut all = entities.clone();
    all.push(orphan);
    let options = UpsertOptions {
        merge: true,
        create_missing_related_entities: false,
    };

    let outcomes = client
        .upsert_entities("service", &all, options)
        .await
        .unwrap();
    assert!(
        outcomes[..10].iter().all(UpsertOutcome::is_upserted),
        "{outcomes:?}"
    );
    match &outcomes[10] {
        UpsertOutcome::Failed(e) => {
            assert_eq!((e.status, e.error.as_str()), (Some(404), "not_found"));
            assert!(e.message.contains("related entity"), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        requests(&emulator, "POST /v1/blueprints/{bp}/entities/bulk"),
        1
    );
    assert_eq!(requests(&emulator, "POST /v1/blueprints/{bp}/entities"), 11);
    assert_eq!(emulator.stats()["entities_total"], 10);
}

#[tokio::test]
async fn owned_entities_are_paginated_and_scoped_to_this_integration() {
    let emulator = start().await;
    let mut ours = config(&emulator);
    ours.owned_page_limit = 7;
    let client = PortClient::new(ours).unwrap();
    let entities: Vec<Entity> = (0..30).map(|i| service(&format!("s{i:02}"))).collect();
    client
        .upsert_entities("service", &entities, UpsertOptions::default())
        .await
        .unwrap();

    let mut theirs = config(&emulator);
    theirs.identity = identity("someone-else");
    let other = PortClient::new(theirs).unwrap();
    other
        .upsert_entities("service", &[service("foreign")], UpsertOptions::default())
        .await
        .unwrap();

    let owned = client.owned_entities(None).await.unwrap();
    let mut ids: Vec<&str> = owned
        .iter()
        .map(|e| e["identifier"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30);
    assert!(!ids.contains(&"foreign"));
    // 30 entities at 7 a page.
    assert_eq!(
        requests(
            &emulator,
            "POST /v1/blueprints/entities/datasource-entities"
        ),
        5
    );

    let datasources: Vec<Value> = emulator
        .entities()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["$datasource"].clone())
        .collect();
    assert!(datasources.contains(&json!("port-ocean/json/0.1.0/my-services/exporter")));

    // `before` excludes what was written since.
    let cutoff = jiff::Timestamp::now().to_string();
    tokio::time::sleep(Duration::from_millis(5)).await;
    client
        .upsert_entities("service", &[service("s00")], UpsertOptions::default())
        .await
        .unwrap();
    assert_eq!(
        client.owned_entities(Some(&cutoff)).await.unwrap().len(),
        29
    );
}

#[tokio::test]
async fn bulk_delete_reports_deleted_and_absent_ids() {
    let emulator = start().await;
    let mut config = config(&emulator);
    config.delete_batch_size = 2;
    let client = PortClient::new(config).unwrap();
    let entities: Vec<Entity> = ["a", "b", "c"].iter().map(|id| service(id)).collect();
    client
        .upsert_entities("service", &entities, UpsertOptions::default())
        .await
        .unwrap();

    let ids: Vec<String> = ["a", "b", "ghost"].iter().map(|s| s.to_string()).collect();
    let report = client.delete_entities("service", &ids, true).await.unwrap();
    assert_eq!(report.deleted, ["a", "b"]);
    assert_eq!(report.not_deleted, ["ghost"]);
    assert!(report.failed.is_empty());
    assert_eq!(
        requests(&emulator, "POST /v1/blueprints/{bp}/bulk/entities/delete"),
        2
    );
    assert_eq!(emulator.stats()["entities_deleted"], 2);
    assert_eq!(emulator.stats()["entities_total"], 1);
}

#[tokio::test]
async fn search_finds_entities_by_rules() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    let entities: Vec<Entity> = ["api", "web", "worker"]
        .iter()
        .map(|id| service(id))
        .collect();
    client
        .upsert_entities("service", &entities, UpsertOptions::default())
        .await
        .unwrap();
    let query = json!({"combinator": "and", "rules": [
        {"property": "$blueprint", "operator": "=", "value": "service"},
        {"combinator": "or", "rules": [
            {"property": "$identifier", "operator": "=", "value": "api"},
            {"property": "$identifier", "operator": "beginsWith", "value": "wor"}
        ]}
    ]});
    let found = client
        .search_entities(&query, &["identifier", "blueprint"])
        .await
        .unwrap();
    assert_eq!(
        found,
        vec![
            json!({"identifier": "api", "blueprint": "service"}),
            json!({"identifier": "worker", "blueprint": "service"})
        ]
    );
}

#[tokio::test]
async fn integration_lifecycle_and_resync_state() {
    let emulator = start().await;
    let client = PortClient::new(config(&emulator)).unwrap();
    assert!(
        client
            .get_integration("my-services")
            .await
            .unwrap()
            .is_none()
    );
    let created = client
        .create_integration(&NewIntegration {
            installation_id: "my-services".into(),
            installation_app_type: "json".into(),
            version: "0.1.0".into(),
            config: json!({"resources": []}),
            changelog_destination: None,
        })
        .await
        .unwrap();
    assert_eq!(created.identifier, "my-services");
    client
        .patch_resync_state(
            "my-services",
            &ResyncState {
                status: ResyncStatus::Running,
                last_resync_start: Some("2026-11-24T10:00:00.000Z".into()),
                last_resync_end: None,
                next_resync: None,
                interval_in_minutes: Some(60),
            },
        )
        .await
        .unwrap();
    let fetched = client
        .get_integration("my-services")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched.resync_state.unwrap()["status"], "running");
    assert_eq!(fetched.installation_app_type.as_deref(), Some("json"));
    assert!(
        client
            .get_resync_request("my-services")
            .await
            .unwrap()
            .is_none()
    );

    let patched = client
        .patch_integration_config("my-services", &json!({"resources": [{"kind": "service"}]}))
        .await
        .unwrap();
    assert_eq!(patched.config.unwrap()["resources"][0]["kind"], "service");
    assert!(client.get_blueprint("service").await.unwrap().is_some());
    assert!(client.get_blueprint("nope").await.unwrap().is_none());
    let credentials = client.get_kafka_credentials().await.unwrap();
    assert_eq!(credentials.username, "emulator-kafka");
    assert_eq!(format!("{:?}", credentials.password), "[redacted]");
}

#[tokio::test]
async fn concurrency_is_bounded_across_all_callers() {
    let emulator = start().await;
    let mut config = config(&emulator);
    config.max_concurrency = 2;
    let client = PortClient::new(config).unwrap();
    client.get_organization().await.unwrap();
    emulator
        .set_faults(FaultSpec {
            latency_ms: Some(150),
            ..Default::default()
        })
        .unwrap();
    let started = Instant::now();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get_organization().await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // Six 150 ms calls, two at a time, cannot finish in under 450 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn client_rate_limit_keeps_under_port_quota() {
    let emulator = start_with(EmulatorConfig {
        rate_limit: Some(10),
        ..Default::default()
    })
    .await;
    let mut config = config(&emulator);
    config.requests_per_second = Some(8.0);
    let client = PortClient::new(config).unwrap();
    let started = Instant::now();
    for _ in 0..12 {
        client.get_organization().await.unwrap();
    }
    // Thirteen requests (a token and twelve calls) at 8/s take at least 1.5 s, and none hit the quota.
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.stats().retries, 0);
}

#[tokio::test]
async fn without_a_client_limit_port_quota_is_absorbed_by_retries() {
    let emulator = start_with(EmulatorConfig {
        rate_limit: Some(5),
        ..Default::default()
    })
    .await;
    let mut config = config(&emulator);
    config.retry.max_attempts = 10;
    let client = PortClient::new(config).unwrap();
    for _ in 0..8 {
        client.get_organization().await.unwrap();
    }
    let stats = client.stats();
    assert!(stats.retries >= 1, "{stats:?}");
    assert!(stats.retry_wait >= Duration::from_secs(1), "{stats:?}");
}

#[tokio::test]
async fn a_refused_batch_fails_its_entities_but_an_unavailable_port_fails_the_call() {
    let emulator = start().await;
    let mut settings = config(&emulator);
    settings.max_concurrency = 1;
    let client = PortClient::new(settings).unwrap();
    client.get_organization().await.unwrap();
    let entities: Vec<Entity> = (0..45).map(|i| service(&format!("s{i}"))).collect();

    // Port refuses one request (400): its 20 entities fail, the other batches go through.
    emulator
        .set_faults(FaultSpec {
            status: Some(400),
            count: Some(1),
            ..Default::default()
        })
        .unwrap();
    let outcomes = client
        .upsert_entities("service", &entities, UpsertOptions::default())
        .await
        .unwrap();
    let failed = outcomes.iter().filter(|o| !o.is_upserted()).count();
    assert_eq!((failed, outcomes.len() - failed), (20, 25));

    // Port stays unavailable past every retry: the call fails at once instead of spending the
    // retry budget again on each remaining batch.
    emulator
        .set_faults(FaultSpec {
            status: Some(503),
            ..Default::default()
        })
        .unwrap();
    let before = requests(&emulator, "POST /v1/blueprints/{bp}/entities/bulk");
    let error = client
        .upsert_entities("service", &entities, UpsertOptions::default())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(503), "{error}");
    // One batch's attempts (4), not three batches' (12).
    assert_eq!(
        requests(&emulator, "POST /v1/blueprints/{bp}/entities/bulk") - before,
        4
    );
}
