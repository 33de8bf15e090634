//! The agent's configuration: a YAML file whose keys mirror Ocean's settings, overridden by
//! Ocean's `OCEAN__*` environment variables (and a `.env` file beside the working directory).
//!
//! Precedence, highest first: command-line flags, the process environment, `.env`, the file.

pub mod env;

use std::fmt;
use std::path::{Path, PathBuf};

use port_agent_core::Secret;
use port_agent_core::mapping::EnvAccess;
use port_agent_core::mapping::budget::Limits;
use port_agent_core::port::{IntegrationIdentity, PortClientConfig};
use port_agent_core::text::without_values;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

pub use env::Override;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub port: PortSettings,
    pub integration: IntegrationSettings,
    /// A local port-app-config file, or `port` to read the mapping from Port's integration object.
    #[serde(default)]
    pub mapping: Option<String>,
    /// Where `blueprints.json` (created at first start when missing) lives.
    #[serde(default = "default_resources_path")]
    pub resources_path: PathBuf,
    #[serde(default)]
    pub initialize_port_resources: Option<bool>,
    /// Whether mappings may read the environment through `env` and `$ENV` (default true).
    #[serde(default)]
    pub allow_environment_variables_jq_access: Option<bool>,
    #[serde(default)]
    pub state: StateSettings,
    #[serde(default)]
    pub event_listener: EventListenerSettings,
    /// Minutes between scheduled resyncs (fractions allowed).
    #[serde(default)]
    pub scheduled_resync_interval: Option<f64>,
    /// The HTTP server of `port-agent run` (health, metrics, the WEBHOOK listener's `/resync`).
    #[serde(default)]
    pub http: HttpSettings,
    /// Bounds on mapping one raw item.
    #[serde(default)]
    pub limits: LimitSettings,
    /// Live events: the `json` integration's push endpoint and the inbox behind it.
    #[serde(default)]
    pub live_events: LiveEventSettings,
}

/// Live events (`POST /integration/webhook`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LiveEventSettings {
    /// Events accepted and not yet applied that the inbox holds before the endpoint answers
    /// 503 with Retry-After (default 10,000).
    #[serde(default)]
    pub inbox_capacity: Option<u64>,
    /// Accept events without a signature when `integration.config.webhookSecret` is not set
    /// (default false: they are refused with 401).
    #[serde(default)]
    pub allow_unsigned_webhooks: bool,
    /// Queued events handled at once, when their ordering keys differ (default 4; Ocean's
    /// `event_workers_count`, whose events had no order across workers).
    #[serde(default)]
    pub workers: Option<u64>,
}

/// What the push endpoint needs from the configuration.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub secret: Option<Secret>,
    pub allow_unsigned: bool,
    pub inbox_capacity: usize,
    pub workers: usize,
}

/// Bounds on mapping one raw item: an item past one fails alone (an item error naming it).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LimitSettings {
    /// Time for one item's expressions, in milliseconds (default 1000).
    #[serde(default)]
    pub item_time_ms: Option<u64>,
    /// Memory one item's evaluation may add, in MiB (default 512).
    #[serde(default)]
    pub item_memory_mib: Option<u64>,
    /// Nesting of arrays and objects in a raw item (default 1000, as Ocean's JSON reader).
    #[serde(default)]
    pub item_nesting: Option<usize>,
}

/// Accepted ranges of the `limits` settings: (key, low, high).
const LIMIT_RANGES: [(&str, u64, u64); 3] = [
    ("limits.item_time_ms", 1, 3_600_000),
    ("limits.item_memory_mib", 16, 1_048_576),
    ("limits.item_nesting", 1, 10_000),
];

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    /// Address and port to serve on (Ocean serves on port 8000).
    #[serde(default = "default_listen", deserialize_with = "string_like")]
    pub listen: String,
    /// When set, `POST /resync` needs `Authorization: Bearer TOKEN`.
    #[serde(default)]
    pub resync_token: Option<Secret>,
    /// Seconds at least between two runs that requests started (`/resync`, Port's request);
    /// requests meanwhile make one run when the time is up (default 10).
    #[serde(default)]
    pub min_resync_interval: Option<u64>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            resync_token: None,
            min_resync_interval: None,
        }
    }
}

