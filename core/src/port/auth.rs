//! The access token: fetched with the client id and secret, cached until shortly before it expires.

use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::client::{Call, PortClient};
use super::error::PortError;

#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    // Held across the fetch, so concurrent callers wait for one token instead of each fetching.
    current: Mutex<Option<Token>>,
}

#[derive(Debug)]
struct Token {
    /// The whole `Authorization` header value: `{tokenType} {accessToken}`.
    header: String,
    refresh_at: Instant,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenAnswer {
    access_token: String,
    expires_in: f64,
    #[serde(default = "bearer")]
    token_type: String,
}

fn bearer() -> String {
    "Bearer".to_owned()
}

impl TokenCache {
    /// The `Authorization` header value, fetching a token when none is valid.
    pub async fn get(&self, client: &PortClient) -> Result<String, PortError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.header.clone());
        }
        let token = fetch(client).await?;
        let header = token.header.clone();
        *current = Some(token);
        Ok(header)
    }

    /// Forgets `stale`, unless another task already replaced it with a fresh token.
    pub async fn invalidate(&self, stale: &str) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| t.header == stale) {
            *current = None;
        }
    }
}

async fn fetch(client: &PortClient) -> Result<Token, PortError> {
    let config = client.config();
    let call = Call::new(Method::POST, "/auth/access_token")
        .idempotent()
        .json(&serde_json::json!({
            "clientId": config.client_id,
            "clientSecret": config.client_secret.expose(),
        }));
    client.count_token_request();
    // Boxed: the request loop calls back here for its token, a recursion of future types.
    let answer = match Box::pin(client.execute_inner(&call, false)).await {
        Ok(answer) => answer,
        Err(PortError::Api {
            status: status @ (400 | 401 | 403 | 404 | 422),
            message,
            trace_id,
            ..
        }) => {
            return Err(PortError::Credentials {
                client_id: config.client_id.clone(),
                status,
                message,
                trace_id,
            });
        }
        Err(other) => return Err(other),
    };
    let parsed: TokenAnswer = answer.json(&call)?;
    let lifetime = Duration::from_secs_f64(parsed.expires_in.max(0.0));
    // Refresh a little early, so a token does not expire between check and use.
    let margin = (lifetime / 10).min(Duration::from_secs(60));
    tracing::debug!(
        expires_in_s = lifetime.as_secs(),
        "obtained a Port access token"
    );
    Ok(Token {
        header: format!("{} {}", parsed.token_type, parsed.access_token),
        refresh_at: Instant::now() + lifetime - margin,
    })
}
