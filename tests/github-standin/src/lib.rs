//! A stand-in for GitHub's REST API, for the github integration's tests: the parts it reads,
//! in GitHub's documented wire format — a bearer token with `X-GitHub-Api-Version`,
//! `per_page` pages linked by `Link: rel="next"` (two items a page whatever `per_page` asks,
//! so that paging is exercised), `ETag` and `304 Not Modified` on `If-None-Match`,
//! `x-ratelimit-*` headers, and file contents in the raw media type. Its data can be changed
//! while it runs, and it counts what it is asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// A repository's listings, by repository name and path under it.
pub type Listings = HashMap<(String, String), Vec<Value>>;

/// The token it takes.
pub const TOKEN: &str = "ghp_test_token";

/// What the stand-in holds and has seen.
#[derive(Debug, Clone, Default)]
pub struct GitHub {
    pub repositories: Arc<Mutex<Vec<Value>>>,
    pub pulls: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    pub issues: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    /// Listing requests still to be refused as GitHub refuses one over its rate limit: 403,
    /// `x-ratelimit-remaining: 0`, the reset a second away.
    pub rate_limited: Arc<Mutex<u32>>,
    /// When the last of those said the limit resets (seconds since the epoch): a request
    /// before it is counted (route + " before the reset").
    rate_limit_reset: Arc<Mutex<Option<i64>>>,
    /// How long a pull-request listing takes to answer, and how many were asked at once, at
    /// most.
    pub pulls_delay: Arc<Mutex<std::time::Duration>>,
    pulls_in_flight: Arc<AtomicUsize>,
    pub most_pulls_at_once: Arc<AtomicUsize>,
    /// A repository's other listings, by repository name and path under it (`releases`,
    /// `tags`, `branches`, `actions/workflows` (answered inside `{total_count, workflows}`),
    /// `collaborators`).
    pub listings: Arc<Mutex<Listings>>,
    /// Installation tokens issued to the App and not revoked.
    pub installation_tokens: Arc<Mutex<Vec<String>>>,
    /// Requests by route, and how many were answered 304 (route + " 304").
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl GitHub {
    fn count(&self, route: &str) {
        *self
            .seen
            .lock()
            .unwrap()
            .entry(route.to_owned())
            .or_default() += 1;
    }

    /// Whether the request carries the token or a live installation token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let known = bearer.is_some_and(|b| {
            b == TOKEN
                || self
                    .installation_tokens
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|t| t == b)
        });
        known
            && headers
                .get("x-github-api-version")
                .is_some_and(|v| v == "2022-11-28")
            && headers.get(header::USER_AGENT).is_some()
    }

    /// GitHub stops taking the installation tokens it issued (they expired early, or the
    /// App's permissions changed).
    pub fn revoke_installation_tokens(&self) {
        self.installation_tokens.lock().unwrap().clear();
    }

    /// Requests answered so far, and how many of those were `304 Not Modified` (which GitHub
    /// does not count against the rate limit).
    pub fn answered(&self) -> (u32, u32) {
        let seen = self.seen.lock().unwrap();
        let requests = seen
            .iter()
            .filter(|(route, _)| !route.contains(' '))
            .map(|(_, n)| n)
            .sum();
        let not_modified = seen
            .iter()
            .filter(|(route, _)| route.ends_with(" 304"))
            .map(|(_, n)| n)
            .sum();
        (requests, not_modified)
    }

    pub fn seen(&self, route: &str) -> u32 {
        self.seen.lock().unwrap().get(route).copied().unwrap_or(0)
    }
}

