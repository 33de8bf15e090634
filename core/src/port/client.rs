//! The HTTP core of the Port client: one request loop with auth, retries, a shared concurrency
//! bound and an optional rate limit. The typed calls live in `entities.rs` and `resources.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::auth::TokenCache;
use super::error::PortError;
use super::rate_limit::RateLimiter;
use crate::Secret;
use crate::retry::{Idempotency, RetryPolicy, is_retryable_status, is_retryable_transport};

/// Who is talking to Port. Port records entity writes under the User-Agent built from this,
/// and "the entities this integration owns" are found by it.
#[derive(Debug, Clone)]
pub struct IntegrationIdentity {
    pub integration_type: String,
    pub version: String,
    pub identifier: String,
}

impl IntegrationIdentity {
    /// `port-ocean/{type}/{version}/{identifier}/exporter`, as Ocean sends it.
    pub fn user_agent(&self) -> String {
        format!(
            "port-ocean/{}/{}/{}/exporter",
            self.integration_type, self.version, self.identifier
        )
    }

    /// The `$datasource` prefix and suffix that select this integration's entities.
    pub fn datasource_bounds(&self) -> (String, String) {
        (
            format!("port-ocean/{}/", self.integration_type),
            format!("/{}/exporter", self.identifier),
        )
    }
}

/// Limits of one bulk upsert request.
#[derive(Debug, Clone, Copy)]
pub struct BulkLimits {
    pub max_entities: usize,
    pub max_bytes: usize,
}

impl Default for BulkLimits {
    /// Ocean's `UPSERT_ENTITIES_BATCH_MAX_LENGTH` and `..._MAX_SIZE_IN_BYTES`.
    fn default() -> Self {
        Self {
            max_entities: 20,
            max_bytes: 1024 * 1024,
        }
    }
}

/// Everything the client needs to know. Build it, then [`PortClient::new`].
#[derive(Debug, Clone)]
pub struct PortClientConfig {
    /// e.g. `https://api.getport.io`; paths go under `{base_url}/v1`.
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub identity: IntegrationIdentity,
    pub retry: RetryPolicy,
    /// Requests in flight at once, across every task that shares this client.
    pub max_concurrency: usize,
    /// Optional client-side quota, in requests per second.
    pub requests_per_second: Option<f64>,
    /// Time for one attempt, connect to last byte.
    pub request_timeout: Duration,
    pub bulk: BulkLimits,
    /// Ids per bulk delete request.
    pub delete_batch_size: usize,
    /// Entities per page of the owned-entities listing.
    pub owned_page_limit: usize,
}

impl PortClientConfig {
    pub fn new(
        base_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Secret,
        identity: IntegrationIdentity,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            client_id: client_id.into(),
            client_secret,
            identity,
            retry: RetryPolicy::default(),
            max_concurrency: 16,
            requests_per_second: None,
            request_timeout: Duration::from_secs(60),
            bulk: BulkLimits::default(),
            delete_batch_size: 100,
            owned_page_limit: 5000,
        }
    }

    fn validate(&self) -> Result<(), PortError> {
        let bad = |field, reason: &str| {
            Err(PortError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return bad("base_url", "must start with http:// or https://");
        }
        if self.client_id.is_empty() {
            return bad("client_id", "is empty");
        }
        if self.client_secret.is_empty() {
            return bad("client_secret", "is empty");
        }
        if self.max_concurrency == 0 {
            return bad("max_concurrency", "must be at least 1");
        }
        if let Some(rps) = self.requests_per_second
            && !(rps.is_finite() && rps > 0.0)
        {
            return bad("requests_per_second", "must be a positive number");
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts", "must be at least 1");
        }
        if self.bulk.max_entities == 0 || self.delete_batch_size == 0 || self.owned_page_limit == 0
        {
            return bad("batch sizes", "must be at least 1");
        }
        Ok(())
    }
}

/// Counters of what the client did, for tests, metrics and summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent, retries and token requests included.
    pub requests: u64,
    pub retries: u64,
    /// Time spent waiting between attempts.
    pub retry_wait: Duration,
    pub token_requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    retry_wait_micros: AtomicU64,
    token_requests: AtomicU64,
}