fn default_listen() -> String {
    "0.0.0.0:8000".to_owned()
}

fn default_resources_path() -> PathBuf {
    PathBuf::from(".port/resources")
}

#[derive(Debug, Clone, Deserialize)]
pub struct PortSettings {
    #[serde(default = "default_base_url", deserialize_with = "string_like")]
    pub base_url: String,
    #[serde(deserialize_with = "string_like")]
    pub client_id: String,
    pub client_secret: Secret,
    /// Requests in flight at once (default 16).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Client-side quota in requests per second (default: none).
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Retries of a failed call (429, 408, 5xx but 501, dropped connections) before the run
    /// gives up on Port (default 10, as Ocean).
    #[serde(default)]
    pub max_retries: Option<u32>,
}

fn default_base_url() -> String {
    "https://api.getport.io".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
pub struct IntegrationSettings {
    #[serde(deserialize_with = "string_like")]
    pub identifier: String,
    #[serde(rename = "type", deserialize_with = "string_like")]
    pub integration_type: String,
    /// Reported to Port in the User-Agent; defaults to port-agent's own version.
    #[serde(default = "default_version", deserialize_with = "string_like")]
    pub version: String,
    /// The integration's own settings (`OCEAN__INTEGRATION__CONFIG__<NAME>`).
    #[serde(default)]
    pub config: Map<String, Value>,
}

fn default_version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StateSettings {
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Compare the state with Port after every N-th completed resync (`state verify`).
    #[serde(default)]
    pub verify_every: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventListenerSettings {
    #[serde(rename = "type", default)]
    pub listener: ListenerType,
    /// Seconds between polls of Port's resync request (POLLING).
    #[serde(default)]
    pub interval: Option<u64>,
}

/// Ocean's `OCEAN__EVENT_LISTENER__TYPE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ListenerType {
    #[default]
    Polling,
    Webhook,
    Kafka,
    Once,
    WebhooksOnly,
}

impl<'de> Deserialize<'de> for ListenerType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_uppercase().replace('-', "_").as_str() {
            "POLLING" => Ok(Self::Polling),
            "WEBHOOK" => Ok(Self::Webhook),
            "KAFKA" => Ok(Self::Kafka),
            "ONCE" => Ok(Self::Once),
            "WEBHOOKS_ONLY" => Ok(Self::WebhooksOnly),
            _ => Err(serde::de::Error::custom(
                "unknown event listener type; expected POLLING, WEBHOOK, KAFKA, ONCE or WEBHOOKS_ONLY",
            )),
        }
    }
}

/// A string field that also takes a number or boolean (environment values such as a numeric
/// client id arrive parsed).
fn string_like<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, found {}",
            port_agent_core::text::value_kind(&other)
        ))),
    }
}

/// Why the configuration cannot be used. Every message names the file and the key, and the
/// environment variable when one set it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is in the message and not a `source`: a report of the chain would say it twice.
    #[error("cannot read config file {path}: {cause}")]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {cause}")]
    Yaml {
        path: PathBuf,
        cause: serde_yaml_ng::Error,
    },
    #[error("config file {path}: {problems}")]
    Invalid { path: PathBuf, problems: Problems },
}

/// Several problems, reported together so that one run shows them all.
#[derive(Debug)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => f.write_str(one),
            many => {
                write!(f, "{} problems:", many.len())?;
                for problem in many {
                    write!(f, "\n  - {problem}")?;
                }
                Ok(())
            }
        }
    }
}

/// A loaded configuration, with what the environment changed and which keys were ignored.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: AgentConfig,
    pub path: PathBuf,
    pub overrides: Vec<Override>,
    pub ignored_keys: Vec<String>,
}