pub fn days_ago(days: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub fn repository(name: &str) -> Value {
    json!({"id": name.len(), "name": name, "full_name": format!("acme/{name}"), "private": name == "api",
           "default_branch": "main", "archived": false, "html_url": format!("https://github.com/acme/{name}"),
           "description": null, "language": "Rust", "owner": {"login": "acme", "type": "Organization"}})
}

pub fn pull(repo: &str, number: u64, state: &str, updated_days_ago: i64) -> Value {
    json!({"id": 1000 + number, "number": number, "state": state, "title": format!("PR {number}"),
           "updated_at": days_ago(updated_days_ago), "created_at": days_ago(100),
           "head": {"repo": {"name": repo}}, "user": {"login": "octocat"}, "assignees": [],
           "requested_reviewers": [], "html_url": format!("https://github.com/acme/{repo}/pull/{number}")})
}

pub fn issue(number: u64, state: &str, is_pull: bool) -> Value {
    let mut issue = json!({"id": 5000 + number, "number": number, "state": state, "title": format!("issue {number}")});
    if is_pull {
        issue["pull_request"] = json!({"url": "…"});
    }
    issue
}

impl GitHub {
    /// Organization acme: repositories api (with a README), web and docs; pull requests api#1
    /// (open), api#2 (closed yesterday), api#3 (closed 90 days ago), web#4 (open); issues
    /// api#10 (open), api#11 (closed) and api#1 (the pull request, as GitHub lists it); api's
    /// release v1.0.0, tag v1.0.0 and branches main, feature-a, feature-b; web's workflows ci,
    /// deploy, nightly; docs' collaborator octocat.
    pub fn with_data() -> Self {
        let github = Self::default();
        *github.repositories.lock().unwrap() = ["api", "web", "docs"]
            .iter()
            .map(|n| repository(n))
            .collect();
        github.pulls.lock().unwrap().extend([
            (
                "api".to_owned(),
                vec![
                    pull("api", 1, "open", 0),
                    pull("api", 2, "closed", 1),
                    pull("api", 3, "closed", 90),
                ],
            ),
            ("web".to_owned(), vec![pull("web", 4, "open", 2)]),
        ]);
        github.listings.lock().unwrap().extend([
            (
                ("api".to_owned(), "releases".to_owned()),
                vec![json!({"id": 301, "tag_name": "v1.0.0", "name": "One"})],
            ),
            (
                ("api".to_owned(), "tags".to_owned()),
                vec![json!({"name": "v1.0.0", "commit": {"sha": "abc"}})],
            ),
            (
                ("api".to_owned(), "branches".to_owned()),
                ["main", "feature-a", "feature-b"]
                    .iter()
                    .map(|b| json!({"name": b, "protected": *b == "main"}))
                    .collect(),
            ),
            (
                ("web".to_owned(), "actions/workflows".to_owned()),
                ["ci", "deploy", "nightly"]
                    .iter()
                    .enumerate()
                    .map(|(i, w)| json!({"id": i, "name": w, "path": format!(".github/workflows/{w}.yml")}))
                    .collect(),
            ),
            (
                ("docs".to_owned(), "collaborators".to_owned()),
                vec![json!({"login": "octocat", "role_name": "admin"})],
            ),
        ]);
        github.issues.lock().unwrap().insert(
            "api".to_owned(),
            vec![
                issue(10, "open", false),
                issue(1, "open", true),
                issue(11, "closed", false),
            ],
        );
        github
    }
}

/// The headers GitHub answers every request with.
fn rate_limit_headers() -> [(&'static str, String); 3] {
    let reset = jiff::Timestamp::now().as_second() + 3600;
    [
        ("x-ratelimit-limit", "5000".to_owned()),
        ("x-ratelimit-remaining", "4990".to_owned()),
        ("x-ratelimit-reset", reset.to_string()),
    ]
}

/// One page of `items` as GitHub answers it: two items a page whatever `per_page` asks (so
/// that paging is exercised), a `Link` to the next, an `ETag`, and `304` when it matches.
fn page(
    github: &GitHub,
    route: &str,
    uri: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    items: &[Value],
) -> Response {
    page_in(github, route, uri, headers, params, items, None)
}

/// [`page`], its items inside `{total_count, <wrapper>: [...]}` when a wrapper is named.
fn page_in(
    github: &GitHub,
    route: &str,
    uri: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    items: &[Value],
    wrapper: Option<&str>,
) -> Response {
    github.count(route);
    if !github.authorized(headers) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response();
    }
    assert_eq!(
        params.get("per_page").map(String::as_str),
        Some("100"),
        "{uri}"
    );
    let now = jiff::Timestamp::now().as_second();
    if let Some(reset) = *github.rate_limit_reset.lock().unwrap()
        && now < reset
    {
        github.count(&format!("{route} before the reset"));
    }
    if let Some(left) = Some(&mut *github.rate_limited.lock().unwrap()).filter(|n| **n > 0) {
        *left -= 1;
        github.count(&format!("{route} 403"));
        *github.rate_limit_reset.lock().unwrap() = Some(now + 1);
        let reset = (now + 1).to_string();
        return (
            StatusCode::FORBIDDEN,
            [
                ("x-ratelimit-limit", "5000".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", reset),
            ],
            axum::Json(json!({"message": "API rate limit exceeded"})),
        )
            .into_response();
    }
    let number: usize = params.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
    let chunk: Vec<Value> = items
        .iter()
        .skip((number - 1) * 2)
        .take(2)
        .cloned()
        .collect();
    let body = match wrapper {
        Some(key) => json!({"total_count": items.len(), key: chunk}).to_string(),
        None => Value::Array(chunk).to_string(),
    };
    let etag = format!("\"{}\"", blake3_like(&body));
    let mut answer = if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| *v == *etag)
    {
        github.count(&format!("{route} 304"));
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    let answer_headers = answer.headers_mut();
    answer_headers.insert(header::ETAG, etag.parse().unwrap());
    for (name, value) in rate_limit_headers() {
        answer_headers.insert(name, value.parse().unwrap());
    }
    if number * 2 < items.len() {
        let base = uri.split('?').next().unwrap();
        let mut query: Vec<String> = params
            .iter()
            .filter(|(k, _)| *k != "page")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        query.sort();
        let next = format!(
            "<http://{}{base}?{}&page={}>; rel=\"next\"",
            headers[header::HOST].to_str().unwrap(),
            query.join("&"),
            number + 1
        );
        answer_headers.insert(header::LINK, next.parse().unwrap());
    }
    answer
}

/// One object as GitHub answers it: with its `ETag`, or `304` when the client has it.
fn conditional(github: &GitHub, route: &str, headers: &HeaderMap, object: Value) -> Response {
    let body = object.to_string();
    let etag = format!("\"{}\"", blake3_like(&body));
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| *v == *etag)
    {
        github.count(&format!("{route} 304"));
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::ETAG, etag),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ],
        body,
    )
        .into_response()
}

