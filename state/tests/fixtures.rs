//! Every state file an earlier port-agent wrote must open, migrated, with nothing lost.

use port_agent_state::{Identity, RunStatus, StateStore};

fn fixture_copy(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations/fixtures")
        .join(name);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(&source, &path).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    (dir, path)
}

fn fixture_identity() -> Identity {
    Identity {
        integration_type: "json".into(),
        integration_identifier: "fixture".into(),
        port_base_url: "http://127.0.0.1:5555".into(),
    }
}

#[test]
fn a_schema_1_file_opens_with_every_record() {
    let (_dir, path) = fixture_copy("v1.redb");
    let store = StateStore::open(&path, &fixture_identity()).unwrap();
    let records = store.entities(|_, _| true).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].0, ("service".to_owned(), "svc-1".to_owned()));
    assert_eq!(records[1].1.hash, [1; 32]);
    assert_eq!(records[1].1.kind, "service");
    // Schema 2 split the hash per contribution: a v1 record is one contribution, seen once.
    assert!(records[1].1.later.is_empty());
    assert_eq!(
        (records[1].1.last_seen_run, records[1].1.seen_in_run),
        (1, 1)
    );
    assert!(records[1].1.unchanged_in(2, &[1; 32]));
    let runs = store.runs(10).unwrap();
    assert_eq!((runs.len(), runs[0].status), (1, RunStatus::Completed));
    assert_eq!(
        store.checkpoints().unwrap(),
        [("service".to_owned(), r#"{"done": true}"#.to_owned())]
    );
}

#[test]
fn a_schema_2_file_opens_with_every_contribution() {
    let (_dir, path) = fixture_copy("v2.redb");
    let store = StateStore::open(&path, &fixture_identity()).unwrap();
    let records = store.entities(|_, _| true).unwrap();
    assert_eq!(records.len(), 3);
    let (key, first) = &records[0];
    assert_eq!(key, &("service".to_owned(), "svc-0".to_owned()));
    assert_eq!((first.hash, first.later.clone()), ([0; 32], vec![[9; 32]]));
    assert_eq!(records[2].1.hash, [2; 32]);
}

#[test]
fn a_migrated_file_is_marked_and_opens_again_without_migrating() {
    let (_dir, path) = fixture_copy("v1.redb");
    drop(StateStore::open(&path, &fixture_identity()).unwrap());
    let store = StateStore::open(&path, &fixture_identity()).unwrap();
    assert_eq!(store.entity_count().unwrap(), 3);
    assert_eq!(
        store.schema_version().unwrap(),
        port_agent_state::SCHEMA_VERSION
    );
}

#[test]
fn a_schema_2_file_has_nothing_in_doubt_after_migration() {
    let (_dir, path) = fixture_copy("v2.redb");
    let store = StateStore::open(&path, &fixture_identity()).unwrap();
    let records = store.entities(|_, _| true).unwrap();
    assert!(records.iter().all(|(_, r)| r.doubt.is_none()));
    // Migrated records compare as before: nothing is re-sent because of the upgrade.
    assert!(records[1].1.unchanged_in(5, &[1; 32]));
}

#[test]
fn a_schema_3_file_keeps_its_writes_in_doubt() {
    use port_agent_state::Intent;
    let (_dir, path) = fixture_copy("v3.redb");
    let store = StateStore::open(&path, &fixture_identity()).unwrap();
    let records: std::collections::BTreeMap<String, _> = store
        .entities(|_, _| true)
        .unwrap()
        .into_iter()
        .map(|((_, id), r)| (id, r))
        .collect();
    assert_eq!(records.len(), 4);
    assert_eq!(records["svc-0"].doubt, None);
    let intent = |id: &str| records[id].doubt.map(|d| d.intent);
    assert_eq!(intent("svc-1"), Some(Intent::Upsert([11; 32])));
    assert_eq!(intent("svc-2"), Some(Intent::Delete));
    assert_eq!(intent("svc-3"), Some(Intent::Upsert([13; 32])));
    // svc-1 held [1; 32] before its update was sent: in doubt, it is not taken as unchanged.
    assert!(!records["svc-1"].unchanged_in(9, &[1; 32]));
    assert_eq!(records["svc-3"].written_run, 0, "never acknowledged");
}

#[test]
fn a_schema_3_file_migrates_with_no_block_vouching() {
    let (_dir, path) = fixture_copy("v3.redb");
    let store = StateStore::open(&path, &fixture_identity()).unwrap();
    assert_eq!(store.schema_version().unwrap(), 4);
    // Its item entries are kept (checked against the records on use); it has no blocks.
    assert_eq!(store.raw_block(&[4; 32]).unwrap(), None);
    assert_eq!(store.entities(|_, _| true).unwrap().len(), 4);
}

#[test]
fn a_schema_4_file_keeps_its_confirmed_block_until_a_record_is_written() {
    let (_dir, path) = fixture_copy("v4.redb");
    let store = StateStore::open(&path, &fixture_identity()).unwrap();
    assert_eq!(store.raw_block(&[4; 32]).unwrap(), Some(vec![1, 2]));
    store.remove(&[("service".into(), "svc-0".into())]).unwrap();
    assert_eq!(store.raw_block(&[4; 32]).unwrap(), None);
}

/// Regression: `state inspect` on a file an older port-agent wrote called it corrupt and
/// advised moving it aside (which makes the next resync send everything again).
#[test]
fn reading_an_older_state_file_says_it_is_older_and_leaves_it_untouched() {
    for version in 1..port_agent_state::SCHEMA_VERSION {
        let (_dir, path) = fixture_copy(&format!("v{version}.redb"));
        let before = std::fs::read(&path).unwrap();
        let Err(error) = StateStore::open_read_only(&path) else {
            panic!("v{version}: read as if current");
        };
        let message = error.to_string();
        assert!(
            matches!(error, port_agent_state::StateError::OlderSchema { found, .. } if found == version),
            "{message}"
        );
        assert!(
            message.contains("older port-agent") && !message.contains("corrupt"),
            "{message}"
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "v{version}: the file changed"
        );
        // Opened to write, it is migrated, and reads from then on: by the agent, or by a
        // state command that writes (`state compact`).
        drop(StateStore::open(&path, &fixture_identity()).unwrap());
        StateStore::open_read_only(&path).unwrap();
        let (_dir, path) = fixture_copy(&format!("v{version}.redb"));
        drop(StateStore::open_existing(&path).unwrap());
        let store = StateStore::open_read_only(&path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            port_agent_state::SCHEMA_VERSION
        );
    }
}
