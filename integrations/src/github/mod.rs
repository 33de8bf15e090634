//! `github`: Ocean's GitHub integration (port-labs/ocean, `integrations/github`), read for its
//! kinds, selectors and raw shapes so that its mappings work unchanged: organizations,
//! repositories (with `includedFiles`), pull requests, issues, and the simple listings of a
//! repository (releases, tags, branches, workflows, collaborators), over GitHub's REST API with a
//! personal access token or as a GitHub App, and the webhooks that keep them current ([`webhooks`]).
//!
//! Raw items are GitHub's own objects, enriched as Ocean enriches them: `__organization` on
//! every item below an organization, `__repository` (the repository's name) on pull requests
//! and issues, `__includedFiles` (`{path: text or null}`) on repositories.
//!
//! Where port-agent differs from Ocean, on purpose: an answer of 401, 403 or 404 to a listing
//! fails the kind (Ocean takes it as an empty listing, and its deletions then remove what the
//! listing held); pages are asked with the `ETag` of the last answer, so a resync of an
//! unchanged organization spends almost none of the rate limit; a webhook without a valid
//! signature is refused when no secret is set, unless unsigned webhooks are allowed.

pub mod api;
pub mod auth;
pub mod webhooks;

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt, stream};
use port_agent_core::integration::{
    FetchError, FetchFuture, FetchRequest, Integration, RawBatch, RunCache,
};
use port_agent_core::mapping::config::ResourceConfig;
use port_agent_core::text::without_values;
use port_agent_core::vendor_http::{Priority, ValidatorStore, VendorError};
use port_agent_core::webhook::{WebhookProcessor, WebhookSettings};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use self::api::{GitHubApi, Settings};

/// Repositories whose pull requests, issues or files are read at once (Ocean's
/// `MAX_CONCURRENT_REPOS`); the client bounds requests in flight as well.
const REPOSITORIES_AT_ONCE: usize = 10;

/// A kind listed per repository as it is, from a path under the repository (Ocean's simple
/// exporters): its items get `__repository` and `__organization`, and the repository itself
/// as `__repository_object` where Ocean adds it.
struct RepositoryListing {
    kind: &'static str,
    path: &'static str,
    with_repository_object: bool,
}

impl RepositoryListing {
    fn of(kind: &str) -> Option<&'static Self> {
        LISTINGS.iter().find(|l| l.kind == kind)
    }

    /// Whether the selector keeps `item` (`defaultBranchOnly`).
    fn wanted(&self, item: &Value, repository: &Value, keys: &SelectorKeys) -> bool {
        !(self.kind == "branch" && keys.default_branch_only)
            || item["name"] == repository["default_branch"]
    }

    /// `item` enriched as Ocean's exporter enriches it.
    fn enrich(&self, mut item: Value, repository: &Value, name: &str, organization: &str) -> Value {
        if self.with_repository_object {
            item["__repository_object"] = repository.clone();
        }
        if self.kind == "branch" {
            item["__is_default_branch"] = Value::from(item["name"] == repository["default_branch"]);
        }
        with_repository(item, name, organization)
    }
}

const LISTINGS: [RepositoryListing; 5] = [
    RepositoryListing {
        kind: "release",
        path: "releases",
        with_repository_object: false,
    },
    RepositoryListing {
        kind: "tag",
        path: "tags",
        with_repository_object: true,
    },
    RepositoryListing {
        kind: "branch",
        path: "branches",
        with_repository_object: true,
    },
    RepositoryListing {
        kind: "workflow",
        path: "actions/workflows",
        with_repository_object: false,
    },
    RepositoryListing {
        kind: "collaborator",
        path: "collaborators",
        with_repository_object: false,
    },
];

/// The kinds this integration fetches.
pub const KINDS: [&str; 9] = [
    "organization",
    "repository",
    "pull-request",
    "issue",
    "release",
    "tag",
    "branch",
    "workflow",
    "collaborator",
];

/// The mapping's own top-level keys (Ocean's `GithubPortAppConfig`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MappingKeys {
    /// GitHub's `type` for an organization's repositories: all, public, private, forks,
    /// sources, member.
    #[serde(default = "all")]
    repository_type: String,
    /// Without `githubOrganization`: only these of the token's organizations.
    #[serde(default)]
    organizations: Vec<String>,
}

fn all() -> String {
    "all".to_owned()
}

/// The selector keys each kind reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SelectorKeys {
    /// repository: files read into `__includedFiles`.
    #[serde(default)]
    included_files: Vec<String>,
    /// pull-request: open and/or closed (default open).
    #[serde(default)]
    states: Option<Vec<String>>,
    /// pull-request: closed ones updated in the last this many days (default 60).
    #[serde(default)]
    since: Option<u64>,
    /// pull-request: closed ones per repository, at most (default 100).
    #[serde(default)]
    max_results: Option<usize>,
    /// issue: open, closed or all (default open).
    #[serde(default)]
    state: Option<String>,
    /// issue: GitHub's comma-separated label filter.
    #[serde(default)]
    labels: Option<String>,
    /// branch: only each repository's default branch.
    #[serde(default)]
    default_branch_only: bool,
}

