//! The one HTTP client integrations call vendors' APIs with: a timeout, retries decided by
//! [`crate::retry`] (408, 429 and 5xx, `Retry-After` then `x-ratelimit-reset`, jittered backoff,
//! Ocean's 10 retries), bounded requests in flight, and errors that name the request without
//! its credentials.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use port_agent_state::{StateStore, Validated};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::retry::{
    Idempotency, RetryPolicy, is_rate_limit_refusal, is_retryable_status, is_retryable_transport,
};
use crate::secret::Secret;
use crate::text::{printable, redact_url};

/// Who a request is for: a resync leaves part of the vendor's quota to live events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Priority {
    #[default]
    Resync,
    Live,
}

/// A vendor's request quota as its answers tell it (`x-ratelimit-limit`, `-remaining`, `-reset`).
#[derive(Debug, Clone, Copy)]
struct Quota {
    limit: u64,
    remaining: u64,
    reset_at: Instant,
}

/// The quota of one credential, learned from answers; requests wait before exhausting it.
#[derive(Debug, Default)]
struct RateScope {
    quota: std::sync::Mutex<Option<Quota>>,
}

impl RateScope {
    /// Waits until a request of `priority` may go, and counts it. A resync keeps
    /// `1 - resync_share` of the quota for live events; a live request uses it to the last.
    async fn admit(&self, priority: Priority, resync_share: f64) {
        loop {
            let wait = {
                let mut quota = self.quota.lock().unwrap_or_else(|e| e.into_inner());
                let Some(known) = quota.as_mut() else { return };
                let now = Instant::now();
                if now >= known.reset_at {
                    *quota = None;
                    return;
                }
                let floor = match priority {
                    // What the resync may use, rounded down; the rest is kept.
                    Priority::Resync => known
                        .limit
                        .saturating_sub((known.limit as f64 * resync_share).floor() as u64),
                    Priority::Live => 0,
                };
                if known.remaining > floor {
                    known.remaining -= 1;
                    return;
                }
                known.reset_at - now
            };
            tracing::info!(
                ?priority,
                wait_ms = wait.as_millis() as u64,
                "the vendor's rate limit is near: waiting for its reset"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// What an answer says of the quota.
    fn learn(&self, headers: &HeaderMap) {
        let number =
            |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.trim().parse().ok() };
        let (Some(limit), Some(remaining)) =
            (number("x-ratelimit-limit"), number("x-ratelimit-remaining"))
        else {
            return;
        };
        let Some(reset_in) = headers
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::retry::parse_wait(v.trim(), std::time::SystemTime::now()))
        else {
            return;
        };
        *self.quota.lock().unwrap_or_else(|e| e.into_inner()) = Some(Quota {
            limit,
            remaining,
            reset_at: Instant::now() + reset_in,
        });
    }
}

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct VendorClientConfig {
    /// For one attempt, answer included.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// Requests in flight at once, at most.
    pub max_in_flight: usize,
    /// Accept any TLS certificate (Ocean Custom's `verifySsl: false`).
    pub accept_invalid_certs: bool,
    /// Sent with every request; values may be secrets (never printed).
    pub headers: Vec<(String, Secret)>,
    /// HTTP basic authentication for every request.
    pub basic_auth: Option<(String, Secret)>,
    /// The share of a learned quota a resync may use (default 0.95: live events keep 5 %).
    pub resync_share: f64,
    /// Certificates (PEM) trusted besides the usual roots: a company's own CA.
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl Default for VendorClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_in_flight: 10,
            accept_invalid_certs: false,
            headers: Vec::new(),
            basic_auth: None,
            resync_share: 0.95,
            extra_roots_pem: None,
        }
    }
}

