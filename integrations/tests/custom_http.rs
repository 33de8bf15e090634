//! The `custom` integration (Ocean Custom) against a local HTTP server speaking the shapes real
//! APIs use: every pagination type and auth type, path parameters, data_path, retries, and the
//! failures that must fail the kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use port_agent_core::integration::{FetchError, FetchRequest, fetch_all};
use port_agent_core::mapping::PortAppConfig;
use port_agent_core::vendor_http::{Priority, VendorRequest};
use port_agent_integrations::custom::CustomIntegration;
use serde_json::{Value, json};

/// Requests seen, by route name.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<HashMap<String, u32>>>);

impl Seen {
    /// Counts a request to `route` and returns how many there were, this one included.
    fn count(&self, route: &str) -> u32 {
        let mut seen = self.0.lock().unwrap();
        let n = seen.entry(route.to_owned()).or_default();
        *n += 1;
        *n
    }
}

type Params = Query<HashMap<String, String>>;

fn number(params: &HashMap<String, String>, name: &str, default: u64) -> u64 {
    params
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Items `from..to` of a list of 5.
fn items(from: u64, to: u64) -> Vec<Value> {
    (from..to.min(5)).map(|i| json!({"id": i})).collect()
}

fn authorized(headers: &HeaderMap, name: header::HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| v == value)
}

