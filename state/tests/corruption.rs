//! Whatever a damaged disk does to the state file, port-agent reports it corrupt and leaves it
//! alone: it never panics, hangs, or takes a damaged file as a new one (issue 8: 21 of 80 random
//! page corruptions reached redb panics; a 0-byte file was taken as new).

// The seed is printed so that a failure can be replayed.
#![allow(clippy::print_stderr)]

use std::path::Path;

use port_agent_state::{Identity, StateError, StateStore, Written};

fn identity() -> Identity {
    Identity {
        integration_type: "json".into(),
        integration_identifier: "damaged".into(),
        port_base_url: "http://127.0.0.1:5555".into(),
    }
}

/// A small deterministic generator; `TEST_SEED` replays a run.
struct Lcg(u64);
impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn healthy_file(path: &Path) {
    let store = StateStore::open(path, &identity()).unwrap();
    let run = store.start_run("test").unwrap();
    let written: Vec<Written> = (0..3000u32)
        .map(|i| Written {
            key: ("service".into(), format!("svc-{i:05}")),
            hash: [(i % 251) as u8; 32],
            kind: "service".into(),
            resource: 0,
        })
        .collect();
    for chunk in written.chunks(500) {
        store.record_written(run.id, chunk).unwrap();
    }
    store.set_checkpoint("service", "{}").unwrap();
}

/// Everything a command does with a state file; any error must be the clear "corrupt" one (or
/// a plain I/O error naming the file), never a panic.
fn use_it(path: &Path) -> Result<(), StateError> {
    let store = StateStore::open_read_only(path)?;
    store.entity_count()?;
    store.entities(|_, _| true)?;
    store.runs(10)?;
    store.checkpoints()?;
    store.usage()?;
    store.get_many(&[("service".into(), "svc-00042".into())])?;
    drop(store);
    let store = StateStore::open(path, &identity())?;
    let run = store.start_run("after damage")?;
    store.mark_seen(run.id, &[(("service".into(), "svc-00007".into()), [7; 32])])?;
    store.scoped_unseen(run.id, |_| true, |_| false)?;
    Ok(())
}

#[test]
fn random_page_corruptions_are_reported_never_panicked_on() {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("corruption: TEST_SEED={seed}");
    let mut rng = Lcg(seed);
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("healthy.redb");
    healthy_file(&original);
    let bytes = std::fs::read(&original).unwrap();
    let pages = bytes.len() / 4096;
    let (mut reported, mut unharmed) = (0, 0);
    for round in 0..80 {
        let mut damaged = bytes.clone();
        let page = rng.below(pages as u64) as usize;
        // Either the whole page is garbage or a few bytes flip in it.
        if rng.below(2) == 0 {
            for b in &mut damaged[page * 4096..(page + 1) * 4096] {
                *b = rng.below(256) as u8;
            }
        } else {
            for _ in 0..1 + rng.below(8) {
                let at = page * 4096 + rng.below(4096) as usize;
                damaged[at] ^= 1 << rng.below(8);
            }
        }
        let path = dir.path().join(format!("damaged-{round}.redb"));
        std::fs::write(&path, &damaged).unwrap();
        let outcome = std::panic::catch_unwind(|| use_it(&path));
        match outcome {
            Err(_) => panic!("round {round} (page {page}): a panic escaped"),
            Ok(Ok(())) => unharmed += 1,
            Ok(Err(StateError::Corrupt { .. })) => reported += 1,
            // A flipped bit in the metadata can name another integration or schema: refused
            // all the same, clearly, and left alone.
            Ok(Err(
                StateError::OtherIntegration { .. }
                | StateError::NewerSchema { .. }
                | StateError::OlderSchema { .. },
            )) => reported += 1,
            Ok(Err(other)) => panic!("round {round} (page {page}): unexpected error {other}"),
        }
    }
    eprintln!("{reported} damaged files reported, {unharmed} unharmed (free pages)");
    assert!(
        reported > 0,
        "no corruption was noticed: the test proved nothing"
    );
}

#[test]
fn an_empty_file_is_corrupt_not_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    std::fs::write(&path, b"").unwrap();
    for error in [
        StateStore::open(&path, &identity()).unwrap_err(),
        StateStore::open_read_only(&path).unwrap_err(),
        StateStore::open_existing(&path).unwrap_err(),
    ] {
        assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("empty"), "{error}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"", "left untouched");
}
