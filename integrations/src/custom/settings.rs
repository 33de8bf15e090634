//! Ocean Custom's connection settings (`integration.config`), read as Ocean reads them: its
//! `.port/spec.yaml` names in camelCase, or the snake_case names `OCEAN__INTEGRATION__CONFIG__*`
//! variables give; numbers as numbers or as text ("100"), as its spec declares them strings.

use std::sync::Arc;
use std::time::Duration;

use port_agent_core::Secret;
use port_agent_core::text::value_text;
use serde_json::{Map, Value};

use super::token::{self, TokenAuth};

/// How pages follow one another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaginationType {
    None,
    Offset,
    Page,
    Cursor,
    NextLink,
    HeaderLink,
}

/// How requests authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Bearer(Secret),
    Basic {
        username: String,
        password: Secret,
    },
    ApiKey {
        header: String,
        key: Secret,
    },
    /// A token request whose answer fills templates in every request.
    Token(Arc<TokenAuth>),
}

/// The settings a fetch needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Without a trailing `/`.
    pub base_url: String,
    pub auth: Auth,
    pub pagination: PaginationType,
    pub page_size: u64,
    /// The query parameter that carries the page, offset or cursor.
    pub pagination_param: String,
    /// The query parameter that carries the page size.
    pub size_param: String,
    pub start_page: u64,
    pub cursor_path: Option<String>,
    pub has_more_path: Option<String>,
    pub last_page_path: Option<String>,
    pub next_link_path: String,
    pub header_link_rel: String,
    pub timeout: Duration,
    pub verify_ssl: bool,
    pub max_concurrent_requests: usize,
    /// `customHeaders` (JSON object; `${VAR}` read from the environment), sent with every
    /// request. Values may be credentials.
    pub custom_headers: Vec<(String, Secret)>,
    /// `resyncQuotaShare` (port-agent's own): the share of a quota the vendor reports
    /// (`x-ratelimit-*`) that a resync may use, the rest kept for live events (default 0.95).
    pub resync_share: f64,
    /// `caCertificate` (port-agent's own), else `SSL_CERT_FILE`: a PEM file of certificates
    /// trusted besides the usual roots.
    pub ca_certificate: Option<std::path::PathBuf>,
    /// `conditionalRequests` (port-agent's own): GETs carry `If-None-Match` with the `ETag` of
    /// the answer kept from the last resync, and a `304` reuses it.
    pub conditional_requests: bool,
}