async fn server() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/auth/bearer", get(|h: HeaderMap| async move {
            if authorized(&h, header::AUTHORIZATION, "Bearer tok") { axum::Json(json!([{"id": "b"}])).into_response() } else { StatusCode::UNAUTHORIZED.into_response() }
        }))
        .route("/auth/basic", get(|h: HeaderMap| async move {
            // base64("u:p")
            if authorized(&h, header::AUTHORIZATION, "Basic dTpw") { axum::Json(json!([{"id": "basic"}])).into_response() } else { StatusCode::UNAUTHORIZED.into_response() }
        }))
        .route("/auth/key", get(|h: HeaderMap| async move {
            if h.get("x-custom-key").is_some_and(|v| v == "k") && h.get("x-extra").is_some_and(|v| v == "e") { axum::Json(json!([{"id": "key"}])).into_response() } else { StatusCode::UNAUTHORIZED.into_response() }
        }))
        .route("/page", get(|Query(p): Params| async move {
            let (page, size) = (number(&p, "page", 1), number(&p, "size", 100));
            let from = (page - 1) * size;
            axum::Json(json!({"items": items(from, from + size), "has_more": from + size < 5}))
        }))
        .route("/offset", get(|Query(p): Params| async move {
            let (offset, limit) = (number(&p, "offset", 0), number(&p, "limit", 100));
            axum::Json(json!(items(offset, offset + limit)))
        }))
        .route("/cursor", get(|Query(p): Params| async move {
            let (at, limit) = (number(&p, "cursor", 0), number(&p, "limit", 100));
            let more = at + limit < 5;
            axum::Json(json!({"data": items(at, at + limit), "meta": {"next": if more { json!((at + limit).to_string()) } else { Value::Null }, "more": more}}))
        }))
        .route("/nextlink", get(|Query(p): Params| async move {
            let page = number(&p, "p", 1);
            let next = if page < 3 { json!(format!("/nextlink?p={}", page + 1)) } else { Value::Null };
            axum::Json(json!({"value": items((page - 1) * 2, page * 2), "@odata.nextLink": next}))
        }))
        .route("/link", get(|State(address): State<String>, Query(p): Params| async move {
            let page = number(&p, "page", 1);
            let mut response = axum::Json(json!(items((page - 1) * 2, page * 2))).into_response();
            if page < 3 {
                let link = format!("<http://{address}/link?page={}>; rel=\"next\", <http://{address}/link?page=3>; rel=\"last\"", page + 1);
                response.headers_mut().insert(header::LINK, link.parse().unwrap());
            }
            response
        }))
        .route("/teams", get(|| async { axum::Json(json!({"teams": [{"id": "t1", "active": true}, {"id": "t2", "active": true}, {"id": "t3", "active": false}]})) }))
        .route("/teams/{team}/members", get(|Path(team): Path<String>| async move {
            axum::Json(json!({"members": [{"name": format!("m-{team}")}]}))
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let flaky = Router::new()
        .route(
            "/limited",
            get(|State(seen): State<Seen>| async move {
                if seen.count("limited") == 1 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "1")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    axum::Json(json!([{"id": "after-429"}])).into_response()
                }
            }),
        )
        .route(
            "/unwell",
            get(|State(seen): State<Seen>| async move {
                if seen.count("unwell") == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                } else {
                    axum::Json(json!([{"id": "after-500"}])).into_response()
                }
            }),
        )
        .route(
            "/broken",
            get(|Query(p): Params| async move {
                if number(&p, "page", 1) == 2 {
                    "<html>not json</html>".into_response()
                } else {
                    axum::Json(json!({"items": [{"id": 1}], "has_more": true})).into_response()
                }
            }),
        )
        .route(
            "/revoked",
            get(|Query(p): Params| async move {
                if number(&p, "page", 1) == 3 {
                    (StatusCode::UNAUTHORIZED, "token revoked").into_response()
                } else {
                    axum::Json(json!({"items": [{"id": 1}], "has_more": true})).into_response()
                }
            }),
        )
        .route(
            "/counted-teams",
            get(|State(seen): State<Seen>| async move {
                seen.count("teams");
                axum::Json(json!([{"id": "t1"}, {"id": "t2"}]))
            }),
        )
        .route(
            "/looping",
            get(|| async {
                axum::Json(json!({"data": [{"id": 1}], "meta": {"next": "same", "more": true}}))
            }),
        )
        .route(
            "/elsewhere",
            get(|| async {
                axum::Json(json!({"data": [{"id": 1}], "next": "http://attacker.invalid/steal"}))
            }),
        )
        .route(
            "/oauth/token",
            axum::routing::post(
                |State(seen): State<Seen>, h: HeaderMap, body: String| async move {
                    let form = h
                        .get(header::CONTENT_TYPE)
                        .is_some_and(|v| v == "application/x-www-form-urlencoded");
                    if !form || body != "grant_type=client_credentials" {
                        return StatusCode::BAD_REQUEST.into_response();
                    }
                    let n = seen.count("token");
                    axum::Json(json!({"access_token": format!("tok-{n}"), "token_type": "bearer"}))
                        .into_response()
                },
            ),
        )
        // Only the second token is good: the first is refused, as an expired one would be.
        .route(
            "/secure",
            get(|h: HeaderMap, Query(p): Params| async move {
                if authorized(&h, header::AUTHORIZATION, "Bearer tok-2")
                    && p.get("tenant").is_some_and(|t| t == "tok-2")
                {
                    axum::Json(json!([{"id": "secret-item"}])).into_response()
                } else {
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }),
        )
        .with_state(seen.clone());
    let app = app.with_state(address.clone()).merge(flaky);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), seen)
}

/// Fetches the one resource of `selector` for `kind` with `config` (baseUrl added).
async fn fetch(
    base: &str,
    mut config: Value,
    kind: &str,
    selector: Value,
) -> Result<Vec<Value>, FetchError> {
    config["baseUrl"] = json!(base);
    let integration = CustomIntegration::from_config(config.as_object().unwrap()).unwrap();
    let mut resource = json!({"kind": kind, "selector": {"query": "true"}, "port": {"entity": {"mappings": {"identifier": ".id", "blueprint": "\"b\""}}}});
    for (key, value) in selector.as_object().unwrap() {
        resource["selector"][key] = value.clone();
    }
    let mapping = PortAppConfig::from_yaml(&json!({"resources": [resource]}).to_string()).unwrap();
    let items = fetch_all(&integration, FetchRequest::of(&mapping, 0)).await?;
    Ok(items
        .iter()
        .map(|i| serde_json::from_str(i).unwrap())
        .collect())
}

fn ids(items: &[Value]) -> Vec<Value> {
    items.iter().map(|i| i["id"].clone()).collect()
}

