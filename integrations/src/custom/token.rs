//! Ocean Custom's `authType: custom`: a token request (`customAuthRequest`) whose JSON answer
//! fills `{{.path}}` templates (`customAuthRequestTemplate`) in the headers, query parameters
//! or body of every later request. The answer is requested once, again when
//! `reauthenticateIntervalSeconds` (less 60 s) has passed, and again when a request is
//! answered 401. It is never logged: it holds credentials.

use std::time::{Duration, Instant};

use port_agent_core::mapping::jq::Query;
use port_agent_core::text::value_text;
use port_agent_core::vendor_http::{Priority, VendorClient, VendorError, VendorRequest};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

/// How the token is asked for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenRequest {
    pub endpoint: String,
    #[serde(default = "post")]
    pub method: String,
    #[serde(default)]
    pub headers: Option<Map<String, Value>>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub body_form: Option<String>,
    #[serde(default)]
    pub query_params: Option<Map<String, Value>>,
    #[serde(default)]
    pub reauthenticate_interval_seconds: Option<u64>,
}

fn post() -> String {
    "POST".to_owned()
}

/// Where the token's values go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenTemplate {
    #[serde(default)]
    pub headers: Option<Map<String, Value>>,
    #[serde(default)]
    pub query_params: Option<Map<String, Value>>,
    #[serde(default)]
    pub body: Option<Map<String, Value>>,
}

/// What the token adds to a request.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub body: Map<String, Value>,
}

/// Refreshed this long before the interval ends, as Ocean does.
const EARLY: Duration = Duration::from_secs(60);

/// `{{.path}}` templates in `text`, evaluated against `answer`.
pub fn fill(text: &str, answer: &Value) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let Some(len) = rest[open + 2..].find("}}") else {
            break;
        };
        let path = rest[open + 2..open + 2 + len].trim();
        if !path.starts_with('.') {
            return Err(format!(
                "template {{{{{path}}}}}: expected {{{{.path}}}} (e.g. {{{{.access_token}}}})"
            ));
        }
        let value = Query::new(path)
            .map_err(|e| format!("template {{{{{path}}}}}: {e}"))?
            .first(answer)
            .map_err(|e| format!("template {{{{{path}}}}}: {e}"))?
            .filter(|v| !v.is_null())
            .ok_or_else(|| {
                let keys: Vec<&str> = answer
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                format!(
                    "template {{{{{path}}}}}: not in the token answer (its keys: {})",
                    keys.join(", ")
                )
            })?;
        out.push_str(&rest[..open]);
        out.push_str(&value_text(&value));
        rest = &rest[open + 4 + len..];
    }
    out.push_str(rest);
    Ok(out)
}

fn fill_value(value: &Value, answer: &Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => Value::String(fill(s, answer)?),
        Value::Object(map) => Value::Object(fill_map(map, answer)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| fill_value(v, answer))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

fn fill_map(map: &Map<String, Value>, answer: &Value) -> Result<Map<String, Value>, String> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), fill_value(v, answer)?)))
        .collect()
}

fn text_pairs(map: &Map<String, Value>) -> Vec<(String, String)> {
    map.iter()
        .map(|(k, v)| (k.clone(), value_text(v)))
        .collect()
}

/// The token, fetched when needed.
#[derive(Debug)]
pub struct TokenAuth {
    request: TokenRequest,
    template: TokenTemplate,
    /// The token answer and when it was fetched. Behind an async lock: one request at a time.
    current: Mutex<Option<(Value, Instant)>>,
}

impl TokenAuth {
    pub fn new(request: TokenRequest, template: TokenTemplate) -> Self {
        Self {
            request,
            template,
            current: Mutex::new(None),
        }
    }

    /// The credentials for the next request; with `renew`, a new token first (the last was
    /// refused).
    pub async fn credentials(
        &self,
        client: &VendorClient,
        base_url: &str,
        renew: bool,
    ) -> Result<Credentials, String> {
        let mut current = self.current.lock().await;
        let expired = |at: &Instant| {
            self.request
                .reauthenticate_interval_seconds
                .is_some_and(|s| at.elapsed() + EARLY >= Duration::from_secs(s))
        };
        let fresh = match current.as_ref() {
            Some((_, at)) if !renew && !expired(at) => None,
            _ => Some(self.ask(client, base_url).await?),
        };
        if let Some(answer) = fresh {
            *current = Some((answer, Instant::now()));
        }
        let (answer, _) = current.as_ref().expect("set above");
        let template = &self.template;
        Ok(Credentials {
            headers: text_pairs(&fill_map(
                template.headers.as_ref().unwrap_or(&Map::new()),
                answer,
            )?),
            query: text_pairs(&fill_map(
                template.query_params.as_ref().unwrap_or(&Map::new()),
                answer,
            )?),
            body: fill_map(template.body.as_ref().unwrap_or(&Map::new()), answer)?,
        })
    }

