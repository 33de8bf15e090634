//! How requests to GitHub are authorized: a personal access token as it is, or a GitHub App —
//! a JWT (RS256, signed with the App's private key, ten minutes at most as GitHub allows) finds
//! the App's installation on the organization and asks it for an installation token, which is
//! kept until five minutes before it expires and renewed when GitHub refuses it.

use base64::Engine as _;
use port_agent_core::Secret;
use port_agent_core::vendor_http::{Priority, VendorClient, VendorError, VendorRequest};
use reqwest::{Method, StatusCode};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::{Value, json};
use tokio::sync::Mutex;

/// A GitHub App's identity: its id and its private key.
pub struct AppKey {
    app_id: String,
    key: RsaKeyPair,
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppKey")
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl AppKey {
    /// `githubAppPrivateKey` as GitHub hands it out (PEM, PKCS#1 or PKCS#8), or that PEM in
    /// base64 (as Ocean takes it). The error never shows the key.
    pub fn new(app_id: &str, private_key: &Secret) -> Result<Self, String> {
        let problem = |what: &str| format!("integration.config.githubAppPrivateKey: {what}");
        let text = private_key.expose().trim();
        let pem = if text.contains("-----BEGIN") {
            text.to_owned()
        } else {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(text.replace(['\n', '\r', ' '], ""))
                .map_err(|_| problem("neither a PEM key nor the base64 of one"))?;
            String::from_utf8(decoded).map_err(|_| problem("the base64 does not hold a PEM key"))?
        };
        let body: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----") && !l.is_empty())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| problem("the PEM's body is not base64"))?;
        let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
            RsaKeyPair::from_der(&der)
        } else {
            RsaKeyPair::from_pkcs8(&der)
        }
        .map_err(|_| problem("not an RSA private key GitHub could have made"))?;
        Ok(Self {
            app_id: app_id.to_owned(),
            key,
        })
    }

    /// A JWT GitHub takes as the App: issued a minute ago (clocks drift), valid nine minutes.
    pub fn jwt(&self, now_seconds: i64) -> String {
        let encode = |value: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let header = encode(&json!({"alg": "RS256", "typ": "JWT"}));
        let claims =
            encode(&json!({"iat": now_seconds - 60, "exp": now_seconds + 540, "iss": self.app_id}));
        let message = format!("{header}.{claims}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message.as_bytes(),
                &mut signature,
            )
            .expect("an RSA key signs any message");
        format!(
            "{message}.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
        )
    }
}

/// How requests are authorized.
#[derive(Debug)]
pub enum Auth {
    Token(Secret),
    App {
        key: Box<AppKey>,
        organization: String,
        /// The installation token and when it stops being used (seconds since the epoch).
        token: Mutex<Option<(Secret, i64)>>,
    },
}

/// Seconds before its expiry an installation token is renewed.
const RENEW_BEFORE: i64 = 300;

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Auth {
    /// The `Authorization` header's value for the next request.
    pub async fn header(&self, client: &VendorClient, host: &str) -> Result<String, VendorError> {
        match self {
            Auth::Token(token) => Ok(format!("Bearer {}", token.expose())),
            Auth::App {
                key,
                organization,
                token,
            } => {
                let mut kept = token.lock().await;
                if let Some((token, until)) = kept.as_ref()
                    && *until > now()
                {
                    return Ok(format!("Bearer {}", token.expose()));
                }
                let (fresh, expires_at) =
                    installation_token(client, host, key, organization).await?;
                let header = format!("Bearer {}", fresh.expose());
                *kept = Some((fresh, expires_at - RENEW_BEFORE));
                Ok(header)
            }
        }
    }

    /// GitHub refused the token: an installation token is dropped, so the next request asks
    /// for a new one. Whether a retry may help.
    pub async fn refused(&self) -> bool {
        match self {
            Auth::Token(_) => false,
            Auth::App { token, .. } => token.lock().await.take().is_some(),
        }
    }
}

/// The App's installation on `organization`, and a token from it.
async fn installation_token(
    client: &VendorClient,
    host: &str,
    key: &AppKey,
    organization: &str,
) -> Result<(Secret, i64), VendorError> {
    let as_app = |method: Method, path: String| {
        let mut request = VendorRequest {
            method,
            priority: Priority::Live,
            ..VendorRequest::get(format!("{host}{path}"))
        };
        request.headers.push((
            "Authorization".to_owned(),
            format!("Bearer {}", key.jwt(now())),
        ));
        request
    };
    let mut installation = None;
    let mut page = 1;
    while installation.is_none() {
        let mut request = as_app(Method::GET, "/app/installations".to_owned());
        request.query = vec![
            ("per_page".to_owned(), "100".to_owned()),
            ("page".to_owned(), page.to_string()),
        ];
        let (listed, _) = client.send_json(&request).await?;
        let listed = listed.as_array().cloned().unwrap_or_default();
        if listed.is_empty() {
            return Err(VendorError::Setup(format!(
                "the GitHub App {} is not installed on {organization} (or the installation is suspended)",
                key.app_id
            )));
        }
        installation = listed.into_iter().find(|i| {
            i["suspended_at"].is_null()
                && i["account"]["login"]
                    .as_str()
                    .is_some_and(|l| l.eq_ignore_ascii_case(organization))
        });
        page += 1;
    }
    let id = &installation.expect("found above")["id"];
    let (answer, _) = client
        .send_json(&as_app(
            Method::POST,
            format!("/app/installations/{id}/access_tokens"),
        ))
        .await?;
    let token = answer["token"].as_str().filter(|t| !t.is_empty());
    let expires_at = answer["expires_at"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    match (token, expires_at) {
        (Some(token), Some(expires_at)) => {
            Ok((Secret::new(token.to_owned()), expires_at.as_second()))
        }
        _ => Err(VendorError::Setup(
            "GitHub's installation token answer has no token or expires_at".to_owned(),
        )),
    }
}

/// Whether GitHub's answer means the credentials were refused.
pub fn is_refusal(error: &VendorError) -> bool {
    error.status() == Some(StatusCode::UNAUTHORIZED)
}
