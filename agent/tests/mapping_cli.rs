//! `port-agent mapping test|validate` as a user runs them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn golden(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/golden/mappings")
        .join(case)
}

fn port_agent(args: &[&str], stdin: Option<&[u8]>) -> Output {
    port_agent_with_env(args, stdin, &[])
}

fn port_agent_with_env(args: &[&str], stdin: Option<&[u8]>, envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_port-agent"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn mapping_test_prints_the_golden_entities_as_stable_json_lines() {
    let case = golden("github-repositories");
    let (mapping, input) = (case.join("mapping.yaml"), case.join("input.jsonl"));
    let args = [
        "mapping",
        "test",
        "--mapping",
        mapping.to_str().unwrap(),
        "--kind",
        "repository",
        "--input",
        input.to_str().unwrap(),
    ];
    let first = port_agent(&args, None);
    // Item 3 has an empty name, the identifier: Ocean drops its entity silently; here the item
    // fails (so a resync of its kind deletes nothing), named with its field.
    assert_eq!(first.status.code(), Some(1), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains(
            "item 3: error: resources[0].port.entity.mappings.identifier gave \"\"; an entity needs a non-empty identifier"
        ),
        "{}",
        text(&first.stderr)
    );
    let stdout = text(&first.stdout);
    let printed: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<serde_json::Value> = std::fs::read_to_string(case.join("expected.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap()
                .get("entity")
                .cloned()
        })
        .collect();
    // Whole entities, value for value, as libjq under Ocean's algorithm wrote them.
    assert_eq!(printed, expected);
    // Same bytes every run: key order is fixed.
    assert_eq!(port_agent(&args, None).stdout, first.stdout);
    // A field whose expression failed is reported with its path, and the entity still printed.
    let stderr = text(&first.stderr);
    assert!(
        stderr.contains("warning: resources[0].port.entity.mappings.properties.updatedDays"),
        "{stderr}"
    );
}

#[test]
fn stdin_json_array_and_item_errors_exit_1() {
    let case = golden("pull-requests-items-to-parse");
    let mapping = case.join("mapping.yaml");
    let items = br#"[{"name": "a", "pulls": [{"number": 1, "state": "open", "created_at": "2024-01-01T00:00:00Z", "updated_at": "2024-01-01T01:00:00Z", "head": {"ref": "x"}}]}]"#;
    let only_first = port_agent(
        &[
            "mapping",
            "test",
            "--mapping",
            mapping.to_str().unwrap(),
            "--kind",
            "repository",
            "--resource",
            "0",
            "--input",
            "-",
        ],
        Some(items),
    );
    assert_eq!(
        only_first.status.code(),
        Some(0),
        "{}",
        text(&only_first.stderr)
    );
    assert_eq!(text(&only_first.stdout).lines().count(), 1);

    // resources[2]'s selector yields a string, not a boolean: an item error.
    let all = port_agent(
        &[
            "mapping",
            "test",
            "--mapping",
            mapping.to_str().unwrap(),
            "--kind",
            "repository",
            "--input",
            "-",
        ],
        Some(items),
    );
    let stderr = text(&all.stderr);
    assert_eq!(all.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("item 0: error: resources[2].selector.query: expected a boolean"),
        "{stderr}"
    );
}

#[test]
fn broken_mappings_exit_2_and_validate_lists_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("port-app-config.yaml");
    std::fs::write(
        &mapping,
        "resources:\n  - kind: a\n    selector: {query: 'true'}\n    port: {entity: {mappings: {identifier: '.id |', blueprint: '\"b\"', properties: {x: 'foo(1)', y: .ok}}}}\n",
    )
    .unwrap();
    let validate = port_agent(
        &[
            "mapping",
            "validate",
            "--mapping",
            mapping.to_str().unwrap(),
        ],
        None,
    );
    let stderr = text(&validate.stderr);
    assert_eq!(validate.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("resources[0].port.entity.mappings.identifier (kind a): `.id |`"),
        "{stderr}"
    );
    assert!(stderr.contains("resources[0].port.entity.mappings.properties.x (kind a): `foo(1)`: undefined filter `foo`"), "{stderr}");
    assert!(stderr.contains("2 expressions do not compile"), "{stderr}");

    let test = port_agent(
        &[
            "mapping",
            "test",
            "--mapping",
            mapping.to_str().unwrap(),
            "--kind",
            "a",
            "--input",
            "-",
        ],
        Some(b"{}"),
    );
    // At run time a field that does not compile is null, as in Ocean: here the identifier,
    // so the item fails, naming the field.
    assert_eq!(test.status.code(), Some(1));
    assert!(
        text(&test.stderr).contains("mappings.identifier failed: `.id |` does not compile"),
        "{}",
        text(&test.stderr)
    );
    let unknown_kind = port_agent(
        &[
            "mapping",
            "test",
            "--mapping",
            mapping.to_str().unwrap(),
            "--kind",
            "zzz",
            "--input",
            "-",
        ],
        Some(b"{}"),
    );
    assert!(text(&unknown_kind.stderr).contains("no resource maps kind 'zzz'"));
}

#[test]
fn validate_accepts_a_good_mapping() {
    let mapping = golden("kubernetes-workloads").join("mapping.yaml");
    let out = port_agent(
        &[
            "mapping",
            "validate",
            "--mapping",
            mapping.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("ok: "));
}

#[test]
fn environment_access_in_mappings_follows_oceans_switch() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.yaml");
    std::fs::write(
        &mapping,
        "resources:\n  - kind: a\n    selector: {query: 'true'}\n    port: {entity: {mappings: {identifier: .id, blueprint: '\"b\"', properties: {region: env.PORT_AGENT_TEST_REGION, also: $ENV.PORT_AGENT_TEST_REGION}}}}\n",
    )
    .unwrap();
    let args = [
        "mapping",
        "test",
        "--mapping",
        mapping.to_str().unwrap(),
        "--kind",
        "a",
        "--input",
        "-",
    ];
    let allowed = port_agent_with_env(
        &args,
        Some(br#"{"id": "x"}"#),
        &[("PORT_AGENT_TEST_REGION", "eu-west-1")],
    );
    let entity: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap();
    assert_eq!(entity["properties"]["region"], "eu-west-1");
    assert_eq!(entity["properties"]["also"], "eu-west-1");
    let denied = port_agent_with_env(
        &args,
        Some(br#"{"id": "x"}"#),
        &[
            ("PORT_AGENT_TEST_REGION", "eu-west-1"),
            ("OCEAN__ALLOW_ENVIRONMENT_VARIABLES_JQ_ACCESS", "false"),
        ],
    );
    let entity: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(entity["properties"]["region"], serde_json::Value::Null);
    assert_eq!(entity["properties"]["also"], serde_json::Value::Null);
}
