//! The `github` integration end to end: the real agent, GitHub's stand-in
//! (`tests/github-standin`) and the Port emulator. With nothing but a token and an
//! organization, the integration's own default mapping and blueprints put the organization,
//! its repositories (with their README) and its open pull requests into Port; an unchanged
//! resync sends nothing and GitHub answers its pages 304; a signed webhook delivery changes
//! Port through the running agent.

mod support;

use std::path::Path;
use std::time::Duration;

use github_standin::{GitHub, TOKEN};
use port_emulator::{Emulator, EmulatorConfig};
use serde_json::{Value, json};

const SECRET: &str = "hook-secret";

fn write_config(dir: &Path, port: &Emulator, github: &str, listener: &str) {
    std::fs::write(
        dir.join("agent.yaml"),
        format!(
            "port: {{base_url: '{}', client_id: emulator-client, client_secret: emulator-secret}}\n\
             integration:\n  identifier: github\n  type: github\n  config: {{githubHost: '{github}', githubToken: {TOKEN}, githubOrganization: acme, webhookSecret: {SECRET}}}\n\
             state: {{path: ./state.redb}}\nevent_listener: {{type: {listener}}}\nhttp: {{listen: '127.0.0.1:0'}}\n",
            port.base_url()
        ),
    )
    .unwrap();
}

/// GitHub's stand-in, Port's emulator and the agent serving (POLLING) in a folder of its own,
/// once its first resync has put web#4 in Port.
async fn serving_after_a_resync() -> (GitHub, Emulator, tempfile::TempDir, support::RunningService)
{
    let github = GitHub::with_data();
    let host = github_standin::serve(github.clone()).await;
    let port = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &port, &host, "POLLING");
    let service = support::RunningService::start(dir.path()).await;
    support::wait_until(Duration::from_secs(30), "the first resync", || {
        entity(&port, "githubPullRequest", "web1004").is_some()
    })
    .await;
    (github, port, dir, service)
}

/// Closes web#4 on GitHub; the body of the delivery that says so.
fn close_web_4(github: &GitHub) -> String {
    github.pulls.lock().unwrap().get_mut("web").unwrap()[0]["state"] = json!("closed");
    let closed = github.pulls.lock().unwrap()["web"][0].clone();
    json!({"action": "closed", "number": 4, "pull_request": closed,
        "repository": github_standin::repository("web")})
    .to_string()
}

/// POSTs a `pull_request` delivery of `body` signed with `secret`; the answer's status.
async fn deliver(service: &support::RunningService, body: &str, secret: &[u8]) -> u16 {
    reqwest::Client::new()
        .post(format!("http://{}/integration/webhook", service.address))
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", format!("delivery-{}", body.len()))
        .header(
            "x-hub-signature-256",
            port_agent_integrations::signature::signature(secret, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn entity(port: &Emulator, blueprint: &str, identifier: &str) -> Option<Value> {
    support::port_content(port).remove(&(blueprint.to_owned(), identifier.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_mapping_syncs_an_organization_and_an_unchanged_resync_sends_nothing() {
    let github = GitHub::with_data();
    let host = github_standin::serve(github.clone()).await;
    let port = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &port, &host, "ONCE");

    let out = support::agent_in(dir.path(), &["resync", "--config", "agent.yaml"]).await;
    support::assert_success(&out);
    let content = support::port_content(&port);
    let ids: Vec<(&str, &str)> = content
        .keys()
        .map(|(b, i)| (b.as_str(), i.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("githubOrganization", "acme"),
            ("githubPullRequest", "api1001"),
            ("githubPullRequest", "web1004"),
            ("githubRepository", "api"),
            ("githubRepository", "docs"),
            ("githubRepository", "web"),
        ]
    );
    let api = &content[&("githubRepository".to_owned(), "api".to_owned())];
    assert_eq!(api["properties"]["readme"], "# api\n");
    assert_eq!(api["properties"]["visibility"], "private");
    assert_eq!(api["relations"]["organization"], "acme");
    let pull = &content[&("githubPullRequest".to_owned(), "api1001".to_owned())];
    assert_eq!(
        (
            &pull["properties"]["status"],
            &pull["relations"]["repository"]
        ),
        (&json!("open"), &json!("api"))
    );

    let sent = support::writes(&port);
    let (requests, not_modified) = github.answered();
    let out = support::agent_in(dir.path(), &["resync", "--config", "agent.yaml"]).await;
    support::assert_success(&out);
    // What the unchanged resync cost: every answer GitHub had given before came back 304;
    // only the files repositories do not have (a 404 has no ETag) were asked in full.
    let (requests, not_modified) = (
        github.answered().0 - requests,
        github.answered().1 - not_modified,
    );
    let missing_files = 5; // CODEOWNERS in 3 repositories, README.md in 2
    assert_eq!(
        requests - not_modified,
        missing_files,
        "{requests} requests, {not_modified} not modified"
    );
    assert_eq!(
        support::writes(&port),
        sent,
        "an unchanged resync sends nothing"
    );
    assert_eq!(support::port_content(&port), content);
    assert!(
        github.seen("repos 304") >= 2,
        "the repositories' pages were asked with their ETag"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(TOKEN), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_changes_port_through_the_running_agent() {
    let (github, port, _dir, service) = serving_after_a_resync().await;

    // web#4 is closed on GitHub; its delivery says so.
    let body = close_web_4(&github);
    assert_eq!(deliver(&service, &body, b"not-the-secret").await, 401);
    assert_eq!(deliver(&service, &body, SECRET.as_bytes()).await, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while entity(&port, "githubPullRequest", "web1004").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the pull request is still in Port:\n{}",
            service.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(entity(&port, "githubPullRequest", "api1001").is_some());
    let (code, _, stderr) = service.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains(TOKEN) && !stderr.contains(SECRET),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_accepted_before_a_kill_is_applied_after_the_restart() {
    let (github, port, dir, service) = serving_after_a_resync().await;

    // Port slow: the agent is killed after its 202, before the delete reaches Port.
    port.set_faults(port_emulator::FaultSpec {
        latency_ms: Some(3000),
        ..Default::default()
    })
    .unwrap();
    let body = close_web_4(&github);
    assert_eq!(deliver(&service, &body, SECRET.as_bytes()).await, 202);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &service.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    port.set_faults(port_emulator::FaultSpec::default())
        .unwrap();
    assert!(entity(&port, "githubPullRequest", "web1004").is_some());

    // The restarted agent finds the delivery in its inbox and applies it.
    let restarted = support::RunningService::start(dir.path()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while entity(&port, "githubPullRequest", "web1004").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the delivery was lost:\n{}",
            restarted.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(entity(&port, "githubPullRequest", "api1001").is_some());
    // It was the kept delivery, applied before the restart's resync, not that resync (the
    // line comes once the write is done).
    let applied = |log: &str| {
        log.lines()
            .any(|l| l.contains("live events applied") && l.contains("deleted=1"))
    };
    while !applied(&restarted.stderr()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery applied:\n{}",
            restarted.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _, stderr) = restarted.terminate().await;
    assert_eq!(code, Some(0), "{stderr}");
}