fn selector_keys(kind: &str, extra: &Map<String, Value>) -> Result<SelectorKeys, String> {
    let keys: SelectorKeys = serde_json::from_value(Value::Object(extra.clone())).map_err(|e| {
        format!(
            "kind '{kind}': selector: {}",
            without_values(&e.to_string())
        )
    })?;
    if let Some(states) = &keys.states
        && let Some(bad) = states.iter().find(|s| *s != "open" && *s != "closed")
    {
        return Err(format!(
            "kind '{kind}': selector.states: '{bad}' is neither open nor closed"
        ));
    }
    if let Some(state) = &keys.state
        && !["open", "closed", "all"].contains(&state.as_str())
    {
        return Err(format!(
            "kind '{kind}': selector.state: expected open, closed or all"
        ));
    }
    Ok(keys)
}

impl SelectorKeys {
    fn pull_request_states(&self) -> Vec<String> {
        self.states
            .clone()
            .unwrap_or_else(|| vec!["open".to_owned()])
    }
}

/// The GitHub integration.
#[derive(Debug)]
pub struct GitHubIntegration {
    api: Arc<GitHubApi>,
    organization: Option<String>,
    /// The organizations and each organization's repositories, listed once per resync for
    /// every kind that starts from them.
    organizations: RunCache<Arc<Vec<Value>>>,
    repositories: RunCache<Arc<Vec<Value>>>,
}

impl GitHubIntegration {
    pub fn from_config(config: &Map<String, Value>) -> Result<Self, String> {
        let settings = Settings::from_config(config)?;
        Ok(Self {
            api: Arc::new(GitHubApi::new(&settings)?),
            organization: settings.organization,
            organizations: RunCache::default(),
            repositories: RunCache::default(),
        })
    }

    async fn fetch_kind(
        &self,
        request: FetchRequest<'_>,
        sink: mpsc::Sender<RawBatch>,
    ) -> Result<(), FetchError> {
        let mapping: MappingKeys =
            serde_json::from_value(Value::Object(request.mapping_extra.clone())).map_err(|e| {
                request.fail(format!(
                    "the mapping's GitHub keys: {}",
                    without_values(&e.to_string())
                ))
            })?;
        let keys =
            selector_keys(request.kind, &request.selector.extra).map_err(|e| request.fail(e))?;
        let failed = |e: VendorError| request.fail(e.to_string());
        let send = |items: Vec<Value>| {
            let sink = sink.clone();
            async move { sink.send(raw_batch(items)).await.is_ok() }
        };
        let organizations = self
            .organizations(&mapping, request.validators)
            .await
            .map_err(failed)?;
        if request.kind == "organization" {
            send(organizations.to_vec()).await;
            return Ok(());
        }
        for organization in organizations.iter() {
            let repositories = self
                .repositories(organization, &mapping.repository_type, request.validators)
                .await
                .map_err(failed)?;
            match request.kind {
                "repository" => {
                    // Their included files are read for several repositories at once, in order.
                    let mut enriched = stream::iter(repositories.iter().cloned())
                        .map(|mut repository| async {
                            self.include_files(
                                &mut repository,
                                &keys.included_files,
                                Priority::Resync,
                                request.validators,
                            )
                            .await
                            .map(|()| repository)
                        })
                        .buffered(REPOSITORIES_AT_ONCE);
                    let mut batch = Vec::new();
                    while let Some(repository) = enriched.next().await {
                        batch.push(repository.map_err(failed)?);
                        if batch.len() == 100 && !send(std::mem::take(&mut batch)).await {
                            return Ok(());
                        }
                    }
                    if !batch.is_empty() {
                        send(batch).await;
                    }
                }
                _ if !matches!(request.kind, "pull-request" | "issue") => {
                    let listing = RepositoryListing::of(request.kind)
                        .ok_or_else(|| request.fail("GitHub has no such kind here"))?;
                    let (keys, send) = (&keys, &send);
                    let validators = request.validators;
                    stream::iter(repositories.iter().cloned())
                        .map(move |repository| async move {
                            self.listing(listing, &repository, keys, validators, send)
                                .await
                        })
                        .buffer_unordered(REPOSITORIES_AT_ONCE)
                        .try_for_each(|()| std::future::ready(Ok(())))
                        .await
                        .map_err(failed)?;
                }
                _ => {
                    let (keys, send, kind) = (&keys, &send, request.kind);
                    let validators = request.validators;
                    stream::iter(repositories.iter().cloned())
                        .map(move |repository| async move {
                            if kind == "issue" {
                                self.issues(&repository, keys, validators, send).await
                            } else {
                                self.pull_requests(&repository, keys, validators, send)
                                    .await
                            }
                        })
                        .buffer_unordered(REPOSITORIES_AT_ONCE)
                        .try_for_each(|()| std::future::ready(Ok(())))
                        .await
                        .map_err(failed)?;
                }
            }
        }
        Ok(())
    }

