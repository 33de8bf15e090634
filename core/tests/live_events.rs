//! Live events through the write path, against the Port emulator with a real redb state: what
//! changed is sent, what is identical is not, what left the selector or was deleted goes, and
//! only what the state owns is deleted.

use std::sync::Arc;
use std::time::Duration;

use port_agent_core::Secret;
use port_agent_core::live::{self, LiveEvent, LiveOutcome};
use port_agent_core::mapping::budget::Limits;
use port_agent_core::mapping::{EnvAccess, PortAppConfig};
use port_agent_core::port::{IntegrationIdentity, PortClient, PortClientConfig, RetryPolicy};
use port_agent_state::{Identity, RunStatus, StateStore};
use port_emulator::{Emulator, EmulatorConfig, FaultSpec};
use serde_json::value::RawValue;
use serde_json::{Value, json};

const MAPPING: &str = r#"
resources:
  - kind: service
    selector: {query: '.archived != true'}
    port:
      entity:
        mappings:
          identifier: .name
          title: .title
          blueprint: '"service"'
          properties: {url: .url, stars: .stars}
"#;

/// A `service` event.
fn event(upsert: &[Value], delete: &[Value]) -> LiveEvent {
    let raw = |items: &[Value]| -> Vec<Box<RawValue>> {
        items
            .iter()
            .map(|v| RawValue::from_string(v.to_string()).unwrap())
            .collect()
    };
    LiveEvent::of_kind("service", raw(upsert), raw(delete))
}

struct Setup {
    emulator: Emulator,
    client: PortClient,
    state: Arc<StateStore>,
    config: PortAppConfig,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Self {
        Self::with_mapping(MAPPING).await
    }

    async fn with_mapping(mapping: &str) -> Self {
        let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
        emulator
            .put_blueprint(json!({"identifier": "service", "title": "Service",
                "schema": {"properties": {"url": {"type": "string"}, "stars": {"type": "number"}}}}))
            .unwrap();
        let mut config = PortClientConfig::new(
            emulator.base_url(),
            emulator.config().client_id.clone(),
            Secret::new(emulator.config().client_secret.clone()),
            IntegrationIdentity {
                integration_type: "json".into(),
                version: "0.1.0".into(),
                identifier: "live".into(),
            },
        );
        config.retry = RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            jitter: 0.1,
        };
        let dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(
            &dir.path().join("state.redb"),
            &Identity {
                integration_type: "json".into(),
                integration_identifier: "live".into(),
                port_base_url: emulator.base_url(),
            },
        )
        .unwrap();
        Self {
            client: PortClient::new(config).unwrap(),
            emulator,
            state: Arc::new(state),
            config: PortAppConfig::from_yaml(mapping).unwrap(),
            _dir: dir,
        }
    }

    async fn push(&self, upsert: &[Value], delete: &[Value]) -> LiveOutcome {
        self.try_push(upsert, delete).await.unwrap()
    }

    async fn try_push(
        &self,
        upsert: &[Value],
        delete: &[Value],
    ) -> Result<LiveOutcome, port_agent_core::resync::ResyncError> {
        self.try_apply(vec![event(upsert, delete)]).await
    }

    async fn try_apply(
        &self,
        events: Vec<LiveEvent>,
    ) -> Result<LiveOutcome, port_agent_core::resync::ResyncError> {
        live::apply_all(
            &self.client,
            &self.state,
            &self.config,
            EnvAccess::Denied,
            Limits::default(),
            events,
        )
        .await
    }

    fn in_port(&self, id: &str) -> Option<Value> {
        self.emulator.entity(id)
    }

    fn requests(&self) -> u64 {
        let stats = self.emulator.stats();
        stats["requests"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(route, _)| route.contains("/entities"))
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum()
    }

    fn recorded(&self, id: &str) -> bool {
        self.state
            .get_many(&[("service".into(), id.into())])
            .unwrap()[0]
            .is_some()
    }
}

