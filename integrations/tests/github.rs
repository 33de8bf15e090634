//! The `github` integration against a stand-in for GitHub's REST API that speaks its documented
//! wire format: bearer token, `X-GitHub-Api-Version`, `per_page` pages linked by `Link:
//! rel="next"`, `ETag`/`If-None-Match` with `304 Not Modified`, `x-ratelimit-*`, the raw media
//! type for file contents, and webhook deliveries signed with `X-Hub-Signature-256`.

use std::sync::Arc;

use github_standin::{GitHub, TOKEN, repository, serve};
use port_agent_core::Secret;
use port_agent_core::integration::{FetchError, FetchRequest, Integration, fetch_all};
use port_agent_core::mapping::PortAppConfig;
use port_agent_core::vendor_http::StateValidators;
use port_agent_core::webhook::{Refusal, WebhookProcessor, WebhookRequest, WebhookSettings};
use port_agent_integrations::github::GitHubIntegration;
use port_agent_integrations::signature::signature;
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret";

fn integration(host: &str, organization: Option<&str>) -> GitHubIntegration {
    let mut config = json!({"githubHost": host, "githubToken": TOKEN, "resyncRatelimitReservationThreshold": 95});
    if let Some(organization) = organization {
        config["githubOrganization"] = json!(organization);
    }
    GitHubIntegration::from_config(config.as_object().unwrap()).unwrap()
}

/// The integration's default mapping, with the extra resources a test adds.
fn mapping(extra: &[Value]) -> PortAppConfig {
    let builtin = port_agent_integrations::built_in("github").unwrap();
    let mut mapping: Value = serde_yaml_ng::from_str(builtin.mapping).unwrap();
    mapping["resources"]
        .as_array_mut()
        .unwrap()
        .extend(extra.iter().cloned());
    PortAppConfig::from_yaml(&mapping.to_string()).unwrap()
}

fn resource_index(mapping: &PortAppConfig, kind: &str) -> usize {
    mapping
        .resources
        .iter()
        .position(|r| r.kind == kind)
        .unwrap()
}

/// The items `integration` fetches for `mapping`'s resource `index`, or why not.
async fn fetched(
    integration: &GitHubIntegration,
    mapping: &PortAppConfig,
    index: usize,
) -> Result<Vec<Value>, FetchError> {
    let texts = fetch_all(integration, FetchRequest::of(mapping, index)).await?;
    Ok(texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect())
}

/// The items of `mapping`'s (first) resource of `kind`.
async fn items(integration: &GitHubIntegration, mapping: &PortAppConfig, kind: &str) -> Vec<Value> {
    fetched(integration, mapping, resource_index(mapping, kind))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn field<'a>(items: &'a [Value], key: &str) -> Vec<&'a Value> {
    items.iter().map(|i| &i[key]).collect()
}

fn issue_resource() -> Value {
    json!({"kind": "issue", "selector": {"query": "true", "state": "all"},
           "port": {"entity": {"mappings": {"identifier": ".id | tostring", "blueprint": "\"issue\""}}}})
}

#[tokio::test]
async fn each_kind_comes_as_ocean_shapes_it_across_pages() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let integration = integration(&host, Some("acme"));
    let mapping = mapping(&[issue_resource()]);

    let organizations = items(&integration, &mapping, "organization").await;
    assert_eq!(field(&organizations, "login"), [&json!("acme")]);

    // Three repositories over two pages, each with its organization and included files.
    let repositories = items(&integration, &mapping, "repository").await;
    assert_eq!(
        field(&repositories, "name"),
        [&json!("api"), &json!("web"), &json!("docs")]
    );
    assert!(repositories.iter().all(|r| r["__organization"] == "acme"));
    assert_eq!(
        repositories[0]["__includedFiles"],
        json!({"README.md": "# api\n", "CODEOWNERS": null})
    );
    assert_eq!(repositories[1]["__includedFiles"]["README.md"], Value::Null);

    // The default selector: open pull requests only.
    let mut pulls = items(&integration, &mapping, "pull-request").await;
    pulls.sort_by_key(|p| p["number"].as_u64());
    assert_eq!(field(&pulls, "number"), [&json!(1), &json!(4)]);
    assert_eq!(
        field(&pulls, "__repository"),
        [&json!("api"), &json!("web")]
    );

    // Issues without the pull requests GitHub lists among them.
    let issues = items(&integration, &mapping, "issue").await;
    assert_eq!(field(&issues, "number"), [&json!(10), &json!(11)]);
    assert!(
        issues
            .iter()
            .all(|i| i["__repository"] == "api" && i["__organization"] == "acme")
    );
}