    /// `githubOrganization` (as `GET /users/{org}` answers it, as Ocean reads it), else the
    /// token's organizations, filtered by the mapping's `organizations`.
    async fn organizations(
        &self,
        mapping: &MappingKeys,
        validators: Option<&dyn ValidatorStore>,
    ) -> Result<Arc<Vec<Value>>, VendorError> {
        let key = format!("organizations:{}", mapping.organizations.join(","));
        self.organizations
            .get_or_fetch(&key, || async {
                if let Some(login) = &self.organization {
                    let found = self
                        .api
                        .get(&format!("/users/{login}"), Priority::Resync, validators)
                        .await?;
                    return Ok(Arc::new(found.into_iter().collect()));
                }
                let all = self
                    .api
                    .all_pages("/user/orgs", &[], validators, Priority::Resync)
                    .await?;
                let wanted = all
                    .into_iter()
                    .filter(|org| {
                        mapping.organizations.is_empty()
                            || org["login"]
                                .as_str()
                                .is_some_and(|l| mapping.organizations.iter().any(|o| o == l))
                    })
                    .map(|mut org| {
                        org["type"] = Value::from("Organization");
                        org
                    });
                Ok(Arc::new(wanted.collect()))
            })
            .await
    }

    /// An organization's repositories (a personal account's own, when `githubOrganization`
    /// names a user), each with `__organization`.
    async fn repositories(
        &self,
        owner: &Value,
        repository_type: &str,
        validators: Option<&dyn ValidatorStore>,
    ) -> Result<Arc<Vec<Value>>, VendorError> {
        let organization = owner["login"].as_str().unwrap_or_default();
        let (path, query) = if owner["type"] == "User" {
            ("/user/repos".to_owned(), [("affiliation", "owner")])
        } else {
            (
                format!("/orgs/{organization}/repos"),
                [("type", repository_type)],
            )
        };
        let key = format!("repositories:{organization}:{repository_type}");
        self.repositories
            .get_or_fetch(&key, || async {
                let all = self
                    .api
                    .all_pages(&path, &query, validators, Priority::Resync)
                    .await?;
                Ok(Arc::new(
                    all.into_iter()
                        .map(|r| with_organization(r, organization))
                        .collect(),
                ))
            })
            .await
    }

