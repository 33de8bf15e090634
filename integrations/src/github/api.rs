//! GitHub's REST API as the integration calls it: GitHub's media type
//! and API version, pages of 100 followed by their `Link: rel="next"`, answers kept with their
//! `ETag` so an unchanged page is a `304` (which GitHub does not count against the rate limit),
//! and the rate limit GitHub tells in `x-ratelimit-*` shared between resyncs and webhooks.
//! Credentials: a personal access token, or a GitHub App ([`super::auth`]).

use port_agent_core::Secret;
use port_agent_core::vendor_http::{
    Priority, ValidatorStore, VendorClient, VendorClientConfig, VendorError, VendorRequest,
    link_with_rel, origin,
};
use reqwest::StatusCode;
use serde_json::{Map, Value};

use super::auth::{AppKey, Auth, is_refusal};

/// GitHub's answers to a listing, a page at a time.
pub const PAGE_SIZE: &str = "100";

/// `integration.config`, as the spec completed it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `githubHost`, without a trailing `/`.
    pub host: String,
    /// `githubToken`, else `githubAppId` with `githubAppPrivateKey`.
    pub credentials: Credentials,
    /// `githubOrganization`.
    pub organization: Option<String>,
    /// `resyncRatelimitReservationThreshold`, as a share.
    pub resync_share: f64,
}

impl Settings {
    pub fn from_config(config: &Map<String, Value>) -> Result<Self, String> {
        let text = |key: &str| {
            config
                .get(key)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
        };
        let organization = text("githubOrganization").map(str::to_owned);
        let credentials = match (
            text("githubToken"),
            text("githubAppId"),
            text("githubAppPrivateKey"),
        ) {
            (Some(token), _, _) => Credentials::Token(Secret::new(token.to_owned())),
            (None, Some(app_id), Some(key)) => {
                if organization.is_none() {
                    return Err("integration.config.githubOrganization: required with a GitHub App (the organization whose installation is used)".to_owned());
                }
                Credentials::App {
                    app_id: app_id.to_owned(),
                    private_key: Secret::new(key.to_owned()),
                }
            }
            _ => {
                return Err(
                    "integration.config: give githubToken, or githubAppId with githubAppPrivateKey"
                        .to_owned(),
                );
            }
        };
        let percent = config
            .get("resyncRatelimitReservationThreshold")
            .and_then(Value::as_f64)
            .unwrap_or(95.0);
        if !(1.0..=100.0).contains(&percent) {
            return Err(
                "integration.config.resyncRatelimitReservationThreshold: a percentage from 1 to 100"
                    .to_owned(),
            );
        }
        Ok(Self {
            host: text("githubHost")
                .unwrap_or("https://api.github.com")
                .trim_end_matches('/')
                .to_owned(),
            credentials,
            organization,
            resync_share: percent / 100.0,
        })
    }
}

/// Who the integration is to GitHub.
#[derive(Debug, Clone)]
pub enum Credentials {
    Token(Secret),
    App { app_id: String, private_key: Secret },
}

/// The API client the integration and its webhook processors share (one rate-limit scope, one
/// installation token).
#[derive(Debug)]
pub struct GitHubApi {
    client: VendorClient,
    host: String,
    auth: Auth,
}

impl GitHubApi {
    pub fn new(settings: &Settings) -> Result<Self, String> {
        let header = |name: &str, value: String| (name.to_owned(), Secret::new(value));
        let client = VendorClient::new(VendorClientConfig {
            headers: vec![
                header("Accept", "application/vnd.github+json".to_owned()),
                header("X-GitHub-Api-Version", "2022-11-28".to_owned()),
            ],
            resync_share: settings.resync_share,
            ..VendorClientConfig::default()
        })
        .map_err(|e| e.to_string())?;
        let auth = match &settings.credentials {
            Credentials::Token(token) => Auth::Token(token.clone()),
            Credentials::App {
                app_id,
                private_key,
            } => Auth::App {
                key: Box::new(AppKey::new(app_id, private_key)?),
                organization: settings.organization.clone().unwrap_or_default(),
                token: tokio::sync::Mutex::new(None),
            },
        };
        Ok(Self {
            client,
            host: settings.host.clone(),
            auth,
        })
    }

    /// Sends `request` with the current credentials; an installation token GitHub refuses
    /// is renewed and the request sent once more.
    async fn authorized<T, Fut>(
        &self,
        request: VendorRequest,
        send: impl Fn(VendorRequest) -> Fut,
    ) -> Result<T, VendorError>
    where
        Fut: std::future::Future<Output = Result<T, VendorError>>,
    {
        let with_header = |mut request: VendorRequest, header: String| {
            request.headers.push(("Authorization".to_owned(), header));
            request
        };
        let header = self.auth.header(&self.client, &self.host).await?;
        match send(with_header(request.clone(), header)).await {
            Err(e) if is_refusal(&e) && self.auth.refused().await => {
                let header = self.auth.header(&self.client, &self.host).await?;
                send(with_header(request, header)).await
            }
            other => other,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.host)
    }