#[tokio::test]
async fn closed_pull_requests_are_the_recent_ones_up_to_max_results() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let integration = integration(&host, Some("acme"));
    let pulls_with = |selector: Value| {
        mapping(&[json!({"kind": "pull-request", "selector": selector,
            "port": {"entity": {"mappings": {"identifier": ".id | tostring", "blueprint": "\"pr\""}}}})])
    };
    // Repositories are read at once: their pull requests come in any order.
    let numbers = |items: Vec<Value>| {
        let mut numbers: Vec<u64> = items
            .iter()
            .map(|i| i["number"].as_u64().unwrap())
            .collect();
        numbers.sort();
        numbers
    };
    // resources[2] is the default (open); the one added is last.
    let fetch = |mapping: PortAppConfig| {
        let integration = &integration;
        async move {
            fetched(integration, &mapping, mapping.resources.len() - 1)
                .await
                .unwrap()
        }
    };
    // Closed within 60 days (the default): #2, not #3 (90 days old).
    let both = fetch(pulls_with(
        json!({"query": "true", "states": ["open", "closed"]}),
    ))
    .await;
    assert_eq!(numbers(both), [1, 2, 4]);
    let long = fetch(pulls_with(
        json!({"query": "true", "states": ["closed"], "since": 120}),
    ))
    .await;
    assert_eq!(numbers(long), [2, 3]);
    let capped = fetch(pulls_with(
        json!({"query": "true", "states": ["closed"], "since": 120, "maxResults": 1}),
    ))
    .await;
    assert_eq!(numbers(capped), [2]);
}

#[tokio::test]
async fn without_an_organization_every_organization_of_the_token_filtered_by_the_mapping() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let integration = integration(&host, None);
    let all = items(&integration, &mapping(&[]), "organization").await;
    assert_eq!(field(&all, "login"), [&json!("acme"), &json!("other")]);
    assert!(all.iter().all(|o| o["type"] == "Organization"));
    let mut only: Value =
        serde_yaml_ng::from_str(port_agent_integrations::built_in("github").unwrap().mapping)
            .unwrap();
    only["organizations"] = json!(["other"]);
    let only = PortAppConfig::from_yaml(&only.to_string()).unwrap();
    assert_eq!(
        field(&items(&integration, &only, "organization").await, "login"),
        [&json!("other")]
    );
}

#[tokio::test]
async fn unchanged_pages_are_not_modified_and_give_the_same_items() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let integration = integration(&host, Some("acme"));
    let mapping = mapping(&[]);
    let dir = tempfile::tempdir().unwrap();
    let state = port_agent_state::StateStore::open(
        &dir.path().join("state.redb"),
        &port_agent_state::Identity {
            integration_type: "github".into(),
            integration_identifier: "gh".into(),
            port_base_url: "http://port".into(),
        },
    )
    .unwrap();
    let validators = StateValidators(Arc::new(state));
    let fetch = || async {
        let mut request = FetchRequest::of(&mapping, resource_index(&mapping, "repository"));
        request.validators = Some(&validators);
        fetch_all(&integration, request).await.unwrap()
    };
    let first = fetch().await;
    assert_eq!((github.seen("repos"), github.seen("repos 304")), (2, 0));
    let second = fetch().await;
    assert_eq!(second, first);
    assert_eq!(
        (github.seen("repos"), github.seen("repos 304")),
        (4, 2),
        "both pages asked conditionally"
    );
    // The README (the one included file there is) too.
    assert_eq!(github.seen("contents 304"), 1);
    assert!(second[0].contains("# api"));
    // A changed repository changes its page: that page is answered in full.
    github.repositories.lock().unwrap()[2]["description"] = json!("the docs");
    let third = fetch().await;
    assert_eq!(github.seen("repos 304"), 3);
    assert_eq!(third.len(), 3);
    assert!(third[2].contains("the docs"));
}