#[tokio::test]
async fn every_auth_type_sends_its_credentials() {
    let (base, _) = server().await;
    let bearer = json!({"authType": "bearer_token", "apiToken": "tok"});
    assert_eq!(
        ids(&fetch(&base, bearer, "/auth/bearer", json!({}))
            .await
            .unwrap()),
        [json!("b")]
    );
    let basic = json!({"authType": "basic", "username": "u", "password": "p"});
    assert_eq!(
        ids(&fetch(&base, basic, "/auth/basic", json!({})).await.unwrap()),
        [json!("basic")]
    );
    let key = json!({"authType": "api_key", "apiKey": "k", "apiKeyHeader": "X-Custom-Key", "customHeaders": "{\"X-Extra\": \"e\"}"});
    assert_eq!(
        ids(&fetch(&base, key, "/auth/key", json!({})).await.unwrap()),
        [json!("key")]
    );
    // A wrong token: the kind fails, the error names the URL and never the token.
    let wrong = json!({"authType": "bearer_token", "apiToken": "s3cret-wrong"});
    let error = fetch(&base, wrong, "/auth/bearer", json!({}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("401") && error.contains("/auth/bearer"),
        "{error}"
    );
    assert!(!error.contains("s3cret"), "{error}");
}

#[tokio::test]
async fn every_pagination_type_reads_all_five_items() {
    let (base, _) = server().await;
    let all: Vec<Value> = (0..5).map(|i| json!(i)).collect();
    let cases = [
        (
            json!({"paginationType": "page", "pageSize": "2", "hasMorePath": "has_more"}),
            "/page",
            json!({"data_path": ".items"}),
        ),
        (
            json!({"paginationType": "offset", "pageSize": 2}),
            "/offset",
            json!({}),
        ),
        (
            json!({"paginationType": "cursor", "pageSize": 2, "cursorPath": "meta.next", "hasMorePath": "meta.more"}),
            "/cursor",
            json!({"data_path": ".data"}),
        ),
        (
            json!({"paginationType": "next_link", "nextLinkPath": "@odata.nextLink"}),
            "/nextlink",
            json!({"data_path": ".value"}),
        ),
        (json!({"paginationType": "header_link"}), "/link", json!({})),
    ];
    for (config, kind, selector) in cases {
        let items = fetch(&base, config.clone(), kind, selector).await.unwrap();
        assert_eq!(ids(&items), all, "{config}");
    }
    // No pagination: the page is the item list.
    assert_eq!(
        ids(&fetch(
            &base,
            json!({}),
            "/offset",
            json!({"query_params": {"limit": 3}})
        )
        .await
        .unwrap())
        .len(),
        3
    );
}

#[tokio::test]
async fn path_parameters_are_discovered_filtered_and_injected() {
    let (base, _) = server().await;
    let selector = json!({
        "endpoint": "/teams/{team_id}/members",
        "data_path": ".members",
        "path_parameters": {"team_id": {"endpoint": "/teams", "data_path": ".teams", "field": ".id", "filter": ".active"}}
    });
    let items = fetch(&base, json!({}), "team-members", selector)
        .await
        .unwrap();
    assert_eq!(
        items,
        [
            json!({"name": "m-t1", "__team_id": "t1"}),
            json!({"name": "m-t2", "__team_id": "t2"})
        ]
    );
}

#[tokio::test]
async fn a_429_waits_as_told_and_a_500_is_retried() {
    let (base, seen) = server().await;
    let started = Instant::now();
    let items = fetch(&base, json!({}), "/limited", json!({}))
        .await
        .unwrap();
    assert_eq!(ids(&items), [json!("after-429")]);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 was not waited for"
    );
    assert_eq!(
        ids(&fetch(&base, json!({}), "/unwell", json!({})).await.unwrap()),
        [json!("after-500")]
    );
    assert_eq!(
        seen.count("unwell"),
        3,
        "one failure, one success, and this count"
    );
}