/// Reads `path`, applies `.env` (from the working directory) and the process environment.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let mut vars: Vec<(String, String)> = match env::read_dotenv(Path::new(".env")) {
        Ok(dotenv) => dotenv.into_iter().collect(),
        Err(_) => Vec::new(),
    };
    vars.extend(std::env::vars());
    load_with(path, vars)
}

/// [`load`] with explicit variables, for tests.
pub fn load_with(
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let mut tree: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_yaml_ng::from_str(&text).map_err(|cause| ConfigError::Yaml {
            path: path.to_owned(),
            cause,
        })?
    };
    let overrides = env::apply(&mut tree, vars);
    let invalid = |problems: Vec<String>| ConfigError::Invalid {
        path: path.to_owned(),
        problems: Problems(problems),
    };

    let mut ignored_keys = Vec::new();
    let mut note_ignored = |p: serde_ignored::Path<'_>| ignored_keys.push(p.to_string());
    let config: AgentConfig =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(tree, &mut note_ignored))
            .map_err(|e| {
                let key = e.path().to_string();
                let by = overrides
                    .iter()
                    .find(|o| key.starts_with(&o.key) || o.key.starts_with(&key))
                    .map(|o| format!(" (set by {})", o.variable))
                    .unwrap_or_default();
                let message = without_values(&e.into_inner().to_string());
                invalid(vec![format!("{key}: {message}{by}")])
            })?;
    let problems = validate(&config);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    for key in &ignored_keys {
        tracing::warn!(file = %path.display(), key, "ignoring an unknown config key");
    }
    Ok(Loaded {
        config,
        path: path.to_owned(),
        overrides,
        ignored_keys,
    })
}

/// Cross-field checks, all reported at once.
fn validate(config: &AgentConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let port = &config.port;
    if !(port.base_url.starts_with("http://") || port.base_url.starts_with("https://")) {
        problems.push("port.base_url: must start with http:// or https://".to_owned());
    }
    if port.client_id.trim().is_empty() {
        problems.push("port.client_id: is empty (OCEAN__PORT__CLIENT_ID)".to_owned());
    }
    if port.client_secret.is_empty() {
        problems.push("port.client_secret: is empty (OCEAN__PORT__CLIENT_SECRET)".to_owned());
    }
    // Every number is bounded here, so that none can overflow a duration or a pool later.
    let counts: [(&str, Option<u64>, u64, u64); 5] = [
        (
            "port.max_concurrency",
            port.max_concurrency.map(|n| n as u64),
            1,
            256,
        ),
        ("port.max_retries", port.max_retries.map(u64::from), 0, 100),
        (
            "event_listener.interval",
            config.event_listener.interval,
            1,
            31_536_000,
        ),
        (
            "state.verify_every",
            config.state.verify_every,
            1,
            1_000_000,
        ),
        (
            "http.min_resync_interval",
            config.http.min_resync_interval,
            0,
            86_400,
        ),
    ];
    for (key, value, low, high) in counts {
        if let Some(value) = value
            && !(low..=high).contains(&value)
        {
            problems.push(format!("{key}: must be between {low} and {high}"));
        }
    }
    let rates: [(&str, Option<f64>, f64, f64, &str); 2] = [
        (
            "port.requests_per_second",
            port.requests_per_second,
            0.001,
            1_000_000.0,
            "requests a second",
        ),
        (
            "scheduled_resync_interval",
            config.scheduled_resync_interval,
            0.001,
            525_600.0,
            "minutes (a year at most)",
        ),
    ];
    for (key, value, low, high, unit) in rates {
        if let Some(value) = value
            && !(value.is_finite() && (low..=high).contains(&value))
        {
            problems.push(format!("{key}: must be between {low} and {high} {unit}"));
        }
    }
    let integration = &config.integration;
    let printable = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '/');
    if !printable(&integration.identifier) {
        problems.push(
            "integration.identifier: must be non-empty printable ASCII without '/' (OCEAN__INTEGRATION__IDENTIFIER)"
                .to_owned(),
        );
    }
    if !printable(&integration.integration_type) {
        problems.push(
            "integration.type: must be non-empty printable ASCII without '/' (OCEAN__INTEGRATION__TYPE)"
                .to_owned(),
        );
    }
    if !printable(&integration.version) {
        problems
            .push("integration.version: must be non-empty printable ASCII without '/'".to_owned());
    }
    let limits = &config.limits;
    for ((key, low, high), value) in LIMIT_RANGES.iter().zip([
        limits.item_time_ms,
        limits.item_memory_mib,
        limits.item_nesting.map(|n| n as u64),
    ]) {
        if let Some(value) = value
            && !(*low..=*high).contains(&value)
        {
            problems.push(format!("{key}: must be between {low} and {high}"));
        }
    }
    if let Some(capacity) = config.live_events.inbox_capacity
        && !(1..=1_000_000).contains(&capacity)
    {
        problems.push("live_events.inbox_capacity: must be between 1 and 1000000".to_owned());
    }
    if let Some(workers) = config.live_events.workers
        && !(1..=64).contains(&workers)
    {
        problems.push("live_events.workers: must be between 1 and 64".to_owned());
    }
    if config
        .integration
        .config
        .get(port_agent_integrations::push::SECRET_SETTING)
        .is_some_and(|v| !v.is_string() || v.as_str() == Some(""))
    {
        problems.push(format!(
            "integration.config.{}: must be a non-empty string",
            port_agent_integrations::push::SECRET_SETTING
        ));
    }
    if config.http.listen.parse::<std::net::SocketAddr>().is_err() {
        problems.push(
            "http.listen: is not an address and port such as 0.0.0.0:8000 (OCEAN__HTTP__LISTEN)"
                .to_owned(),
        );
    }
    problems
}