#[tokio::test]
async fn a_refused_listing_fails_the_kind_naming_the_request_never_the_token() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let config =
        json!({"githubHost": host, "githubToken": "wrong-token", "githubOrganization": "acme"});
    let integration = GitHubIntegration::from_config(config.as_object().unwrap()).unwrap();
    let mapping = mapping(&[]);
    let error = fetched(
        &integration,
        &mapping,
        resource_index(&mapping, "organization"),
    )
    .await
    .unwrap_err();
    assert!(
        error.message.contains("401") && error.message.contains("/users/acme"),
        "{error}"
    );
    assert!(!error.message.contains("wrong-token"), "{error}");
}

#[test]
fn the_token_is_required_and_the_selector_checked() {
    let error = GitHubIntegration::from_config(
        json!({"githubHost": "https://api.github.com"})
            .as_object()
            .unwrap(),
    )
    .unwrap_err();
    assert!(error.contains("githubToken"), "{error}");
    let integration = integration("https://api.github.com", None);
    let bad = mapping(&[
        json!({"kind": "pull-request", "selector": {"query": "true", "states": ["merged"]},
        "port": {"entity": {"mappings": {"identifier": ".id", "blueprint": "\"pr\""}}}}),
    ]);
    let problems = integration.check_resource(bad.resources.last().unwrap());
    assert!(
        problems[0].contains("selector.states") && problems[0].contains("merged"),
        "{problems:?}"
    );
    let mistyped = mapping(&[
        json!({"kind": "branch", "selector": {"query": "true", "defaultBranchOnly": "yes-please"},
        "port": {"entity": {"mappings": {"identifier": ".name", "blueprint": "\"b\""}}}}),
    ]);
    let problems = integration.check_resource(mistyped.resources.last().unwrap());
    assert!(
        problems[0].contains("selector") && !problems[0].contains("yes-please"),
        "{problems:?}"
    );
    let unknown = mapping(&[json!({"kind": "commit", "selector": {"query": "true"},
        "port": {"entity": {"mappings": {"identifier": ".id", "blueprint": "\"c\""}}}})]);
    assert!(
        !integration
            .check_resource(unknown.resources.last().unwrap())
            .is_empty()
    );
}

// ---- Webhooks ----

fn processor(
    integration: &GitHubIntegration,
    secret: Option<&str>,
    allow_unsigned: bool,
) -> Box<dyn WebhookProcessor> {
    integration
        .webhook_processors(&WebhookSettings {
            secret: secret.map(|s| Secret::new(s.to_owned())),
            allow_unsigned,
        })
        .pop()
        .unwrap()
}

/// A delivery as GitHub sends it: its event, a delivery id and the body's signature.
fn delivery(event: &str, body: &Value, secret: &str) -> (Vec<(String, String)>, Vec<u8>) {
    let body = body.to_string().into_bytes();
    let headers = vec![
        ("x-github-event".to_owned(), event.to_owned()),
        ("x-github-delivery".to_owned(), format!("d-{}", body.len())),
        (
            "x-hub-signature-256".to_owned(),
            signature(secret.as_bytes(), &body),
        ),
    ];
    (headers, body)
}

/// Accepts the delivery, then handles it for the mapping's resource of `kind`: the items it
/// updates and deletes.
async fn handled(
    processor: &dyn WebhookProcessor,
    event: &str,
    body: Value,
    kind: &str,
) -> (Vec<Value>, Vec<Value>) {
    let (headers, body) = delivery(event, &body, SECRET);
    let request = WebhookRequest {
        path: "/integration/webhook",
        headers: &headers,
        body: &body,
    };
    assert!(processor.should_process(&request));
    let accepted = processor.accept(&request).unwrap();
    let mapping = mapping(&[issue_resource()]);
    let resource = &mapping.resources[resource_index(&mapping, kind)];
    let handled = processor.handle(&accepted.payload, resource).await.unwrap();
    let values = |raw: Vec<Box<serde_json::value::RawValue>>| {
        raw.iter()
            .map(|r| serde_json::from_str(r.get()).unwrap())
            .collect()
    };
    (values(handled.updated), values(handled.deleted))
}