#[tokio::test]
async fn a_malformed_page_or_a_401_on_page_3_fails_the_kind_naming_page_and_url() {
    let (base, _) = server().await;
    let paged = json!({"paginationType": "page", "hasMorePath": "has_more"});
    let error = fetch(
        &base,
        paged.clone(),
        "/broken",
        json!({"data_path": ".items"}),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind, "/broken");
    assert!(
        error.message.contains("page 2 of")
            && error.message.contains("/broken")
            && error.message.contains("not JSON"),
        "{error}"
    );
    let error = fetch(&base, paged, "/revoked", json!({"data_path": ".items"}))
        .await
        .unwrap_err();
    assert!(
        error.message.contains("page 3 of") && error.message.contains("401"),
        "{error}"
    );
    // An API that keeps answering with the same cursor is not read for ever.
    let cursor =
        json!({"paginationType": "cursor", "cursorPath": "meta.next", "hasMorePath": "meta.more"});
    let error = fetch(&base, cursor, "/looping", json!({"data_path": ".data"}))
        .await
        .unwrap_err();
    assert!(error.message.contains("already read"), "{error}");
}

#[tokio::test]
async fn a_next_link_to_another_host_is_not_followed_with_the_credentials() {
    let (base, _) = server().await;
    let config = json!({"paginationType": "next_link", "nextLinkPath": "next",
        "authType": "bearer_token", "apiToken": "tok"});
    let error = fetch(&base, config, "/elsewhere", json!({"data_path": ".data"}))
        .await
        .unwrap_err();
    assert!(
        error.message.contains("another host") && error.message.contains("attacker.invalid"),
        "{error}"
    );
}

#[tokio::test]
async fn custom_auth_asks_for_a_token_fills_templates_and_renews_it_on_401() {
    let (base, seen) = server().await;
    let config = json!({
        "authType": "custom",
        "customAuthRequest": {"endpoint": "/oauth/token", "bodyForm": "grant_type=client_credentials"},
        "customAuthRequestTemplate": "{\"headers\": {\"Authorization\": \"Bearer {{.access_token}}\"}, \"queryParams\": {\"tenant\": \"{{.access_token}}\"}}"
    });
    let items = fetch(&base, config, "/secure", json!({})).await.unwrap();
    assert_eq!(ids(&items), [json!("secret-item")]);
    assert_eq!(
        seen.count("token"),
        3,
        "two token requests: the first token was refused"
    );
}

/// A vendor that reports its quota: 100 an hour, 12 left when the test starts, the window
/// ending 3 s from now (then 100 again).
#[derive(Clone)]
struct Quota {
    state: Arc<Mutex<(u64, Instant)>>,
    requests: Arc<Mutex<Vec<&'static str>>>,
}

/// Answers `body`, counting the request against the quota (429 when none is left).
fn answer(quota: &Quota, who: &'static str, body: Value) -> axum::response::Response {
    let mut state = quota.state.lock().unwrap();
    if Instant::now() >= state.1 {
        *state = (100, Instant::now() + Duration::from_secs(3600));
    }
    if state.0 == 0 {
        return (StatusCode::TOO_MANY_REQUESTS, "quota exhausted").into_response();
    }
    state.0 -= 1;
    quota.requests.lock().unwrap().push(who);
    let reset = std::time::SystemTime::now() + (state.1 - Instant::now());
    let epoch = reset
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", "100".parse().unwrap());
    headers.insert(
        "x-ratelimit-remaining",
        state.0.to_string().parse().unwrap(),
    );
    headers.insert("x-ratelimit-reset", format!("{epoch:.3}").parse().unwrap());
    response
}

async fn quota_server() -> (String, Quota) {
    let quota = Quota {
        state: Arc::new(Mutex::new((12, Instant::now() + Duration::from_secs(3)))),
        requests: Arc::default(),
    };
    let app = Router::new()
        .route(
            "/pages",
            get(|State(q): State<Quota>, Query(p): Params| async move {
                let page = number(&p, "page", 1);
                answer(
                    &q,
                    "resync",
                    json!({"items": [{"id": page}], "has_more": page < 20}),
                )
            }),
        )
        .route(
            "/event",
            get(|State(q): State<Quota>| async move { answer(&q, "live", json!({"id": "live"})) }),
        )
        .with_state(quota.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}"), quota)
}