/// A client of Port's REST API. Cheap to clone; clones share the token, the concurrency bound,
/// the rate limit and the counters.
#[derive(Debug, Clone)]
pub struct PortClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    api_url: String,
    config: PortClientConfig,
    tokens: TokenCache,
    permits: Semaphore,
    rate: Option<RateLimiter>,
    counters: Counters,
}

/// One request, described once so that every attempt sends the same thing.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub method: Method,
    /// Path under `/v1`, starting with `/`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<Vec<u8>>,
    pub idempotency: Idempotency,
}

impl Call {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        let idempotency = if method == Method::POST {
            Idempotency::NotIdempotent
        } else {
            Idempotency::Idempotent
        };
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            idempotency,
        }
    }

    pub fn idempotent(mut self) -> Self {
        self.idempotency = Idempotency::Idempotent;
        self
    }

    pub fn query(mut self, key: &'static str, value: impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }

    pub fn json(mut self, body: &impl serde::Serialize) -> Self {
        self.body = Some(serde_json::to_vec(body).expect("request bodies are plain JSON"));
        self
    }

    pub fn raw_json(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    pub fn label(&self) -> String {
        format!("{} /v1{}", self.method, self.path)
    }
}

/// A complete answer: status, headers and the whole body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self, call: &Call) -> Result<T, PortError> {
        serde_json::from_slice(&self.body).map_err(|e| PortError::Decode {
            call: call.label(),
            reason: format!("{e}; body starts with {:?}", body_excerpt(&self.body)),
        })
    }

    /// Port's `error` and `message` fields, or the body's start when it is not JSON.
    pub fn port_error(&self) -> (Option<String>, String) {
        #[derive(serde::Deserialize)]
        struct PortErrorBody {
            error: Option<String>,
            message: Option<serde_json::Value>,
        }
        match serde_json::from_slice::<PortErrorBody>(&self.body) {
            Ok(parsed) => {
                let message = match parsed.message {
                    Some(serde_json::Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => body_excerpt(&self.body),
                };
                (parsed.error, message)
            }
            Err(_) => (None, body_excerpt(&self.body)),
        }
    }

    pub fn trace_id(&self) -> Option<String> {
        self.headers
            .get("x-trace-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    fn into_error(self, call: &Call, attempts: u32) -> PortError {
        let (error, message) = self.port_error();
        PortError::Api {
            call: call.label(),
            status: self.status.as_u16(),
            error,
            message,
            trace_id: self.trace_id(),
            attempts,
        }
    }
}

fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    if text.trim().is_empty() {
        "(empty body)".to_owned()
    } else {
        text.into_owned()
    }
}

