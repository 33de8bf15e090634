//! The packaging artefacts hold together: the files the container image copies exist, and its
//! config, completed by Ocean's variables as an Ocean image is, validates.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_file_the_image_copies_exists() {
    let dockerfile =
        std::fs::read_to_string(repository().join("packaging/docker/Dockerfile")).unwrap();
    let ignored = std::fs::read_to_string(repository().join(".dockerignore")).unwrap();
    let mut copied = 0;
    for line in dockerfile.lines().map(str::trim) {
        let Some(arguments) = line.strip_prefix("COPY ") else {
            continue;
        };
        let words: Vec<&str> = arguments.split_whitespace().collect();
        if words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        let sources = words
            .iter()
            .filter(|w| !w.starts_with("--"))
            .copied()
            .collect::<Vec<_>>();
        for source in &sources[..sources.len() - 1] {
            if *source == "." {
                continue;
            }
            assert!(repository().join(source).exists(), "COPY {source}: missing");
            assert!(
                !ignored.lines().any(|i| source.starts_with(i.trim())),
                "COPY {source}: excluded by .dockerignore"
            );
            copied += 1;
        }
    }
    assert!(
        copied > 0,
        "the Dockerfile copies no file of the repository"
    );
}

#[test]
fn the_image_config_with_ocean_variables_validates() {
    let out = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["config", "validate", "--config"])
        .arg(repository().join("packaging/docker/agent.yaml"))
        .current_dir(std::env::temp_dir())
        .env_remove("PORT_AGENT_CONFIG")
        .env("OCEAN__PORT__CLIENT_ID", "id")
        .env("OCEAN__PORT__CLIENT_SECRET", "secret")
        .env("OCEAN__INTEGRATION__IDENTIFIER", "my-api")
        .env("OCEAN__INTEGRATION__TYPE", "custom")
        .env(
            "OCEAN__INTEGRATION__CONFIG__BASE_URL",
            "https://api.example.com",
        )
        .env("OCEAN__EVENT_LISTENER__TYPE", "POLLING")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The GitHub example (`examples/github`) validates as its header says to run it.
#[test]
fn the_github_example_validates_with_its_secrets_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(["config", "validate", "--config"])
        .arg(repository().join("examples/github/agent.yaml"))
        .current_dir(std::env::temp_dir())
        .env_remove("PORT_AGENT_CONFIG")
        .env("OCEAN__PORT__CLIENT_ID", "id")
        .env("OCEAN__PORT__CLIENT_SECRET", "secret")
        .env("OCEAN__INTEGRATION__CONFIG__GITHUB_TOKEN", "ghp_x")
        .env("OCEAN__INTEGRATION__CONFIG__WEBHOOK_SECRET", "hook")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 resources"), "{stdout}");
}
