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

#[test]
fn a_schema_1_file_opens_with_every_record() {
    let (_dir, path) = fixture_copy("v1.redb");
    let identity = Identity {
        integration_type: "json".into(),
        integration_identifier: "fixture".into(),
        port_base_url: "http://127.0.0.1:5555".into(),
    };
    let store = StateStore::open(&path, &identity).unwrap();
    let records = store.entities(|_, _| true).unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[1].0, ("service".to_owned(), "svc-1".to_owned()));
    assert_eq!(records[1].1.hash, [1; 32]);
    assert_eq!(records[1].1.kind, "service");
    let runs = store.runs(10).unwrap();
    assert_eq!((runs.len(), runs[0].status), (1, RunStatus::Completed));
    assert_eq!(
        store.checkpoints().unwrap(),
        [("service".to_owned(), r#"{"done": true}"#.to_owned())]
    );
}