    /// Adds `__includedFiles`: each named file's text at the default branch, or null.
    async fn include_files(
        &self,
        repository: &mut Value,
        files: &[String],
        priority: Priority,
        validators: Option<&dyn ValidatorStore>,
    ) -> Result<(), VendorError> {
        if files.is_empty() {
            return Ok(());
        }
        let full_name = repository["full_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut included = Map::new();
        for file in files {
            let text = self
                .api
                .file_text(&full_name, file, priority, validators)
                .await?;
            included.insert(file.clone(), text.map_or(Value::Null, Value::from));
        }
        repository["__includedFiles"] = Value::Object(included);
        Ok(())
    }

    /// A repository's pull requests: all open ones, and the closed ones updated within
    /// `since` days, newest first, `maxResults` at most (Ocean's defaults: 60 days, 100).
    async fn pull_requests<F, Fut>(
        &self,
        repository: &Value,
        keys: &SelectorKeys,
        validators: Option<&dyn ValidatorStore>,
        send: &F,
    ) -> Result<(), VendorError>
    where
        F: Fn(Vec<Value>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (full_name, name, organization) = names(repository);
        let path = format!("/repos/{full_name}/pulls");
        let enrich = |pr: Value| with_repository(pr, name, organization);
        let states = keys.pull_request_states();
        if states.iter().any(|s| s == "open") {
            self.api
                .for_each_page(
                    &path,
                    &[("state", "open")],
                    validators,
                    Priority::Resync,
                    |page| send(page.into_iter().map(enrich).collect()),
                )
                .await?;
        }
        if states.iter().any(|s| s == "closed") {
            let cutoff = closed_cutoff(keys.since.unwrap_or(60));
            let mut left = keys.max_results.unwrap_or(100);
            let query = [
                ("state", "closed"),
                ("sort", "updated"),
                ("direction", "desc"),
            ];
            self.api
                .for_each_page(&path, &query, validators, Priority::Resync, |page| {
                    let recent: Vec<Value> = page
                        .into_iter()
                        .take_while(|pr| {
                            pr["updated_at"]
                                .as_str()
                                .is_some_and(|u| u >= cutoff.as_str())
                        })
                        .take(left)
                        .map(enrich)
                        .collect();
                    let more = recent.len() == 100 && left > recent.len();
                    left -= recent.len();
                    let sent = send(recent);
                    async move { sent.await && more }
                })
                .await?;
        }
        Ok(())
    }

    /// One of the [`LISTINGS`] of a repository.
    async fn listing<F, Fut>(
        &self,
        listing: &RepositoryListing,
        repository: &Value,
        keys: &SelectorKeys,
        validators: Option<&dyn ValidatorStore>,
        send: &F,
    ) -> Result<(), VendorError>
    where
        F: Fn(Vec<Value>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (full_name, name, organization) = names(repository);
        let path = format!("/repos/{full_name}/{}", listing.path);
        self.api
            .for_each_page(&path, &[], validators, Priority::Resync, |page| {
                let items = page
                    .into_iter()
                    .filter(|item| listing.wanted(item, repository, keys))
                    .map(|item| listing.enrich(item, repository, name, organization))
                    .collect();
                send(items)
            })
            .await
    }

    /// A repository's issues (GitHub lists pull requests among them: those are left out).
    async fn issues<F, Fut>(
        &self,
        repository: &Value,
        keys: &SelectorKeys,
        validators: Option<&dyn ValidatorStore>,
        send: &F,
    ) -> Result<(), VendorError>
    where
        F: Fn(Vec<Value>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let (full_name, name, organization) = names(repository);
        let state = keys.state.as_deref().unwrap_or("open");
        let mut query = vec![("state", state)];
        if let Some(labels) = &keys.labels {
            query.push(("labels", labels));
        }
        self.api
            .for_each_page(
                &format!("/repos/{full_name}/issues"),
                &query,
                validators,
                Priority::Resync,
                |page| {
                    send(
                        page.into_iter()
                            .filter(|issue| issue.get("pull_request").is_none())
                            .map(|issue| with_repository(issue, name, organization))
                            .collect(),
                    )
                },
            )
            .await
    }
}

/// A repository's `full_name`, `name` and organization (`__organization`).
fn names(repository: &Value) -> (&str, &str, &str) {
    let text = |key: &str| repository[key].as_str().unwrap_or_default();
    (text("full_name"), text("name"), text("__organization"))
}

fn with_organization(mut item: Value, organization: &str) -> Value {
    item["__organization"] = Value::from(organization);
    item
}

fn with_repository(mut item: Value, repository: &str, organization: &str) -> Value {
    item["__repository"] = Value::from(repository);
    with_organization(item, organization)
}

/// The oldest `updated_at` (GitHub's ISO 8601, UTC) a closed pull request may have.
fn closed_cutoff(days: u64) -> String {
    let now = jiff::Timestamp::now();
    let cutoff = now - jiff::SignedDuration::from_hours(24 * days as i64);
    cutoff.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn raw_batch(items: Vec<Value>) -> RawBatch {
    items
        .into_iter()
        .map(|item| RawValue::from_string(item.to_string()).expect("serde_json writes JSON"))
        .collect()
}

impl Integration for GitHubIntegration {
    fn kinds(&self) -> Vec<String> {
        KINDS.iter().map(|k| (*k).to_owned()).collect()
    }

    fn resync_starting(&self) {
        self.organizations.open();
        self.repositories.open();
    }

    fn resync_ended(&self) {
        self.organizations.close();
        self.repositories.close();
    }

    fn check_resource(&self, resource: &ResourceConfig) -> Vec<String> {
        if !KINDS.contains(&resource.kind.as_str()) {
            return vec![format!(
                "kind '{}': GitHub has no such kind here (it has: {})",
                resource.kind,
                KINDS.join(", ")
            )];
        }
        selector_keys(&resource.kind, &resource.selector.extra)
            .err()
            .into_iter()
            .collect()
    }

    fn webhook_processors(&self, settings: &WebhookSettings) -> Vec<Box<dyn WebhookProcessor>> {
        vec![Box::new(webhooks::GitHubWebhooks {
            integration: Arc::new(Self {
                api: self.api.clone(),
                organization: self.organization.clone(),
                organizations: RunCache::default(),
                repositories: RunCache::default(),
            }),
            secret: settings.secret.clone(),
            allow_unsigned: settings.allow_unsigned,
        })]
    }

    fn fetch<'a>(
        &'a self,
        request: FetchRequest<'a>,
        sink: mpsc::Sender<RawBatch>,
    ) -> FetchFuture<'a> {
        Box::pin(self.fetch_kind(request, sink))
    }
}