/// Names compare without case and without `_`/`-`, as Ocean's decamelizing does.
fn normalized(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Reads `integration.config`; each problem names its key (never its value).
struct Reader<'a> {
    config: &'a Map<String, Value>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        let wanted = normalized(name);
        self.config
            .iter()
            .find(|(key, _)| normalized(key) == wanted)
            .map(|(_, value)| value)
            .filter(|value| !value.is_null())
    }

    fn text(&mut self, name: &str) -> Option<String> {
        match self.get(name)? {
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => {
                self.problems
                    .push(format!("integration.config.{name}: expected text"));
                None
            }
        }
    }

    fn number(&mut self, name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
        let Some(text) = self.text(name) else {
            return default;
        };
        match text.trim().parse::<u64>() {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.problems.push(format!(
                    "integration.config.{name}: expected a whole number from {} to {}",
                    range.start(),
                    range.end()
                ));
                default
            }
        }
    }

    fn share(&mut self, name: &str, default: f64) -> f64 {
        let Some(text) = self.text(name) else {
            return default;
        };
        match text.trim().parse::<f64>() {
            Ok(share) if (0.0..=1.0).contains(&share) => share,
            _ => {
                self.problems.push(format!(
                    "integration.config.{name}: expected a number from 0 to 1"
                ));
                default
            }
        }
    }

    fn flag(&mut self, name: &str, default: bool) -> bool {
        match self.get(name) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => true,
            Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => false,
            Some(_) => {
                self.problems
                    .push(format!("integration.config.{name}: expected true or false"));
                default
            }
        }
    }

    fn secret(&mut self, name: &str) -> Option<Secret> {
        self.text(name).map(Secret::new)
    }

    fn required_secret(&mut self, name: &str, auth_type: &str) -> Secret {
        self.secret(name).unwrap_or_else(|| {
            self.problems.push(format!(
                "integration.config.{name}: required with authType {auth_type}"
            ));
            Secret::new(String::new())
        })
    }

    fn auth(&mut self) -> Auth {
        let auth_type = self.text("authType").unwrap_or_else(|| "none".to_owned());
        match auth_type.as_str() {
            "none" => Auth::None,
            "bearer_token" => Auth::Bearer(self.required_secret("apiToken", &auth_type)),
            "basic" => Auth::Basic {
                username: self.text("username").unwrap_or_else(|| {
                    self.problems.push(
                        "integration.config.username: required with authType basic".to_owned(),
                    );
                    String::new()
                }),
                password: self.required_secret("password", &auth_type),
            },
            "api_key" => Auth::ApiKey {
                header: self
                    .text("apiKeyHeader")
                    .unwrap_or_else(|| "X-API-Key".to_owned()),
                key: self.required_secret("apiKey", &auth_type),
            },
            "custom" => match token::read(
                self.get("customAuthRequest"),
                self.get("customAuthRequestTemplate"),
            ) {
                Ok(auth) => Auth::Token(Arc::new(auth)),
                Err(problems) => {
                    self.problems.extend(problems);
                    Auth::None
                }
            },
            _ => {
                self.problems.push(
                    "integration.config.authType: expected none, bearer_token, basic, api_key or custom"
                        .to_owned(),
                );
                Auth::None
            }
        }
    }

    fn pagination(&mut self) -> PaginationType {
        match self.text("paginationType").as_deref().unwrap_or("none") {
            "none" => PaginationType::None,
            "offset" => PaginationType::Offset,
            "page" => PaginationType::Page,
            "cursor" => PaginationType::Cursor,
            "next_link" => PaginationType::NextLink,
            "header_link" => PaginationType::HeaderLink,
            _ => {
                self.problems.push(
                    "integration.config.paginationType: expected none, offset, page, cursor, next_link or header_link".to_owned(),
                );
                PaginationType::None
            }
        }
    }

    fn custom_headers(&mut self) -> Vec<(String, Secret)> {
        let parsed = match self.get("customHeaders") {
            None => return Vec::new(),
            Some(Value::Object(map)) => map.clone(),
            Some(Value::String(text)) => match serde_json::from_str::<Map<String, Value>>(text) {
                Ok(map) => map,
                Err(_) => {
                    self.problems.push(
                        "integration.config.customHeaders: expected a JSON object of header names to values".to_owned(),
                    );
                    return Vec::new();
                }
            },
            Some(_) => {
                self.problems.push(
                    "integration.config.customHeaders: expected an object of header names to values"
                        .to_owned(),
                );
                return Vec::new();
            }
        };
        parsed
            .into_iter()
            .map(|(name, value)| {
                let resolved =
                    resolve_env_references(&value_text(&value), |name| std::env::var(name).ok());
                (name, Secret::new(resolved))
            })
            .collect()
    }
}

/// `${VAR}` replaced by the variable's value (left as written when it is not set), as Ocean
/// Custom does for `customHeaders`.
fn resolve_env_references(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let Some(len) = rest[start + 2..].find('}') else {
            break;
        };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&rest[..start]);
        match lookup(name) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[start..start + 3 + len]),
        }
        rest = &rest[start + 3 + len..];
    }
    out.push_str(rest);
    out
}