/// A stable tag for a body (what GitHub's ETag is to a client: opaque).
fn blake3_like(body: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("{:x}", hasher.finish())
}

type Params = Query<HashMap<String, String>>;

/// A repository's listing at `path`, paged; workflows inside GitHub's wrapper object.
fn listing(
    github: &GitHub,
    repo: &str,
    path: &str,
    uri: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Response {
    let items = github
        .listings
        .lock()
        .unwrap()
        .get(&(repo.to_owned(), path.to_owned()))
        .cloned()
        .unwrap_or_default();
    let wrapper = (path == "actions/workflows").then_some("workflows");
    page_in(github, path, uri, headers, params, &items, wrapper)
}

/// The test GitHub App: its id and private key (made for these tests only; PKCS#1 PEM, as
/// GitHub hands keys out).
pub const APP_ID: &str = "12345";
pub const APP_PRIVATE_KEY: &str = include_str!("test-app-key.pem");

/// Whether the request is signed as the test App: an RS256 JWT with its key, issued to it,
/// current, and at most ten minutes long (GitHub's rules).
fn signed_as_the_app(headers: &HeaderMap) -> bool {
    use base64::Engine as _;
    let decode = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .ok()
    };
    let Some(jwt) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header_part, claims_part, signature_part] = parts[..] else {
        return false;
    };
    let body: String = APP_PRIVATE_KEY
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let key = ring::signature::RsaKeyPair::from_der(&der).unwrap();
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        key.public().as_ref(),
    );
    let (Some(header), Some(claims), Some(signature)) = (
        decode(header_part).and_then(|h| serde_json::from_slice::<Value>(&h).ok()),
        decode(claims_part).and_then(|c| serde_json::from_slice::<Value>(&c).ok()),
        decode(signature_part),
    ) else {
        return false;
    };
    let now = jiff::Timestamp::now().as_second();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap_or(i64::MAX),
        claims["exp"].as_i64().unwrap_or(0),
    );
    header["alg"] == "RS256"
        && claims["iss"] == APP_ID
        && iat <= now
        && exp > now
        && exp - iat <= 600
        && public
            .verify(
                format!("{header_part}.{claims_part}").as_bytes(),
                &signature,
            )
            .is_ok()
}