/// Ocean's switch for `env`/`$ENV` in mappings, read from the environment alone (for commands
/// that take no config file).
pub fn jq_env_access_from_environment() -> EnvAccess {
    let denied = std::env::vars().any(|(k, v)| {
        k.eq_ignore_ascii_case("OCEAN__ALLOW_ENVIRONMENT_VARIABLES_JQ_ACCESS")
            && matches!(v.trim().to_ascii_lowercase().as_str(), "false" | "0" | "no")
    });
    if denied {
        EnvAccess::Denied
    } else {
        EnvAccess::Process
    }
}

impl Loaded {
    /// The folder relative paths in the config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// `path` as written in the config, resolved against the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        let base = self.base_dir();
        if path.is_absolute() || base == Path::new(".") {
            path.to_owned()
        } else {
            base.join(path)
        }
    }

    /// The local mapping file: `mapping`, else `resources_path/port-app-config.yml` (Ocean's
    /// default). `None` with `mapping: port`: the mapping is read from the integration in Port.
    pub fn mapping_path(&self) -> Option<PathBuf> {
        match self.config.mapping.as_deref() {
            Some("port") => None,
            Some(path) => Some(self.resolve(Path::new(path))),
            None => Some(
                self.resolve(&self.config.resources_path)
                    .join("port-app-config.yml"),
            ),
        }
    }

    /// The state file: `state.path`, else systemd's `$STATE_DIRECTORY`, else the XDG state
    /// directory, one file per integration.
    pub fn state_path(&self) -> PathBuf {
        if let Some(path) = &self.config.state.path {
            return self.resolve(path);
        }
        let file = format!("{}.redb", self.config.integration.identifier);
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
            return PathBuf::from(dir).join(file);
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state"))
            })
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("port-agent").join(file)
    }
}