impl Settings {
    /// Reads `config`, reporting every problem at once.
    pub fn from_config(config: &Map<String, Value>) -> Result<Self, Vec<String>> {
        let mut reader = Reader {
            config,
            problems: Vec::new(),
        };
        let base_url = match reader.text("baseUrl") {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                url.trim_end_matches('/').to_owned()
            }
            Some(_) => {
                reader.problems.push(
                    "integration.config.baseUrl: expected an http:// or https:// URL".to_owned(),
                );
                String::new()
            }
            None => {
                reader
                    .problems
                    .push("integration.config.baseUrl: required".to_owned());
                String::new()
            }
        };
        let auth = reader.auth();
        let pagination = reader.pagination();
        // Ocean's defaults for the parameter names depend on the pagination type.
        let (page_param, size_param) = match pagination {
            PaginationType::Page => ("page", "size"),
            PaginationType::Offset => ("offset", "limit"),
            _ => ("cursor", "limit"),
        };
        let settings = Settings {
            base_url,
            auth,
            pagination,
            page_size: reader.number("pageSize", 100, 1..=100_000),
            pagination_param: reader
                .text("paginationParam")
                .unwrap_or_else(|| page_param.to_owned()),
            size_param: reader
                .text("sizeParam")
                .unwrap_or_else(|| size_param.to_owned()),
            start_page: reader.number("startPage", 1, 0..=u64::from(u32::MAX)),
            cursor_path: reader.text("cursorPath"),
            has_more_path: reader.text("hasMorePath"),
            last_page_path: reader.text("lastPagePath"),
            next_link_path: reader
                .text("nextLinkPath")
                .unwrap_or_else(|| "@odata.nextLink".to_owned()),
            header_link_rel: reader
                .text("headerLinkRel")
                .unwrap_or_else(|| "next".to_owned()),
            timeout: Duration::from_secs(reader.number("timeout", 30, 1..=3600)),
            verify_ssl: reader.flag("verifySsl", true),
            max_concurrent_requests: reader.number("maxConcurrentRequests", 10, 1..=256) as usize,
            custom_headers: reader.custom_headers(),
            resync_share: reader.share("resyncQuotaShare", 0.95),
            ca_certificate: reader
                .text("caCertificate")
                .or_else(|| std::env::var("SSL_CERT_FILE").ok())
                .map(std::path::PathBuf::from),
            conditional_requests: reader.flag("conditionalRequests", false),
        };
        if reader.problems.is_empty() {
            Ok(settings)
        } else {
            Err(reader.problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(config: Value) -> Result<Settings, Vec<String>> {
        Settings::from_config(config.as_object().unwrap())
    }

    #[test]
    fn ocean_names_and_defaults_and_snake_case_from_the_environment() {
        let settings = read(json!({"baseUrl": "https://api.example.com/", "paginationType": "offset", "pageSize": "50"})).unwrap();
        assert_eq!(settings.base_url, "https://api.example.com");
        assert_eq!(settings.pagination, PaginationType::Offset);
        assert_eq!(settings.page_size, 50);
        assert_eq!(
            (
                settings.pagination_param.as_str(),
                settings.size_param.as_str()
            ),
            ("offset", "limit")
        );
        assert_eq!(settings.next_link_path, "@odata.nextLink");
        assert_eq!(settings.timeout, Duration::from_secs(30));
        let snake = read(json!({"base_url": "http://x", "auth_type": "api_key", "api_key": "k", "pagination_type": "page", "page_size": 10})).unwrap();
        assert!(matches!(snake.auth, Auth::ApiKey { ref header, .. } if header == "X-API-Key"));
        assert_eq!(
            (
                snake.pagination_param.as_str(),
                snake.size_param.as_str(),
                snake.page_size
            ),
            ("page", "size", 10)
        );
    }

    #[test]
    fn every_problem_is_named_at_once_and_no_value_is_echoed() {
        let problems = read(json!({"baseUrl": "ftp://s3cret-host", "authType": "bearer_token", "paginationType": "pages", "pageSize": "lots-s3cret"})).unwrap_err();
        let text = problems.join("\n");
        for key in ["baseUrl", "apiToken", "paginationType", "pageSize"] {
            assert!(
                text.contains(&format!("integration.config.{key}")),
                "{text}"
            );
        }
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn custom_headers_read_environment_references() {
        let settings =
            read(json!({"baseUrl": "http://x", "customHeaders": "{\"X-Token\": \"Bearer t\"}"}))
                .unwrap();
        assert_eq!(settings.custom_headers[0].0, "X-Token");
        assert_eq!(settings.custom_headers[0].1.expose(), "Bearer t");
        let lookup = |name: &str| (name == "TOKEN").then(|| "t0k".to_owned());
        assert_eq!(
            resolve_env_references("Bearer ${TOKEN} ${UNSET} ${", lookup),
            "Bearer t0k ${UNSET} ${"
        );
    }
}