fn svc(name: &str, stars: u64) -> Value {
    json!({"name": name, "title": format!("Service {name}"), "url": format!("https://x/{name}"), "stars": stars})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_item_creates_and_changes_and_an_identical_one_sends_nothing() {
    let setup = Setup::new().await;
    let first = setup.push(&[svc("svc-a", 1)], &[]).await;
    assert_eq!(first.run.status, RunStatus::Completed);
    assert_eq!(first.run.totals.upserted, 1);
    assert_eq!(setup.in_port("svc-a").unwrap()["properties"]["stars"], 1);
    assert_eq!(first.run.trigger, "live-event");

    let before = setup.requests();
    let same = setup.push(&[svc("svc-a", 1)], &[]).await;
    assert_eq!(same.run.totals.unchanged, 1);
    assert_eq!(setup.requests(), before, "an identical event sends nothing");

    setup.push(&[svc("svc-a", 2)], &[]).await;
    assert_eq!(setup.in_port("svc-a").unwrap()["properties"]["stars"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_left_the_selector_is_deleted() {
    let setup = Setup::new().await;
    setup.push(&[svc("svc-a", 1), svc("svc-b", 1)], &[]).await;
    let mut archived = svc("svc-a", 1);
    archived["archived"] = json!(true);
    let outcome = setup.push(&[archived], &[]).await;
    assert_eq!(outcome.run.totals.deleted, 1, "{outcome:?}");
    assert!(setup.in_port("svc-a").is_none());
    assert!(!setup.recorded("svc-a"));
    assert!(setup.in_port("svc-b").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_item_goes_whatever_its_selector_and_only_if_the_state_owns_it() {
    let setup = Setup::new().await;
    setup.push(&[svc("svc-a", 1)], &[]).await;
    // Deleted as archived: the selector no longer takes it, the deletion still applies (Ocean
    // loses these, PR #3827).
    let mut gone = svc("svc-a", 1);
    gone["archived"] = json!(true);
    let outcome = setup.push(&[], &[gone]).await;
    assert_eq!(outcome.run.totals.deleted, 1);
    assert!(setup.in_port("svc-a").is_none());

    let before = setup.requests();
    let outcome = setup.push(&[], &[svc("never-seen", 1)]).await;
    assert_eq!(outcome.run.totals.deleted, 0);
    assert_eq!(
        setup.requests(),
        before,
        "nothing the state does not own is deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_one_event_upserts_and_deletes_is_kept() {
    let setup = Setup::new().await;
    setup.push(&[svc("svc-a", 1)], &[]).await;
    let outcome = setup.push(&[svc("svc-a", 5)], &[svc("svc-a", 1)]).await;
    assert_eq!(outcome.run.totals.deleted, 0);
    assert_eq!(setup.in_port("svc-a").unwrap()["properties"]["stars"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_fails_to_map_fails_alone() {
    let setup = Setup::new().await;
    let outcome = setup
        .push(&[json!({"title": "no name"}), svc("svc-b", 3)], &[])
        .await;
    assert_eq!(outcome.run.status, RunStatus::CompletedWithErrors);
    let errors = &outcome.event_errors[0];
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("upsert item #1"), "{errors:?}");
    assert_eq!(setup.in_port("svc-b").unwrap()["properties"]["stars"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_port_failed_applies_once_when_retried() {
    let setup = Setup::new().await;
    setup
        .emulator
        .set_faults(FaultSpec {
            status: Some(503),
            ..Default::default()
        })
        .unwrap();
    assert!(setup.try_push(&[svc("svc-a", 1)], &[]).await.is_err());
    assert!(setup.in_port("svc-a").is_none());
    setup.emulator.set_faults(FaultSpec::default()).unwrap();
    let outcome = setup.push(&[svc("svc-a", 1)], &[]).await;
    assert_eq!(outcome.run.status, RunStatus::Completed);
    assert_eq!(setup.in_port("svc-a").unwrap()["properties"]["stars"], 1);
    // Retried once more (the caller cannot know the first retry landed): nothing is sent.
    let before = setup.requests();
    setup.push(&[svc("svc-a", 1)], &[]).await;
    assert_eq!(setup.requests(), before);
}

/// Events applied together as one run end as if applied one by one: for each entity, the last
/// event to touch it decides (an upsert after a deletion stands, a deletion after an upsert
/// too), and Port sees one request per entity at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_applied_together_end_as_if_applied_in_arrival_order() {
    let together = Setup::new().await;
    let one_by_one = Setup::new().await;
    let before = [svc("svc-b", 1), svc("svc-c", 1)];
    let events = || {
        vec![
            event(&[svc("svc-a", 1)], &[]),
            event(&[svc("svc-a", 2)], &[svc("svc-b", 1)]),
            event(&[svc("svc-b", 7)], &[]),
            event(&[svc("svc-c", 3), svc("svc-d", 1)], &[]),
            event(&[], &[svc("svc-c", 3)]),
            event(&[svc("svc-a", 4)], &[]),
        ]
    };
    for setup in [&together, &one_by_one] {
        setup.push(&before, &[]).await;
    }
    let outcome = together.try_apply(events()).await.unwrap();
    assert_eq!(outcome.run.status, RunStatus::Completed);
    assert!(outcome.event_errors.iter().all(Vec::is_empty));
    // svc-a (three versions), svc-b and svc-d upserted in one bulk request: svc-a's last only.
    let stats = together.emulator.stats();
    assert_eq!(
        stats["requests"]["POST /v1/blueprints/{bp}/entities/bulk"], 2,
        "{stats}"
    );
    assert_eq!(stats["upserts_per_entity"]["service/svc-a"], 1, "{stats}");
    for event in events() {
        one_by_one.try_apply(vec![event]).await.unwrap();
    }
    let content = |setup: &Setup| {
        let mut entities: Vec<Value> = setup
            .emulator
            .entities()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| json!([e["identifier"], e["properties"]]))
            .collect();
        entities.sort_by_key(|e| e.to_string());
        entities
    };
    assert_eq!(content(&together), content(&one_by_one));
    assert_eq!(together.in_port("svc-a").unwrap()["properties"]["stars"], 4);
    assert_eq!(together.in_port("svc-b").unwrap()["properties"]["stars"], 7);
    assert!(together.in_port("svc-c").is_none());
}

/// Port's refusal of an entity is told to the event that produced it, not to the others
/// applied in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_the_event_s_that_made_the_entity() {
    let setup = Setup::new().await;
    let mut bad = svc("svc-bad", 1);
    bad["stars"] = json!("many");
    let outcome = setup
        .try_apply(vec![
            event(&[svc("svc-a", 1)], &[]),
            event(&[bad], &[]),
            event(&[svc("svc-c", 1)], &[]),
        ])
        .await
        .unwrap();
    assert_eq!(outcome.run.status, RunStatus::CompletedWithErrors);
    assert!(outcome.event_errors[0].is_empty() && outcome.event_errors[2].is_empty());
    assert_eq!(
        outcome.event_errors[1].len(),
        1,
        "{:?}",
        outcome.event_errors
    );
    assert!(
        outcome.event_errors[1][0].contains("Port refused service svc-bad"),
        "{:?}",
        outcome.event_errors
    );
    assert!(setup.in_port("svc-a").is_some() && setup.in_port("svc-c").is_some());
}

/// Ocean's rule, per event: an entity one resource upserts is not deleted because another
/// resource of the same kind (whose selector does not take the item) names it too — also when
/// the processor hands the items resource by resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entity_one_resource_upserts_is_not_deleted_by_another_of_the_same_kind() {
    let twice = MAPPING.to_owned()
        + r#"
  - kind: service
    selector: {query: '.stars > 100'}
    port:
      entity:
        mappings:
          identifier: .name
          title: .title
          blueprint: '"service"'
          properties: {url: .url, stars: .stars}
"#;
    let setup = Setup::with_mapping(&twice).await;
    setup.push(&[svc("svc-a", 1)], &[]).await;
    let raw = |v: Value| vec![RawValue::from_string(v.to_string()).unwrap()];
    let per_resource = LiveEvent {
        items: (0..2)
            .map(|resource| live::LiveItems {
                kind: "service".into(),
                resource: Some(resource),
                upsert: raw(svc("svc-a", 2)),
                delete: Vec::new(),
            })
            .collect(),
    };
    let outcome = setup.try_apply(vec![per_resource]).await.unwrap();
    assert_eq!(outcome.run.status, RunStatus::Completed);
    assert_eq!(outcome.run.totals.deleted, 0);
    assert_eq!(setup.in_port("svc-a").unwrap()["properties"]["stars"], 2);
    // Items for the second resource only: its selector does not take them, so the entity it
    // names goes.
    let second_only = LiveEvent {
        items: vec![live::LiveItems {
            kind: "service".into(),
            resource: Some(1),
            upsert: raw(svc("svc-a", 3)),
            delete: Vec::new(),
        }],
    };
    let outcome = setup.try_apply(vec![second_only]).await.unwrap();
    assert_eq!(outcome.run.totals.deleted, 1);
    assert!(setup.in_port("svc-a").is_none());
}