/// Serves `github` on a free local port; its base URL (`githubHost`).
pub async fn serve(github: GitHub) -> String {
    let app = Router::new()
        .route("/app/installations", get(|State(g): State<GitHub>, headers: HeaderMap, Query(p): Params| async move {
            g.count("installations");
            if !signed_as_the_app(&headers) { return StatusCode::UNAUTHORIZED.into_response(); }
            let installations = if p.get("page").map(String::as_str).unwrap_or("1") == "1" {
                json!([{"id": 41, "account": {"login": "someone-else"}, "suspended_at": null},
                       {"id": 42, "account": {"login": "acme", "type": "Organization"}, "suspended_at": null}])
            } else {
                json!([])
            };
            axum::Json(installations).into_response()
        }))
        .route("/app/installations/{id}/access_tokens", axum::routing::post(|State(g): State<GitHub>, Path(id): Path<u64>, headers: HeaderMap| async move {
            g.count("access_tokens");
            if !signed_as_the_app(&headers) || id != 42 { return StatusCode::UNAUTHORIZED.into_response(); }
            let token = format!("ghs_installation_{}", g.seen("access_tokens"));
            g.installation_tokens.lock().unwrap().push(token.clone());
            let expires_at = (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1)).strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
            (StatusCode::CREATED, axum::Json(json!({"token": token, "expires_at": expires_at}))).into_response()
        }))
        .route("/users/{login}", get(|State(g): State<GitHub>, Path(login): Path<String>, headers: HeaderMap| async move {
            g.count("user");
            if !g.authorized(&headers) { return StatusCode::UNAUTHORIZED.into_response(); }
            conditional(&g, "user", &headers, json!({"login": login, "id": 7, "node_id": "O_7", "url": format!("https://api.github.com/users/{login}"),
                "repos_url": "r", "avatar_url": "a", "type": "Organization"}))
        }))
        .route("/user/orgs", get(|State(g): State<GitHub>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            let orgs = [json!({"login": "acme", "id": 7}), json!({"login": "other", "id": 8})];
            page(&g, "orgs", &uri.to_string(), &headers, &p, &orgs)
        }))
        .route("/orgs/{org}/repos", get(|State(g): State<GitHub>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            assert_eq!(p.get("type").map(String::as_str), Some("all"));
            let repositories = g.repositories.lock().unwrap().clone();
            page(&g, "repos", &uri.to_string(), &headers, &p, &repositories)
        }))
        .route("/repos/acme/{repo}", get(|State(g): State<GitHub>, Path(repo): Path<String>, headers: HeaderMap| async move {
            g.count("repo");
            if !g.authorized(&headers) { return StatusCode::UNAUTHORIZED.into_response(); }
            match g.repositories.lock().unwrap().iter().find(|r| r["name"] == repo.as_str()) {
                Some(found) => axum::Json(found.clone()).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }))
        .route("/repos/acme/{repo}/contents/{*path}", get(|State(g): State<GitHub>, Path((repo, path)): Path<(String, String)>, headers: HeaderMap| async move {
            g.count("contents");
            assert_eq!(headers[header::ACCEPT], "application/vnd.github.raw");
            match (repo.as_str(), path.as_str()) {
                ("api", "README.md") => {
                    let etag = "\"readme-1\"";
                    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == etag) {
                        g.count("contents 304");
                        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
                    }
                    ([(header::ETAG, etag)], "# api\n").into_response()
                }
                _ => StatusCode::NOT_FOUND.into_response(),
            }
        }))
        .route("/repos/acme/{repo}/pulls", get(|State(g): State<GitHub>, Path(repo): Path<String>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            // A slow listing, to see how many are asked at once.
            let delay = *g.pulls_delay.lock().unwrap();
            let now = g.pulls_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            g.most_pulls_at_once.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            g.pulls_in_flight.fetch_sub(1, Ordering::SeqCst);
            let state = p.get("state").cloned().unwrap_or_default();
            let mut pulls: Vec<Value> = g.pulls.lock().unwrap().get(&repo).cloned().unwrap_or_default()
                .into_iter().filter(|pr| pr["state"] == state.as_str()).collect();
            if state == "closed" {
                assert_eq!((p.get("sort").map(String::as_str), p.get("direction").map(String::as_str)), (Some("updated"), Some("desc")));
                pulls.sort_by(|a, b| b["updated_at"].as_str().cmp(&a["updated_at"].as_str()));
            }
            page(&g, "pulls", &uri.to_string(), &headers, &p, &pulls)
        }))
        .route("/repos/acme/{repo}/pulls/{number}", get(|State(g): State<GitHub>, Path((repo, number)): Path<(String, u64)>| async move {
            g.count("pull");
            match g.pulls.lock().unwrap().get(&repo).and_then(|p| p.iter().find(|pr| pr["number"] == number).cloned()) {
                Some(found) => axum::Json(found).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }))
        .route("/repos/acme/{repo}/issues", get(|State(g): State<GitHub>, Path(repo): Path<String>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            let state = p.get("state").cloned().unwrap_or_default();
            let issues: Vec<Value> = g.issues.lock().unwrap().get(&repo).cloned().unwrap_or_default()
                .into_iter().filter(|i| state == "all" || i["state"] == state.as_str()).collect();
            page(&g, "issues", &uri.to_string(), &headers, &p, &issues)
        }))
        .route("/repos/acme/{repo}/releases", get(|State(g): State<GitHub>, Path(repo): Path<String>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            listing(&g, &repo, "releases", &uri.to_string(), &headers, &p)
        }))
        .route("/repos/acme/{repo}/tags", get(|State(g): State<GitHub>, Path(repo): Path<String>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            listing(&g, &repo, "tags", &uri.to_string(), &headers, &p)
        }))
        .route("/repos/acme/{repo}/branches", get(|State(g): State<GitHub>, Path(repo): Path<String>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            listing(&g, &repo, "branches", &uri.to_string(), &headers, &p)
        }))
        .route("/repos/acme/{repo}/actions/workflows", get(|State(g): State<GitHub>, Path(repo): Path<String>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            listing(&g, &repo, "actions/workflows", &uri.to_string(), &headers, &p)
        }))
        .route("/repos/acme/{repo}/collaborators", get(|State(g): State<GitHub>, Path(repo): Path<String>, headers: HeaderMap, uri: axum::http::Uri, Query(p): Params| async move {
            listing(&g, &repo, "collaborators", &uri.to_string(), &headers, &p)
        }))
        .route("/repos/acme/{repo}/releases/{id}", get(|State(g): State<GitHub>, Path((repo, id)): Path<(String, u64)>| async move {
            g.count("release");
            let listed = g.listings.lock().unwrap().get(&(repo, "releases".to_owned())).cloned().unwrap_or_default();
            match listed.into_iter().find(|r| r["id"] == id) {
                Some(found) => axum::Json(found).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }))
        .route("/repos/acme/{repo}/branches/{branch}", get(|State(g): State<GitHub>, Path((repo, branch)): Path<(String, String)>| async move {
            g.count("branch");
            let listed = g.listings.lock().unwrap().get(&(repo, "branches".to_owned())).cloned().unwrap_or_default();
            match listed.into_iter().find(|b| b["name"] == branch.as_str()) {
                Some(mut found) => {
                    found["_links"] = json!({"html": "…"});
                    axum::Json(found).into_response()
                }
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }))
        .route("/repos/acme/{repo}/git/ref/tags/{tag}", get(|State(g): State<GitHub>, Path((repo, tag)): Path<(String, String)>| async move {
            g.count("tag ref");
            let listed = g.listings.lock().unwrap().get(&(repo, "tags".to_owned())).cloned().unwrap_or_default();
            match listed.into_iter().find(|t| t["name"] == tag.as_str()) {
                Some(found) => axum::Json(json!({"ref": format!("refs/tags/{tag}"),
                    "object": {"sha": found["commit"]["sha"], "type": "commit", "url": "…"}})).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }))
        .with_state(github);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}