impl AgentConfig {
    /// The bounds each raw item is mapped within.
    pub fn mapping_limits(&self) -> Limits {
        let defaults = Limits::default();
        let limits = &self.limits;
        Limits {
            time: limits
                .item_time_ms
                .map_or(defaults.time, std::time::Duration::from_millis),
            memory_bytes: limits
                .item_memory_mib
                .map_or(defaults.memory_bytes, |mib| mib * 1024 * 1024),
            nesting: limits.item_nesting.unwrap_or(defaults.nesting),
            ..defaults
        }
    }

    /// The push endpoint's secret and bounds.
    pub fn push_settings(&self) -> PushSettings {
        PushSettings {
            secret: self
                .integration
                .config
                .get(port_agent_integrations::push::SECRET_SETTING)
                .and_then(|v| v.as_str())
                .map(|s| Secret::new(s.to_owned())),
            allow_unsigned: self.live_events.allow_unsigned_webhooks,
            inbox_capacity: self.live_events.inbox_capacity.unwrap_or(10_000) as usize,
            workers: self.live_events.workers.unwrap_or(4) as usize,
        }
    }

    /// What mappings see as `$ENV`.
    pub fn jq_env_access(&self) -> EnvAccess {
        match self.allow_environment_variables_jq_access {
            Some(false) => EnvAccess::Denied,
            _ => EnvAccess::Process,
        }
    }