    async fn ask(&self, client: &VendorClient, base_url: &str) -> Result<Value, String> {
        let request = &self.request;
        let url = if request.endpoint.starts_with("http://")
            || request.endpoint.starts_with("https://")
        {
            request.endpoint.clone()
        } else {
            format!("{base_url}/{}", request.endpoint.trim_start_matches('/'))
        };
        let mut headers = text_pairs(request.headers.as_ref().unwrap_or(&Map::new()));
        let has_content_type = headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        if request.body_form.is_some() && !has_content_type {
            headers.push((
                "Content-Type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ));
        }
        let call = VendorRequest {
            method: reqwest::Method::from_bytes(request.method.to_ascii_uppercase().as_bytes())
                .map_err(|_| "customAuthRequest.method: not a method".to_owned())?,
            url,
            query: text_pairs(request.query_params.as_ref().unwrap_or(&Map::new())),
            headers,
            json_body: request.body.clone(),
            text_body: request.body_form.clone(),
            // The token is needed whoever asks.
            priority: Priority::Live,
        };
        let (answer, _) = client.send_json(&call).await.map_err(|e: VendorError| {
            format!("the token request (customAuthRequest) failed: {e}")
        })?;
        tracing::info!("custom authentication: a token was obtained");
        Ok(answer)
    }
}

/// Reads `customAuthRequest` and `customAuthRequestTemplate` (objects, or JSON text from the
/// environment); problems name the key, never a value.
pub fn read(request: Option<&Value>, template: Option<&Value>) -> Result<TokenAuth, Vec<String>> {
    fn parse<T: serde::de::DeserializeOwned>(
        key: &str,
        value: Option<&Value>,
    ) -> Result<T, String> {
        let value = match value {
            None => {
                return Err(format!(
                    "integration.config.{key}: required with authType custom"
                ));
            }
            Some(Value::String(text)) => serde_json::from_str(text)
                .map_err(|_| format!("integration.config.{key}: expected a JSON object"))?,
            Some(other) => other.clone(),
        };
        serde_json::from_value(value).map_err(|e| {
            format!(
                "integration.config.{key}: {}",
                port_agent_core::text::without_values(&e.to_string())
            )
        })
    }
    let request: Result<TokenRequest, String> = parse("customAuthRequest", request);
    let template: Result<TokenTemplate, String> = parse("customAuthRequestTemplate", template);
    let mut problems = Vec::new();
    if let Ok(request) = &request
        && request.body.is_some()
        && request.body_form.is_some()
    {
        problems.push(
            "integration.config.customAuthRequest: body and bodyForm cannot both be given"
                .to_owned(),
        );
    }
    if let Ok(template) = &template
        && template.headers.is_none()
        && template.query_params.is_none()
        && template.body.is_none()
    {
        problems.push(
            "integration.config.customAuthRequestTemplate: give headers, queryParams or body"
                .to_owned(),
        );
    }
    match (request, template) {
        (Ok(request), Ok(template)) if problems.is_empty() => Ok(TokenAuth::new(request, template)),
        (request, template) => {
            problems.extend(request.err());
            problems.extend(template.err());
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn templates_take_values_from_the_token_answer() {
        let answer = json!({"access_token": "abc", "expires_in": 3600, "nested": {"id": 7}});
        assert_eq!(
            fill("Bearer {{.access_token}}", &answer).unwrap(),
            "Bearer abc"
        );
        assert_eq!(
            fill("{{.nested.id}}-{{ .expires_in }}", &answer).unwrap(),
            "7-3600"
        );
        assert_eq!(fill("no template", &answer).unwrap(), "no template");
        let missing = fill("{{.refresh_token}}", &answer).unwrap_err();
        assert!(
            missing.contains("access_token") && !missing.contains("abc"),
            "{missing}"
        );
        assert!(
            fill("{{access_token}}", &answer)
                .unwrap_err()
                .contains("{{.path}}")
        );
    }

    #[test]
    fn settings_problems_name_the_key() {
        let problems = read(
            Some(&json!({"endpoint": "/t", "body": {}, "bodyForm": "a=b"})),
            Some(&json!({})),
        )
        .unwrap_err();
        let text = problems.join("\n");
        assert!(
            text.contains("bodyForm") && text.contains("customAuthRequestTemplate"),
            "{text}"
        );
        let problems = read(None, Some(&json!("not json s3cret")))
            .unwrap_err()
            .join("\n");
        assert!(
            problems.contains("customAuthRequest:") && !problems.contains("s3cret"),
            "{problems}"
        );
        assert!(
            read(
                Some(&json!("{\"endpoint\": \"/oauth/token\"}")),
                Some(&json!({"headers": {"Authorization": "Bearer {{.access_token}}"}}))
            )
            .is_ok()
        );
    }
}
