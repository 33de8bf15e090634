//! Regression: redb lays out a new file in several writes. An agent killed in the middle left a
//! half-written file that every later start refused as corrupt ("magic number mismatch"; 14 of
//! 298 kills in a loop like this one). The file is now created under a temporary name and
//! linked into place once initialized.

use std::process::Command;
use std::time::Duration;

use port_agent_state::{Identity, StateError, StateStore};

const CHILD_ENV: &str = "PORT_AGENT_STATE_CREATE_AT";

fn identity() -> Identity {
    Identity {
        integration_type: "json".into(),
        integration_identifier: "created".into(),
        port_base_url: "http://127.0.0.1:5555".into(),
    }
}

/// In the child process (this test binary, started by the test below): create the state file.
/// Run directly, it only checks that a fresh path is created and opens again.
#[test]
fn child_creates_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var_os(CHILD_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("fresh.redb"));
    drop(StateStore::open(&path, &identity()).unwrap());
    assert!(path.exists());
    assert_eq!(
        StateStore::open(&path, &identity())
            .unwrap()
            .entity_count()
            .unwrap(),
        0
    );
}

#[test]
fn a_kill_while_the_file_is_first_created_never_leaves_a_corrupt_file() {
    let me = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut seed = std::process::id() as u64;
    let mut left_a_file = 0;
    for round in 0..150 {
        let path = dir.path().join(format!("state-{round}.redb"));
        let mut child = Command::new(&me)
            .args([
                "--exact",
                "child_creates_the_state_file",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        // Waiting on another process from a plain test thread: blocking is the point.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_micros((seed >> 33) % 8000));
        let _ = child.kill();
        child.wait().unwrap();
        if path.exists() {
            left_a_file += 1;
            match StateStore::open(&path, &identity()) {
                Ok(_) => {}
                Err(e @ StateError::Corrupt { .. }) => {
                    panic!("round {round}: a kill during creation left a corrupt file: {e}")
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        }
    }
    assert!(left_a_file > 0, "no kill landed after the file appeared");
}