    /// `GET path`: the answer, or `None` when GitHub says 404 (gone, or not visible to the
    /// token).
    /// Asked conditionally when `validators` keeps the answer.
    pub async fn get(
        &self,
        path: &str,
        priority: Priority,
        validators: Option<&dyn ValidatorStore>,
    ) -> Result<Option<Value>, VendorError> {
        let request = VendorRequest {
            priority,
            ..VendorRequest::get(self.url(path))
        };
        let sent = self
            .authorized(request, |r| async move {
                self.client.send_json_validated(&r, validators).await
            })
            .await;
        match sent {
            Ok((value, _)) => Ok(Some(value)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A file's text at the repository's default branch (`None`: no such file), asked
    /// conditionally when `validators` keeps it.
    pub async fn file_text(
        &self,
        full_name: &str,
        path: &str,
        priority: Priority,
        validators: Option<&dyn ValidatorStore>,
    ) -> Result<Option<String>, VendorError> {
        let path = path.trim_start_matches('/').replace(' ', "%20");
        let mut request = VendorRequest {
            priority,
            ..VendorRequest::get(self.url(&format!("/repos/{full_name}/contents/{path}")))
        };
        request
            .headers
            .push(("Accept".to_owned(), "application/vnd.github.raw".to_owned()));
        let sent = self
            .authorized(request, |r| async move {
                self.client.send_validated(&r, validators).await
            })
            .await;
        match sent {
            Ok((body, _)) => Ok(Some(String::from_utf8_lossy(&body).into_owned())),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every item of the listing at `path` (a listing that others start from, kept whole).
    pub async fn all_pages(
        &self,
        path: &str,
        query: &[(&str, &str)],
        validators: Option<&dyn ValidatorStore>,
        priority: Priority,
    ) -> Result<Vec<Value>, VendorError> {
        let mut all = Vec::new();
        self.for_each_page(path, query, validators, priority, |page| {
            all.extend(page);
            std::future::ready(true)
        })
        .await?;
        Ok(all)
    }

    /// Every page of the listing at `path`, handed to `each` in order until it returns
    /// `false` or the pages end. Pages are asked conditionally when `validators` keeps them.
    /// A page is a list, or an object whose one list is the items (`/actions/workflows`
    /// answers `{total_count, workflows: [...]}`).
    pub async fn for_each_page<F, Fut>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        validators: Option<&dyn ValidatorStore>,
        priority: Priority,
        mut each: F,
    ) -> Result<(), VendorError>
    where
        F: FnMut(Vec<Value>) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut request = VendorRequest {
            priority,
            query: query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .chain([("per_page".to_owned(), PAGE_SIZE.to_owned())])
                .collect(),
            ..VendorRequest::get(self.url(path))
        };
        loop {
            let (page, headers) = self
                .authorized(request.clone(), |r| async move {
                    self.client.send_json_validated(&r, validators).await
                })
                .await?;
            let Some(items) = page_items(page) else {
                return Err(VendorError::Setup(format!(
                    "GET {path}: GitHub answered something other than a list"
                )));
            };
            if items.is_empty() || !each(items).await {
                return Ok(());
            }
            let next = headers
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(|link| link_with_rel(link, "next"));
            match next {
                // The token goes with every request: only to githubHost.
                Some(next) if origin(&next) != origin(&self.host) => {
                    return Err(VendorError::Setup(format!(
                        "GET {path}: GitHub's next page is on another host ({}); stopped, since the token is sent only to githubHost",
                        origin(&next)
                    )));
                }
                Some(next) if next != request.url => {
                    request.url = next;
                    // The next link carries the whole query.
                    request.query.clear();
                }
                Some(_) => {
                    return Err(VendorError::Setup(format!(
                        "GET {path}: GitHub's next page is the page itself; stopped"
                    )));
                }
                None => return Ok(()),
            }
        }
    }
}

/// The items of a listing's page: the page itself, or the one list of an object page.
fn page_items(page: Value) -> Option<Vec<Value>> {
    match page {
        Value::Array(items) => Some(items),
        Value::Object(fields) => {
            let mut lists = fields.into_iter().filter_map(|(_, v)| match v {
                Value::Array(items) => Some(items),
                _ => None,
            });
            let items = lists.next()?;
            lists.next().is_none().then_some(items)
        }
        _ => None,
    }
}
