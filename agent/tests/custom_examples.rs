//! The shipped Ocean Custom examples (`examples/custom/github`, `examples/custom/slack`), each
//! resynced by the real `port-agent` process into the Port emulator from a local server that
//! answers with the recorded responses, in the APIs' documented shapes and pagination.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use port_emulator::{Emulator, EmulatorConfig};
use serde_json::Value;

const TOKEN: &str = "test-token";

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/custom")
        .join(name)
}

/// The example copied into a fresh folder (its state file lands there).
fn copy_example(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let copy = Command::new("cp")
        .arg("-r")
        .arg(format!("{}/.", example(name).display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(copy.success());
    dir
}

fn recorded(name: &str, file: &str) -> Value {
    let path = example(name).join("recorded").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What the vendor stand-in needs: its address, whether page 2 is refused from now on, and
/// how many GitHub pages it answered in full and as not modified.
#[derive(Clone)]
struct Vendor {
    address: String,
    revoke_page_2: Arc<AtomicBool>,
    full: Arc<AtomicU64>,
    not_modified: Arc<AtomicU64>,
}

/// A GitHub page answered as GitHub does: with its ETag, or 304 when the client has it.
fn github_page(vendor: &Vendor, headers: &HeaderMap, file: &str, etag: &str) -> Response {
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v == etag)
    {
        vendor.not_modified.fetch_add(1, Ordering::Relaxed);
        return StatusCode::NOT_MODIFIED.into_response();
    }
    vendor.full.fetch_add(1, Ordering::Relaxed);
    let mut response = axum::Json(recorded("github", file)).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag.parse().unwrap());
    response
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == format!("Bearer {TOKEN}").as_str())
}

async fn github_repos(
    State(vendor): State<Vendor>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let page = query
        .iter()
        .find(|(k, _)| k == "page")
        .map(|(_, v)| v.as_str());
    if !authorized(&headers)
        || headers
            .get(header::ACCEPT)
            .is_none_or(|v| v != "application/vnd.github+json")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match page {
        None | Some("1") => {
            let mut response = github_page(&vendor, &headers, "repos-page-1.json", "\"p1-v1\"");
            let next = format!(
                "http://{}/orgs/acme/repos?per_page=100&type=all&page=2",
                vendor.address
            );
            let link = format!("<{next}>; rel=\"next\", <{next}>; rel=\"last\"");
            response
                .headers_mut()
                .insert(header::LINK, link.parse().unwrap());
            response
        }
        Some("2") if vendor.revoke_page_2.load(Ordering::Relaxed) => {
            (StatusCode::UNAUTHORIZED, "Bad credentials").into_response()
        }
        Some("2") => github_page(&vendor, &headers, "repos-page-2.json", "W/\"p2-v1\""),
        Some(_) => axum::Json(Value::Array(Vec::new())).into_response(),
    }
}