/// Where validated answers (`ETag` and body) are kept between resyncs, for conditional
/// requests. The agent's is the state file ([`StateValidators`]).
pub trait ValidatorStore: Send + Sync + std::fmt::Debug {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Validated>> + Send + 'a>>;
    fn put<'a>(
        &'a self,
        key: &'a str,
        validated: Validated,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// Validated answers in the state file (off the async runtime; a failure is a miss, logged).
#[derive(Debug, Clone)]
pub struct StateValidators(pub Arc<StateStore>);

impl ValidatorStore for StateValidators {
    fn get<'a>(
        &'a self,
        key: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Validated>> + Send + 'a>> {
        Box::pin(async move {
            let (state, key) = (self.0.clone(), key.to_owned());
            match tokio::task::spawn_blocking(move || state.validated(&key)).await {
                Ok(Ok(found)) => found,
                _ => None,
            }
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a str,
        validated: Validated,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let (state, key) = (self.0.clone(), key.to_owned());
            if let Ok(Err(e)) =
                tokio::task::spawn_blocking(move || state.keep_validated(&key, &validated)).await
            {
                tracing::warn!(error = %e, "cannot keep a validated answer; the next request is made in full");
            }
        })
    }
}

/// `body`, the answer to `request`, read as JSON.
fn read_json(request: &VendorRequest, body: &[u8]) -> Result<Value, VendorError> {
    serde_json::from_slice(body).map_err(|e| VendorError::Transport {
        method: request.method.clone(),
        url: shown_url(&request.url),
        message: format!("the answer is not JSON: {e}"),
    })
}

/// The key a request's validated answer is kept under: a hash, so that credentials in a query
/// never reach the state file.
fn validator_key(request: &VendorRequest) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(request.method.as_str().as_bytes());
    hasher.update(b" ");
    hasher.update(request.url.as_bytes());
    for (name, value) in &request.query {
        hasher.update(b"\0");
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// One request.
#[derive(Debug, Clone)]
pub struct VendorRequest {
    pub method: Method,
    pub url: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub json_body: Option<Value>,
    /// A body sent as it is (a form), when there is no JSON body.
    pub text_body: Option<String>,
    pub priority: Priority,
}

impl VendorRequest {
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: Method::GET,
            url: url.into(),
            query: Vec::new(),
            headers: Vec::new(),
            json_body: None,
            text_body: None,
            priority: Priority::Resync,
        }
    }
}

/// A successful (2xx) answer.
#[derive(Debug, Clone)]
pub struct VendorResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A request that failed for good. Messages name the method and the URL (credentials and query
/// removed), never a header or a body sent.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VendorError {
    #[error("{method} {url} answered {status}{}", detail(.message))]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        /// The start of the vendor's answer, printable.
        message: String,
    },
    #[error("{method} {url} failed: {message}")]
    Transport {
        method: Method,
        url: String,
        message: String,
    },
    #[error("{0}")]
    Setup(String),
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl VendorError {
    /// The status the vendor answered, if it did.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            VendorError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The URL as errors and logs show it: no credentials, no query (tokens travel there).
pub fn shown_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    redact_url(without_query).into_owned()
}

/// The URL of the `Link` header entry with relation `rel` (RFC 8288: `<url>; rel="next"`).
pub fn link_with_rel(header: &str, rel: &str) -> Option<String> {
    header.split(',').find_map(|entry| {
        let (target, params) = entry.split_once(';')?;
        let url = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("rel="))
            .map(|v| v.trim_matches('"'))
            .any(|rels| rels.split_whitespace().any(|r| r.eq_ignore_ascii_case(rel)))
            .then(|| url.to_owned())
    })
}

/// `scheme://host[:port]` of a URL, lower-cased, without credentials.
pub fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}").to_ascii_lowercase()
}

/// A vendor's API client, shared by every fetch of an integration.
#[derive(Debug, Clone)]
pub struct VendorClient {
    http: reqwest::Client,
    config: Arc<VendorClientConfig>,
    in_flight: Arc<Semaphore>,
    /// One scope per client: an integration makes one client per credential.
    scope: Arc<RateScope>,
}