#[tokio::test]
async fn webhooks_read_the_current_object_and_delete_what_left_the_selector() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let integration = integration(&host, Some("acme"));
    let processor = processor(&integration, Some(SECRET), false);
    let repo = repository("api");

    // A pull request closed since: the default selector keeps open ones, so it is deleted.
    github.pulls.lock().unwrap().get_mut("api").unwrap()[0]["state"] = json!("closed");
    let (updated, deleted) = handled(processor.as_ref(), "pull_request",
        json!({"action": "closed", "number": 1, "pull_request": {"number": 1, "id": 1001, "head": {"repo": {"name": "api"}}}, "repository": repo}), "pull-request").await;
    assert!(updated.is_empty());
    assert_eq!(
        (deleted[0]["id"].clone(), deleted[0]["__repository"].clone()),
        (json!(1001), json!("api"))
    );

    // Reopened: read afresh and upserted, enriched as a resync enriches it.
    github.pulls.lock().unwrap().get_mut("api").unwrap()[0]["state"] = json!("open");
    let (updated, deleted) = handled(
        processor.as_ref(),
        "pull_request",
        json!({"action": "reopened", "pull_request": {"number": 1}, "repository": repo}),
        "pull-request",
    )
    .await;
    assert!(deleted.is_empty());
    assert_eq!(
        (
            updated[0]["title"].clone(),
            updated[0]["__organization"].clone()
        ),
        (json!("PR 1"), json!("acme"))
    );

    // A renamed repository: the old name's entity goes, the new one comes with its files.
    github.repositories.lock().unwrap()[0]["name"] = json!("api-v2");
    github.repositories.lock().unwrap()[0]["full_name"] = json!("acme/api-v2");
    let renamed = repository("api-v2");
    github.repositories.lock().unwrap()[0] = renamed.clone();
    let (updated, deleted) = handled(processor.as_ref(), "repository",
        json!({"action": "renamed", "changes": {"repository": {"name": {"from": "api"}}}, "repository": renamed}), "repository").await;
    assert_eq!(field(&deleted, "name"), [&json!("api")]);
    assert_eq!(field(&updated, "name"), [&json!("api-v2")]);
    assert!(updated[0]["__includedFiles"].is_object());

    // A deleted repository is deleted without asking GitHub.
    let asked = github.seen("repo");
    let (updated, deleted) = handled(
        processor.as_ref(),
        "repository",
        json!({"action": "deleted", "repository": repository("web")}),
        "repository",
    )
    .await;
    assert!(updated.is_empty());
    assert_eq!(field(&deleted, "name"), [&json!("web")]);
    assert_eq!(github.seen("repo"), asked);

    // An issue event does not touch the pull-request resource.
    let (updated, deleted) = handled(
        processor.as_ref(),
        "issues",
        json!({"action": "edited", "issue": {"number": 10}, "repository": repo}),
        "pull-request",
    )
    .await;
    assert!(updated.is_empty() && deleted.is_empty());
}