async fn slack_conversations(
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let cursor = query
        .iter()
        .find(|(k, _)| k == "cursor")
        .map(|(_, v)| v.as_str());
    let file = match cursor {
        None => "conversations-page-1.json",
        Some("dGVhbTpDMDYxRkE1UEI=") => "conversations-page-2.json",
        Some("dGVhbTpDMDYxRkE1UEM=") => "conversations-page-3.json",
        Some(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    axum::Json(recorded("slack", file)).into_response()
}

async fn slack_users(headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(recorded("slack", "users-page-1.json")).into_response()
}

async fn vendor() -> Vendor {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor = Vendor {
        address: listener.local_addr().unwrap().to_string(),
        revoke_page_2: Arc::new(AtomicBool::new(false)),
        full: Arc::default(),
        not_modified: Arc::default(),
    };
    let app = Router::new()
        .route("/orgs/acme/repos", get(github_repos))
        .route("/api/conversations.list", get(slack_conversations))
        .route("/api/users.list", get(slack_users))
        .with_state(vendor.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    vendor
}

/// `port-agent resync` on the example in `dir`, the secrets and addresses given as an Ocean
/// deployment gives them: `OCEAN__*` variables.
async fn resync(dir: &Path, emulator: &Emulator, vendor: &Vendor) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_port-agent"));
    command
        .args(["resync", "--config", "agent.yaml"])
        .current_dir(dir)
        .env_remove("PORT_AGENT_CONFIG")
        .env("OCEAN__PORT__BASE_URL", emulator.base_url())
        .env("OCEAN__PORT__CLIENT_ID", &emulator.config().client_id)
        .env(
            "OCEAN__PORT__CLIENT_SECRET",
            &emulator.config().client_secret,
        )
        .env(
            "OCEAN__INTEGRATION__CONFIG__BASE_URL",
            format!("http://{}", vendor.address),
        )
        .env("OCEAN__INTEGRATION__CONFIG__API_TOKEN", TOKEN);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn identifiers(emulator: &Emulator) -> Vec<String> {
    let mut ids: Vec<String> = emulator
        .entities()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["identifier"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn writes(emulator: &Emulator) -> u64 {
    let stats = emulator.stats();
    stats["requests"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(route, _)| route.contains("/entities") && !route.contains("search"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_github_example_pages_by_link_header_and_a_401_on_page_2_deletes_nothing() {
    let (emulator, vendor) = (
        Emulator::start(EmulatorConfig::default()).await.unwrap(),
        vendor().await,
    );
    let dir = copy_example("github");
    assert_ok(&resync(dir.path(), &emulator, &vendor).await);
    // The archived repository is outside the selector.
    assert_eq!(
        identifiers(&emulator),
        ["docs", "infra", "payments", "web-app"]
    );
    let payments = emulator.entity("payments").unwrap();
    assert_eq!(payments["title"], "acme/payments");
    assert_eq!(payments["properties"]["stars"], 120);
    assert_eq!(
        payments["properties"]["topics"],
        serde_json::json!(["core", "pci"])
    );
    assert_eq!(
        payments["properties"]["url"],
        "https://github.com/acme/payments"
    );
    assert_eq!(
        emulator.entity("docs").unwrap()["properties"]["language"],
        Value::Null
    );

    assert_eq!(vendor.full.load(Ordering::Relaxed), 2);
    let before = writes(&emulator);
    assert_ok(&resync(dir.path(), &emulator, &vendor).await);
    assert_eq!(
        writes(&emulator),
        before,
        "an unchanged resync sends nothing"
    );
    // Asked with the ETags kept in the state: both pages came back 304, and were reused.
    assert_eq!(
        (
            vendor.full.load(Ordering::Relaxed),
            vendor.not_modified.load(Ordering::Relaxed)
        ),
        (2, 2)
    );
    assert_eq!(
        identifiers(&emulator),
        ["docs", "infra", "payments", "web-app"]
    );

    // The token loses access to page 2: the kind fails, nothing it held is deleted.
    vendor.revoke_page_2.store(true, Ordering::Relaxed);
    let failed = resync(dir.path(), &emulator, &vendor).await;
    assert!(!failed.status.success());
    let log = String::from_utf8_lossy(&failed.stderr);
    assert!(log.contains("page 2 of") && log.contains("401"), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
    assert_eq!(
        identifiers(&emulator),
        ["docs", "infra", "payments", "web-app"]
    );
    assert_eq!(writes(&emulator), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slack_example_pages_by_cursor_and_an_unchanged_resync_sends_nothing() {
    let (emulator, vendor) = (
        Emulator::start(EmulatorConfig::default()).await.unwrap(),
        vendor().await,
    );
    let dir = copy_example("slack");
    assert_ok(&resync(dir.path(), &emulator, &vendor).await);
    assert_eq!(
        identifiers(&emulator),
        [
            "C01ABCDEF",
            "C02ABCDEF",
            "C03ABCDEF",
            "C05ABCDEF",
            "U012AB3CD",
            "U01USER",
            "U02USER",
            "U03USER"
        ],
        "three pages of channels (the archived one outside the selector), the users, and the creator Port made for the relation"
    );
    let incidents = emulator.entity("C02ABCDEF").unwrap();
    assert_eq!(incidents["title"], "incidents");
    assert_eq!(incidents["properties"]["member_count"], 12);
    assert_eq!(
        incidents["properties"]["created_at"],
        "2023-11-14T22:13:22Z"
    );
    assert_eq!(incidents["relations"]["creator"], "U012AB3CD");
    assert_eq!(
        emulator.entity("U01USER").unwrap()["properties"]["is_admin"],
        true
    );

    let before = writes(&emulator);
    assert_ok(&resync(dir.path(), &emulator, &vendor).await);
    assert_eq!(
        writes(&emulator),
        before,
        "an unchanged resync sends nothing"
    );
}