    /// The Port client settings this configuration describes.
    pub fn port_client_config(&self) -> PortClientConfig {
        let identity = IntegrationIdentity {
            integration_type: self.integration.integration_type.clone(),
            version: self.integration.version.clone(),
            identifier: self.integration.identifier.clone(),
        };
        let mut config = PortClientConfig::new(
            self.port.base_url.clone(),
            self.port.client_id.clone(),
            self.port.client_secret.clone(),
            identity,
        );
        if let Some(n) = self.port.max_concurrency {
            config.max_concurrency = n;
        }
        config.requests_per_second = self.port.requests_per_second;
        if let Some(retries) = self.port.max_retries {
            config.retry.max_attempts = retries.saturating_add(1);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    const MINIMAL: &str = "port: {client_id: ID, client_secret: SECRET}\nintegration: {identifier: my-services, type: json}\n";

    #[test]
    fn the_documented_example_loads() {
        let file = write(
            r#"
port: {base_url: http://127.0.0.1:5555, client_id: ID, client_secret: SECRET}
integration:
  identifier: my-services
  type: json
  config: {kinds: {service: ./data/services.jsonl}}
mapping: ./port-app-config.yaml
resources_path: ./.port/resources
state: {path: ./state.redb}
event_listener: {type: ONCE}
scheduled_resync_interval: 60
"#,
        );
        let loaded = load_with(file.path(), Vec::new()).unwrap();
        let c = loaded.config;
        assert_eq!(c.port.base_url, "http://127.0.0.1:5555");
        assert_eq!(
            c.integration.config["kinds"]["service"],
            "./data/services.jsonl"
        );
        assert_eq!(c.event_listener.listener, ListenerType::Once);
        assert_eq!(c.state.path.as_deref(), Some(Path::new("./state.redb")));
        assert_eq!(c.scheduled_resync_interval, Some(60.0));
        assert!(loaded.ignored_keys.is_empty());
    }

    #[test]
    fn environment_overrides_file_and_numeric_ids_stay_text() {
        let file = write(MINIMAL);
        let vars = vec![
            ("OCEAN__PORT__CLIENT_ID".to_owned(), "12345".to_owned()),
            (
                "OCEAN__PORT__BASE_URL".to_owned(),
                "http://localhost:9".to_owned(),
            ),
            ("OCEAN__EVENT_LISTENER__TYPE".to_owned(), "once".to_owned()),
        ];
        let loaded = load_with(file.path(), vars).unwrap();
        assert_eq!(loaded.config.port.client_id, "12345");
        assert_eq!(loaded.config.port.base_url, "http://localhost:9");
        assert_eq!(loaded.config.event_listener.listener, ListenerType::Once);
        assert_eq!(loaded.overrides.len(), 3);
    }

    #[test]
    fn a_bad_value_names_the_key_and_the_variable() {
        let file = write(MINIMAL);
        let vars = vec![(
            "OCEAN__SCHEDULED_RESYNC_INTERVAL".to_owned(),
            "soon".to_owned(),
        )];
        let message = load_with(file.path(), vars).unwrap_err().to_string();
        assert!(message.contains("scheduled_resync_interval"), "{message}");
        assert!(
            message.contains("OCEAN__SCHEDULED_RESYNC_INTERVAL"),
            "{message}"
        );
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
    }

    #[test]
    fn the_http_address_is_checked_and_settable_from_the_environment() {
        let file = write(&format!("{MINIMAL}http: {{listen: 'localhost'}}\n"));
        let message = load_with(file.path(), Vec::new()).unwrap_err().to_string();
        assert!(message.contains("http.listen"), "{message}");
        let loaded = load_with(
            file.path(),
            vec![("OCEAN__HTTP__LISTEN".into(), "127.0.0.1:9000".into())],
        )
        .unwrap();
        assert_eq!(loaded.config.http.listen, "127.0.0.1:9000");
    }

    #[test]
    fn all_problems_are_reported_at_once_without_the_secret() {
        let file = write(
            "port: {base_url: ftp://x, client_id: '', client_secret: hunter2}\nintegration: {identifier: 'a b', type: json}\n",
        );
        let message = load_with(file.path(), Vec::new()).unwrap_err().to_string();
        assert!(message.contains("3 problems"), "{message}");
        assert!(
            message.contains("port.base_url")
                && message.contains("port.client_id")
                && message.contains("integration.identifier")
        );
        assert!(!message.contains("hunter2"));
    }

    #[test]
    fn unknown_top_level_key_is_refused_and_unknown_nested_key_is_ignored() {
        let typo = write(&format!("{MINIMAL}scheduled_resync_intervall: 5\n"));
        let message = load_with(typo.path(), Vec::new()).unwrap_err().to_string();
        assert!(message.contains("scheduled_resync_intervall"), "{message}");

        let nested = write(
            "port: {client_id: ID, client_secret: S, ingest_url: x}\nintegration: {identifier: a, type: json}\n",
        );
        let loaded = load_with(nested.path(), Vec::new()).unwrap();
        assert_eq!(loaded.ignored_keys, ["port.ingest_url"]);
    }

    /// Regression: each of these passed validation, then panicked (a duration or a pool
    /// overflowed).
    #[test]
    fn every_number_is_bounded_at_load_naming_the_key() {
        for (setting, key) in [
            (
                "event_listener: {interval: 18446744073709551615}",
                "event_listener.interval",
            ),
            (
                "scheduled_resync_interval: 1e20",
                "scheduled_resync_interval",
            ),
            (
                "port: {client_id: a, client_secret: b, max_concurrency: 18446744073709551615}",
                "port.max_concurrency",
            ),
            (
                "port: {client_id: a, client_secret: b, requests_per_second: 1e-300}",
                "port.requests_per_second",
            ),
            (
                "port: {client_id: a, client_secret: b, max_retries: 4000000000}",
                "port.max_retries",
            ),
            ("state: {verify_every: 0}", "state.verify_every"),
            ("limits: {item_time_ms: 0}", "limits.item_time_ms"),
        ] {
            let text = if setting.starts_with("port:") {
                format!("{setting}\nintegration: {{identifier: a, type: json}}\n")
            } else {
                format!("{MINIMAL}{setting}\n")
            };
            let file = write(&text);
            let message = load_with(file.path(), Vec::new()).unwrap_err().to_string();
            assert!(message.contains(key), "{setting}: {message}");
        }
    }

    /// Regression: a malformed `OCEAN__PORT` JSON value was echoed whole, its secret in it.
    #[test]
    fn a_malformed_section_variable_is_never_echoed() {
        let file = write(MINIMAL);
        let vars = vec![(
            "OCEAN__PORT".to_owned(),
            r#"{"client_id": "x", "client_secret": "s3cr3t-value",}"#.to_owned(),
        )];
        let message = load_with(file.path(), vars).unwrap_err().to_string();
        assert!(
            message.contains("port") && message.contains("OCEAN__PORT"),
            "{message}"
        );
        assert!(!message.contains("s3cr3t"), "{message}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let message = load_with(Path::new("/no/such/agent.yaml"), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(message.contains("/no/such/agent.yaml"), "{message}");
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::*;

        /// Marks a value that must never come back in an error.
        const MARK: &str = "Zq7-never-echo";

        /// A value of any shape, sometimes carrying the mark.
        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e30f64..1e30).prop_map(Value::from),
                "[a-z0-9:/.@ ]{0,12}".prop_map(Value::from),
                Just(Value::from(format!("https://user:{MARK}@x"))),
                Just(Value::from(MARK)),
            ];
            leaf.prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Config keys, and values of any shape under them.
        fn config() -> impl Strategy<Value = Value> {
            let keys = [
                "port.base_url",
                "port.client_id",
                "port.client_secret",
                "port.max_concurrency",
                "port.requests_per_second",
                "port.max_retries",
                "integration.identifier",
                "integration.type",
                "integration.config",
                "mapping",
                "state.path",
                "state.verify_every",
                "event_listener.type",
                "event_listener.interval",
                "scheduled_resync_interval",
                "http.listen",
                "http.resync_token",
                "http.min_resync_interval",
                "limits.item_time_ms",
                "limits.item_memory_mib",
                "limits.item_nesting",
            ];
            proptest::collection::vec((proptest::sample::select(keys.to_vec()), value()), 0..8)
                .prop_map(|pairs| {
                    let mut config = json!({
                        "port": {"client_id": "id", "client_secret": MARK},
                        "integration": {"identifier": "i", "type": "json"},
                    });
                    for (key, value) in pairs {
                        let (section, field) = key.split_once('.').unwrap_or((key, ""));
                        if field.is_empty() {
                            config[section] = value;
                        } else if config[section].is_object() || config[section].is_null() {
                            config[section][field] = value;
                        }
                    }
                    config
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Whatever the file and the environment hold: no panic, and an error names the
            /// file and never a value.
            #[test]
            fn any_config_loads_or_is_refused_without_echoing_a_value(
                config in config(),
                variable in proptest::option::of(("port|http|state|limits|event_listener", value())),
            ) {
                let file = write(&serde_yaml_ng::to_string(&config).unwrap());
                let vars: Vec<(String, String)> = variable
                    .map(|(section, value)| {
                        let text = match value {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        vec![(format!("OCEAN__{}", section.to_uppercase()), text)]
                    })
                    .unwrap_or_default();
                match load_with(file.path(), vars) {
                    Ok(loaded) => {
                        // Accepted numbers are usable: the durations the service builds fit.
                        let c = &loaded.config;
                        let _ = c.mapping_limits();
                        if let Some(minutes) = c.scheduled_resync_interval {
                            let _ = std::time::Instant::now()
                                + std::time::Duration::from_secs_f64(minutes * 60.0);
                        }
                        if let Some(seconds) = c.event_listener.interval {
                            let _ = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
                        }
                        let _ = c.port_client_config();
                    }
                    Err(e) => {
                        let message = e.to_string();
                        prop_assert!(message.contains(&file.path().display().to_string()), "{}", message);
                        prop_assert!(!message.contains(MARK), "{}", message);
                    }
                }
            }

            #[test]
            fn any_text_as_a_config_file_is_refused_clearly(text in "\\PC{0,200}") {
                let file = write(&text);
                if let Err(e) = load_with(file.path(), Vec::new()) {
                    prop_assert!(e.to_string().contains(&file.path().display().to_string()));
                }
            }
        }
    }
}