#[tokio::test]
async fn a_resync_stops_at_its_share_of_the_quota_and_a_live_request_still_gets_through() {
    let (base, quota) = quota_server().await;
    let config = json!({"baseUrl": base, "paginationType": "page", "hasMorePath": "has_more"});
    let integration =
        Arc::new(CustomIntegration::from_config(config.as_object().unwrap()).unwrap());
    let resync = {
        let integration = integration.clone();
        tokio::spawn(async move {
            let mapping = PortAppConfig::from_yaml(
                "resources: [{kind: /pages, selector: {query: 'true', data_path: .items}, port: {entity: {mappings: {identifier: .id, blueprint: '\"b\"'}}}}]",
            )
            .unwrap();
            fetch_all(integration.as_ref(), FetchRequest::of(&mapping, 0)).await
        })
    };
    // 12 left, 5 kept for live events (5 % of 100): the resync makes 7 requests and waits.
    let resync_requests = || {
        quota
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|w| **w == "resync")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while resync_requests() < 7 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(resync_requests(), 7, "the resync went past its share");
    assert!(!resync.is_finished());
    let mut live = VendorRequest::get(integration.url("/event"));
    live.priority = Priority::Live;
    let started = Instant::now();
    let (answer, _) = integration.client().send_json(&live).await.unwrap();
    assert_eq!(answer["id"], "live");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the live request waited"
    );
    // After the reset the resync reads the rest.
    let items = resync.await.unwrap().unwrap();
    assert_eq!(items.len(), 20);
    assert_eq!(resync_requests(), 20);
}

/// Two resources whose paths take the same parameter from the same endpoint: within one resync
/// the values are read once; outside a resync (a live event) they are read fresh.
#[tokio::test]
async fn path_parameter_values_are_read_once_per_resync() {
    use port_agent_core::integration::Integration;
    let (base, seen) = server().await;
    let config = json!({"baseUrl": base});
    let integration = CustomIntegration::from_config(config.as_object().unwrap()).unwrap();
    let parameter = json!({"team_id": {"endpoint": "/counted-teams", "field": ".id"}});
    let resource = |kind: &str| json!({"kind": kind, "selector": {"query": "true", "endpoint": "/teams/{team_id}/members", "data_path": ".members", "path_parameters": parameter}, "port": {"entity": {"mappings": {"identifier": ".name", "blueprint": "\"b\""}}}});
    let mapping = PortAppConfig::from_yaml(
        &json!({"resources": [resource("members"), resource("members-again")]}).to_string(),
    )
    .unwrap();
    integration.resync_starting();
    for index in 0..2 {
        let items = fetch_all(&integration, FetchRequest::of(&mapping, index))
            .await
            .unwrap();
        assert_eq!(items.len(), 2);
    }
    integration.resync_ended();
    assert_eq!(
        seen.count("teams"),
        2,
        "one read in the resync, and this count"
    );
    fetch_all(&integration, FetchRequest::of(&mapping, 0))
        .await
        .unwrap();
    assert_eq!(
        seen.count("teams"),
        4,
        "a fetch outside a resync reads again"
    );
}

/// A company CA is trusted from a PEM file; a file that is not one is refused at start,
/// naming the setting.
#[tokio::test]
async fn a_ca_certificate_file_is_read_and_a_bad_one_named() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let good = json!({"baseUrl": "https://api.example.com", "caCertificate": fixtures.join("test-ca.pem")});
    assert!(CustomIntegration::from_config(good.as_object().unwrap()).is_ok());
    let not_pem = json!({"baseUrl": "https://api.example.com", "caCertificate": fixtures.join("../custom_http.rs")});
    let error = CustomIntegration::from_config(not_pem.as_object().unwrap()).unwrap_err();
    assert!(
        error.contains("integration.config.caCertificate")
            && error.contains("holds no certificate"),
        "{error}"
    );
    let missing =
        json!({"baseUrl": "https://api.example.com", "caCertificate": "/nonexistent/ca.pem"});
    let error = CustomIntegration::from_config(missing.as_object().unwrap()).unwrap_err();
    assert!(error.contains("cannot read /nonexistent/ca.pem"), "{error}");
}