impl VendorClient {
    pub fn new(config: VendorClientConfig) -> Result<Self, VendorError> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .danger_accept_invalid_certs(config.accept_invalid_certs)
            .user_agent(concat!("port-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.extra_roots_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem).map_err(|_| {
                VendorError::Setup("the CA certificates are not PEM certificates".to_owned())
            })?;
            if roots.is_empty() {
                return Err(VendorError::Setup(
                    "the CA certificate file holds no certificate".to_owned(),
                ));
            }
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let http = builder
            .build()
            .map_err(|e| VendorError::Setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            scope: Arc::new(RateScope::default()),
            config: Arc::new(config),
        })
    }

    /// Sends `request`, retrying what is worth retrying; a non-2xx answer after that is an
    /// error.
    pub async fn send(&self, request: &VendorRequest) -> Result<VendorResponse, VendorError> {
        let idempotency = if matches!(request.method, Method::POST | Method::PATCH) {
            Idempotency::NotIdempotent
        } else {
            Idempotency::Idempotent
        };
        let policy = &self.config.retry;
        let mut retry = 0;
        loop {
            let started = Instant::now();
            let shown = shown_url(&request.url);
            // One span per attempt: method, URL as shown, then status and time.
            let span = tracing::debug_span!(
                "vendor_request",
                method = %request.method,
                url = %shown,
                retry,
                status = tracing::field::Empty,
                ms = tracing::field::Empty,
            );
            let outcome = self.attempt(request).instrument(span.clone()).await;
            if let Ok(response) = &outcome {
                span.record("status", response.status().as_u16());
            }
            span.record("ms", started.elapsed().as_millis() as u64);
            let (wait, error) = match outcome {
                Ok(response)
                    if response.status().is_success()
                        || response.status() == StatusCode::NOT_MODIFIED =>
                {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let body = response
                        .bytes()
                        .await
                        .map_err(|e| self.transport(request, &e))?;
                    return Ok(VendorResponse {
                        status,
                        headers,
                        body: body.to_vec(),
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let text = response.text().await.unwrap_or_default();
                    let message: String = printable(text.trim()).chars().take(200).collect();
                    let error = VendorError::Status {
                        method: request.method.clone(),
                        url: shown.clone(),
                        status,
                        message,
                    };
                    if !is_retryable_status(status, idempotency)
                        && !is_rate_limit_refusal(status, &headers)
                    {
                        return Err(error);
                    }
                    (policy.delay(retry, Some(&headers)), error)
                }
                Err(e) => {
                    if !is_retryable_transport(&e, idempotency) {
                        return Err(self.transport(request, &e));
                    }
                    (policy.delay(retry, None), self.transport(request, &e))
                }
            };
            retry += 1;
            if retry >= policy.max_attempts {
                return Err(error);
            }
            tracing::warn!(method = %request.method, url = %shown, error = %error, wait_ms = wait.as_millis() as u64, "vendor request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends `request` and reads its answer as JSON.
    pub async fn send_json(
        &self,
        request: &VendorRequest,
    ) -> Result<(Value, HeaderMap), VendorError> {
        let response = self.send(request).await?;
        Ok((read_json(request, &response.body)?, response.headers))
    }

    /// As [`VendorClient::send_validated`], the answer read as JSON.
    pub async fn send_json_validated(
        &self,
        request: &VendorRequest,
        validators: Option<&dyn ValidatorStore>,
    ) -> Result<(Value, HeaderMap), VendorError> {
        let (body, headers) = self.send_validated(request, validators).await?;
        Ok((read_json(request, &body)?, headers))
    }

    /// As [`VendorClient::send`], for a GET asked conditionally: with the `ETag` of the
    /// answer `validators` kept for the same request, a `304 Not Modified` reuses that answer
    /// (body and `Link` header); a full answer with an `ETag` is kept for next time.
    pub async fn send_validated(
        &self,
        request: &VendorRequest,
        validators: Option<&dyn ValidatorStore>,
    ) -> Result<(Vec<u8>, HeaderMap), VendorError> {
        let Some(store) = validators.filter(|_| request.method == Method::GET) else {
            let response = self.send(request).await?;
            return Ok((response.body, response.headers));
        };
        let key = validator_key(request);
        let kept = store.get(&key).await;
        let mut conditional = request.clone();
        if let Some(kept) = &kept {
            conditional
                .headers
                .push(("If-None-Match".to_owned(), kept.etag.clone()));
        }
        let response = self.send(&conditional).await?;
        if response.status == StatusCode::NOT_MODIFIED
            && let Some(kept) = kept
        {
            let mut headers = response.headers;
            if let Some(link) = kept
                .link
                .as_deref()
                .and_then(|l| HeaderValue::from_str(l).ok())
            {
                headers.insert(reqwest::header::LINK, link);
            }
            tracing::debug!(url = %shown_url(&request.url), "not modified: the kept answer is used");
            return Ok((kept.body, headers));
        }
        let etag = response
            .headers
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok());
        if let Some(etag) = etag {
            let link = response
                .headers
                .get(reqwest::header::LINK)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            store
                .put(
                    &key,
                    Validated {
                        etag: etag.to_owned(),
                        link,
                        body: response.body.clone(),
                    },
                )
                .await;
        }
        Ok((response.body, response.headers))
    }

    async fn attempt(&self, request: &VendorRequest) -> Result<reqwest::Response, reqwest::Error> {
        self.scope
            .admit(request.priority, self.config.resync_share)
            .await;
        let _permit = self.in_flight.acquire().await.expect("never closed");
        let mut builder = self
            .http
            .request(request.method.clone(), &request.url)
            .query(&request.query);
        let mut headers = HeaderMap::new();
        let given = self
            .config
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.expose()))
            .chain(
                request
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str())),
            );
        for (name, value) in given {
            if let (Ok(name), Ok(mut value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                value.set_sensitive(true);
                headers.insert(name, value);
            }
        }
        builder = builder.headers(headers);
        if let Some((user, password)) = &self.config.basic_auth {
            builder = builder.basic_auth(user, Some(password.expose()));
        }
        if let Some(body) = &request.json_body {
            builder = builder.json(body);
        } else if let Some(body) = &request.text_body {
            builder = builder.body(body.clone());
        }
        let response = builder.send().await?;
        self.scope.learn(response.headers());
        Ok(response)
    }

    fn transport(&self, request: &VendorRequest, error: &reqwest::Error) -> VendorError {
        // reqwest's message may carry the URL with its query: only its kind is kept.
        let message = if error.is_timeout() {
            format!("no answer within {} s", self.config.timeout.as_secs())
        } else if error.is_connect() {
            "cannot connect".to_owned()
        } else if error.is_body() || error.is_decode() {
            "the answer was cut off".to_owned()
        } else {
            "the request failed".to_owned()
        };
        VendorError::Transport {
            method: request.method.clone(),
            url: shown_url(&request.url),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port_only() {
        assert_eq!(
            origin("https://api.github.com/orgs/a/repos?page=2"),
            "https://api.github.com"
        );
        assert_eq!(origin("https://API.github.com"), "https://api.github.com");
        assert_eq!(
            origin("https://user:pw@evil.example:8443/x"),
            "https://evil.example:8443"
        );
        assert_ne!(
            origin("http://api.github.com/x"),
            origin("https://api.github.com")
        );
    }

    #[test]
    fn shown_urls_have_no_credentials_and_no_query() {
        assert_eq!(
            shown_url("https://u:p@api.example.com/v1/users?token=abc&page=2"),
            "https://[redacted]@api.example.com/v1/users"
        );
        assert_eq!(shown_url("http://x/y#frag"), "http://x/y");
    }
}