impl PortClient {
    pub fn new(config: PortClientConfig) -> Result<Self, PortError> {
        config.validate()?;
        let user_agent = HeaderValue::from_str(&config.identity.user_agent()).map_err(|_| {
            PortError::Config {
                field: "integration",
                reason: "type, version and identifier must be printable ASCII".to_owned(),
            }
        })?;
        let mut default_headers = HeaderMap::new();
        default_headers.insert(USER_AGENT, user_agent);
        let http = reqwest::Client::builder()
            .default_headers(default_headers)
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| PortError::Config {
                field: "http client",
                reason: e.to_string(),
            })?;
        let api_url = format!("{}/v1", config.base_url.trim_end_matches('/'));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                api_url,
                permits: Semaphore::new(config.max_concurrency),
                rate: config.requests_per_second.map(RateLimiter::new),
                tokens: TokenCache::default(),
                counters: Counters::default(),
                config,
            }),
        })
    }

    pub fn config(&self) -> &PortClientConfig {
        &self.inner.config
    }

    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            requests: c.requests.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            retry_wait: Duration::from_micros(c.retry_wait_micros.load(Ordering::Relaxed)),
            token_requests: c.token_requests.load(Ordering::Relaxed),
        }
    }

    /// Sends `call`, retrying as the policy says, and returns Port's 2xx answer.
    pub(crate) async fn execute(&self, call: &Call) -> Result<Answer, PortError> {
        self.execute_inner(call, true).await
    }

    /// Sends `call` and decodes the JSON of its 2xx answer.
    pub(crate) async fn execute_json<T: DeserializeOwned>(
        &self,
        call: &Call,
    ) -> Result<T, PortError> {
        self.execute(call).await?.json(call)
    }

    /// Like [`execute`](Self::execute), but a 404 is `None`.
    pub(crate) async fn execute_optional<T: DeserializeOwned>(
        &self,
        call: &Call,
    ) -> Result<Option<T>, PortError> {
        match self.execute(call).await {
            Ok(answer) => answer.json(call).map(Some),
            Err(PortError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The request loop. `authenticated` is false only for the token request itself.
    pub(crate) async fn execute_inner(
        &self,
        call: &Call,
        authenticated: bool,
    ) -> Result<Answer, PortError> {
        let policy = &self.inner.config.retry;
        let mut attempts = 0u32;
        let mut refreshed_after_401 = false;
        loop {
            attempts += 1;
            let token = if authenticated {
                Some(self.inner.tokens.get(self).await?)
            } else {
                None
            };
            if let Some(rate) = &self.inner.rate {
                rate.acquire().await;
            }
            let sent = self.send_once(call, token.as_deref()).await;
            let retry_headers = match sent {
                Ok(answer) if answer.status.is_success() => return Ok(answer),
                Ok(answer)
                    if answer.status == StatusCode::UNAUTHORIZED
                        && authenticated
                        && !refreshed_after_401 =>
                {
                    // The token expired or was revoked early: fetch a new one, once, and try again.
                    tracing::debug!(call = %call.label(), "Port answered 401; refreshing the access token");
                    self.inner
                        .tokens
                        .invalidate(token.as_deref().unwrap_or_default())
                        .await;
                    refreshed_after_401 = true;
                    attempts -= 1;
                    continue;
                }
                Ok(answer) => {
                    if attempts >= policy.max_attempts
                        || !is_retryable_status(answer.status, call.idempotency)
                    {
                        return Err(answer.into_error(call, attempts));
                    }
                    tracing::warn!(call = %call.label(), status = answer.status.as_u16(), attempt = attempts, "Port answered an error; retrying");
                    Some(answer.headers)
                }
                Err(source) => {
                    if attempts >= policy.max_attempts
                        || !is_retryable_transport(&source, call.idempotency)
                    {
                        return Err(PortError::Network {
                            call: call.label(),
                            attempts,
                            // The URL may carry credentials; the call names the path.
                            cause: source.without_url(),
                        });
                    }
                    tracing::warn!(call = %call.label(), error = %source, attempt = attempts, "no answer from Port; retrying");
                    None
                }
            };
            let wait = policy.delay(attempts - 1, retry_headers.as_ref());
            let counters = &self.inner.counters;
            counters.retries.fetch_add(1, Ordering::Relaxed);
            counters
                .retry_wait_micros
                .fetch_add(wait.as_micros() as u64, Ordering::Relaxed);
            tracing::debug!(call = %call.label(), wait_ms = wait.as_millis() as u64, "waiting before the next attempt");
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt. The concurrency permit is held only while the request is in flight, not
    /// while waiting to retry, so one slow retry does not starve everyone else.
    async fn send_once(&self, call: &Call, token: Option<&str>) -> Result<Answer, reqwest::Error> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.inner.http.request(
            call.method.clone(),
            format!("{}{}", self.inner.api_url, call.path),
        );
        if !call.query.is_empty() {
            request = request.query(&call.query);
        }
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, token);
        }
        if let Some(body) = &call.body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        // A connection dropped mid-body surfaces here, as a transport error.
        let body = response.bytes().await?.to_vec();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub(crate) fn count_token_request(&self) {
        self.inner
            .counters
            .token_requests
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Percent-encodes one path segment (blueprint or entity identifiers may hold `/`, spaces...).
pub(crate) fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