#[tokio::test]
async fn deliveries_must_be_signed_and_for_the_organization() {
    let integration = integration("http://127.0.0.1:9", Some("acme"));
    let body =
        json!({"action": "opened", "pull_request": {"number": 3}, "repository": repository("api")});
    let signed = processor(&integration, Some(SECRET), false);
    let (headers, bytes) = delivery("pull_request", &body, "another-secret");
    let request = WebhookRequest {
        path: "/integration/webhook",
        headers: &headers,
        body: &bytes,
    };
    assert!(matches!(
        signed.accept(&request),
        Err(Refusal::Unauthenticated(_))
    ));
    let (headers, bytes) = delivery("pull_request", &body, SECRET);
    let request = WebhookRequest {
        path: "/integration/webhook",
        headers: &headers,
        body: &bytes,
    };
    let accepted = signed.accept(&request).unwrap();
    assert_eq!(accepted.kinds, ["pull-request"]);
    assert_eq!(accepted.ordering_key.as_deref(), Some("acme/api#3"));
    assert!(accepted.delivery_id.is_some());

    // No secret set: refused, unless unsigned deliveries are allowed.
    let unsigned = processor(&integration, None, false);
    match unsigned.accept(&request) {
        Err(Refusal::Unauthenticated(message)) => {
            assert!(message.contains("webhookSecret"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(processor(&integration, None, true).accept(&request).is_ok());

    // Another organization's repository, and a ping, are not taken.
    let mut elsewhere = body.clone();
    elsewhere["repository"]["owner"]["login"] = json!("someone-else");
    let (headers, bytes) = delivery("pull_request", &elsewhere, SECRET);
    let request = WebhookRequest {
        path: "/integration/webhook",
        headers: &headers,
        body: &bytes,
    };
    assert!(matches!(signed.accept(&request), Err(Refusal::Invalid(_))));
    let (headers, bytes) = delivery("ping", &json!({"zen": "…"}), SECRET);
    let ping = WebhookRequest {
        path: "/integration/webhook",
        headers: &headers,
        body: &bytes,
    };
    assert!(!signed.should_process(&ping));
}

#[tokio::test]
async fn a_rate_limit_403_waits_for_the_reset_and_goes_on() {
    let github = GitHub::with_data();
    *github.rate_limited.lock().unwrap() = 1;
    let host = serve(github.clone()).await;
    let integration = integration(&host, Some("acme"));
    let repositories = items(&integration, &mapping(&[]), "repository").await;
    assert_eq!(repositories.len(), 3);
    assert_eq!(github.seen("repos 403"), 1);
    assert_eq!(
        github.seen("repos before the reset"),
        0,
        "asked again before GitHub's reset"
    );
}

fn app_integration(host: &str, private_key: &str) -> GitHubIntegration {
    let config = json!({"githubHost": host, "githubAppId": github_standin::APP_ID,
        "githubAppPrivateKey": private_key, "githubOrganization": "acme"});
    GitHubIntegration::from_config(config.as_object().unwrap()).unwrap()
}

#[tokio::test]
async fn a_github_app_finds_its_installation_keeps_its_token_and_renews_a_refused_one() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let integration = app_integration(&host, github_standin::APP_PRIVATE_KEY);
    let mapping = mapping(&[]);
    let repositories = items(&integration, &mapping, "repository").await;
    assert_eq!(repositories.len(), 3);
    // One installation token, for every request of the resync.
    assert_eq!(github.seen("access_tokens"), 1);
    items(&integration, &mapping, "pull-request").await;
    assert_eq!(github.seen("access_tokens"), 1);
    // GitHub stops taking it: the next request gets a 401, a new token, and goes through.
    github.revoke_installation_tokens();
    let pulls = items(&integration, &mapping, "pull-request").await;
    assert_eq!(pulls.len(), 2);
    assert_eq!(github.seen("access_tokens"), 2);
}

#[tokio::test]
async fn a_github_app_key_is_taken_as_pem_or_base64_and_a_wrong_one_is_named_not_shown() {
    use base64::Engine as _;
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let encoded = base64::engine::general_purpose::STANDARD.encode(github_standin::APP_PRIVATE_KEY);
    let integration = app_integration(&host, &encoded);
    assert_eq!(
        items(&integration, &mapping(&[]), "organization")
            .await
            .len(),
        1
    );

    let config = json!({"githubHost": host, "githubAppId": "1", "githubAppPrivateKey": "not-a-key-at-all",
        "githubOrganization": "acme"});
    let error = GitHubIntegration::from_config(config.as_object().unwrap()).unwrap_err();
    assert!(
        error.contains("githubAppPrivateKey") && !error.contains("not-a-key-at-all"),
        "{error}"
    );
    let config = json!({"githubHost": host, "githubAppId": "1", "githubAppPrivateKey": encoded});
    let error = GitHubIntegration::from_config(config.as_object().unwrap()).unwrap_err();
    assert!(error.contains("githubOrganization"), "{error}");
}

#[tokio::test]
async fn several_repositories_pull_requests_are_read_at_once() {
    let github = GitHub::with_data();
    {
        let mut repositories = github.repositories.lock().unwrap();
        for n in 0..8 {
            repositories.push(repository(&format!("service-{n}")));
        }
    }
    *github.pulls_delay.lock().unwrap() = std::time::Duration::from_millis(100);
    let host = serve(github.clone()).await;
    let integration = integration(&host, Some("acme"));
    let pulls = items(&integration, &mapping(&[]), "pull-request").await;
    assert_eq!(pulls.len(), 2);
    let most = github
        .most_pulls_at_once
        .load(std::sync::atomic::Ordering::SeqCst);
    // 11 repositories, each answered after 100 ms: read in turn, one at a time.
    assert!((2..=10).contains(&most), "{most} at once");
}

#[tokio::test]
async fn a_repository_s_listings_come_with_its_names_and_paged() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let integration = integration(&host, Some("acme"));
    let simple = |kind: &str, selector: Value| {
        json!({"kind": kind, "selector": selector,
            "port": {"entity": {"mappings": {"identifier": ".name", "blueprint": "\"x\""}}}})
    };
    let listings = mapping(&[
        simple("release", json!({"query": "true"})),
        simple("tag", json!({"query": "true"})),
        simple("branch", json!({"query": "true"})),
        simple("workflow", json!({"query": "true"})),
        simple("collaborator", json!({"query": "true"})),
    ]);
    let sorted_names = |items: &[Value], key: &str| {
        let mut names: Vec<String> = items
            .iter()
            .map(|i| i[key].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    let releases = items(&integration, &listings, "release").await;
    assert_eq!(sorted_names(&releases, "tag_name"), ["v1.0.0"]);
    assert_eq!(
        (&releases[0]["__repository"], &releases[0]["__organization"]),
        (&json!("api"), &json!("acme"))
    );
    let tags = items(&integration, &listings, "tag").await;
    assert_eq!(tags[0]["__repository_object"]["full_name"], "acme/api");
    // Three branches over two pages; the default one marked.
    let branches = items(&integration, &listings, "branch").await;
    assert_eq!(
        sorted_names(&branches, "name"),
        ["feature-a", "feature-b", "main"]
    );
    assert!(
        branches
            .iter()
            .all(|b| b["__is_default_branch"] == (b["name"] == "main"))
    );
    // Workflows come inside GitHub's {total_count, workflows} wrapper, two a page.
    let workflows = items(&integration, &listings, "workflow").await;
    assert_eq!(
        sorted_names(&workflows, "name"),
        ["ci", "deploy", "nightly"]
    );
    assert!(workflows.iter().all(|w| w["__repository"] == "web"));
    let collaborators = items(&integration, &listings, "collaborator").await;
    assert_eq!(sorted_names(&collaborators, "login"), ["octocat"]);

    let only_default = mapping(&[simple(
        "branch",
        json!({"query": "true", "defaultBranchOnly": true}),
    )]);
    let defaults = fetched(
        &integration,
        &only_default,
        only_default.resources.len() - 1,
    )
    .await
    .unwrap();
    assert_eq!(sorted_names(&defaults, "name"), ["main"]);
}

#[tokio::test]
async fn a_delivery_cannot_steer_the_token_to_other_api_paths() {
    let integration = integration("http://127.0.0.1:9", Some("acme"));
    let signed = processor(&integration, Some(SECRET), false);
    for full_name in [
        "acme/../../user",
        "acme/api?x=1",
        "acme",
        "acme/api/extra",
        "acme/..",
        "../api",
    ] {
        let mut repo = repository("api");
        repo["full_name"] = json!(full_name);
        let body = json!({"action": "edited", "repository": repo});
        let (headers, bytes) = delivery("repository", &body, SECRET);
        let request = WebhookRequest {
            path: "/integration/webhook",
            headers: &headers,
            body: &bytes,
        };
        assert!(
            matches!(signed.accept(&request), Err(Refusal::Invalid(_))),
            "{full_name}"
        );
    }
}

#[tokio::test]
async fn a_next_page_on_another_host_is_not_followed_with_the_token() {
    // A "GitHub" whose Link points elsewhere: the request must stop there.
    let elsewhere = serve(GitHub::with_data()).await;
    let app = axum::Router::new()
        .route(
            "/orgs/acme/repos",
            axum::routing::get(move || {
                let next = format!("<{elsewhere}/orgs/acme/repos?page=2>; rel=\"next\"");
                async move {
                    (
                        [(axum::http::header::LINK, next)],
                        axum::Json(json!([repository("api")])),
                    )
                }
            }),
        )
        .route(
            "/users/acme",
            axum::routing::get(|| async {
                axum::Json(json!({"login": "acme", "type": "Organization"}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("localhost:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // Reached as "localhost", while the stand-in it points to is 127.0.0.1: another host.
    let integration = integration(&format!("http://localhost:{port}"), Some("acme"));
    let mapping = mapping(&[]);
    let error = fetched(
        &integration,
        &mapping,
        resource_index(&mapping, "repository"),
    )
    .await
    .unwrap_err();
    assert!(error.message.contains("another host"), "{error}");
}

#[tokio::test]
async fn release_tag_and_branch_deliveries_read_github_or_delete() {
    let github = GitHub::with_data();
    let host = serve(github.clone()).await;
    let integration = integration(&host, Some("acme"));
    let processor = processor(&integration, Some(SECRET), false);
    let simple = |kind: &str, selector: Value| {
        json!({"kind": kind, "selector": selector,
            "port": {"entity": {"mappings": {"identifier": ".name", "blueprint": "\"x\""}}}})
    };
    let mapping = mapping(&[
        simple("release", json!({"query": "true"})),
        simple("tag", json!({"query": "true"})),
        simple(
            "branch",
            json!({"query": "true", "defaultBranchOnly": true}),
        ),
    ]);
    let api = repository("api");
    let handle = |event: &'static str, body: Value, kind: &'static str| {
        let (processor, mapping) = (&processor, &mapping);
        async move {
            let (headers, bytes) = delivery(event, &body, SECRET);
            let request = WebhookRequest {
                path: "/integration/webhook",
                headers: &headers,
                body: &bytes,
            };
            assert!(processor.should_process(&request), "{event}");
            let accepted = processor.accept(&request).unwrap();
            assert_eq!(accepted.kinds, [kind]);
            let resource = &mapping.resources[resource_index(mapping, kind)];
            let handled = processor.handle(&accepted.payload, resource).await.unwrap();
            let values = |raw: Vec<Box<serde_json::value::RawValue>>| -> Vec<Value> {
                raw.iter()
                    .map(|r| serde_json::from_str(r.get()).unwrap())
                    .collect()
            };
            (values(handled.updated), values(handled.deleted))
        }
    };

    // A release published: GitHub's copy, with its repository's names.
    let (updated, deleted) = handle(
        "release",
        json!({"action": "published", "release": {"id": 301}, "repository": api}),
        "release",
    )
    .await;
    assert!(deleted.is_empty());
    assert_eq!(
        (&updated[0]["tag_name"], &updated[0]["__repository"]),
        (&json!("v1.0.0"), &json!("api"))
    );
    let (updated, deleted) = handle(
        "release",
        json!({"action": "deleted", "release": {"id": 301, "name": "One"}, "repository": api}),
        "release",
    )
    .await;
    assert!(updated.is_empty());
    assert_eq!(deleted[0]["id"], 301);

    // A tag created: its commit from the ref; deleted: by name.
    let (updated, _) = handle(
        "create",
        json!({"ref": "v1.0.0", "ref_type": "tag", "repository": api}),
        "tag",
    )
    .await;
    assert_eq!(
        (&updated[0]["name"], &updated[0]["commit"]["sha"]),
        (&json!("v1.0.0"), &json!("abc"))
    );
    assert_eq!(updated[0]["__repository_object"]["full_name"], "acme/api");
    let (updated, deleted) = handle(
        "delete",
        json!({"ref": "v1.0.0", "ref_type": "tag", "repository": api}),
        "tag",
    )
    .await;
    assert!(updated.is_empty());
    assert_eq!(deleted[0]["name"], "v1.0.0");

    // Branches with defaultBranchOnly: a new feature branch changes nothing, main is upserted.
    let (updated, deleted) = handle(
        "create",
        json!({"ref": "feature-a", "ref_type": "branch", "repository": api}),
        "branch",
    )
    .await;
    assert!(updated.is_empty() && deleted.is_empty());
    let (updated, _) = handle(
        "create",
        json!({"ref": "main", "ref_type": "branch", "repository": api}),
        "branch",
    )
    .await;
    assert_eq!(
        (&updated[0]["name"], &updated[0]["__is_default_branch"]),
        (&json!("main"), &json!(true))
    );
    // A create of something else (a repository's first push makes no ref_type we take) is nobody's.
    let (headers, bytes) = delivery(
        "create",
        &json!({"ref": "x", "ref_type": "repository", "repository": api}),
        SECRET,
    );
    let request = WebhookRequest {
        path: "/integration/webhook",
        headers: &headers,
        body: &bytes,
    };
    assert!(!processor.should_process(&request));
}
