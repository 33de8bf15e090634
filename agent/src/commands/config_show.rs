//! `port-agent config show`: the configuration in effect, each value with where it came from
//! (the file, an environment variable, a default), secrets redacted.

use std::io::Write;
use std::path::Path;

use port_agent_core::spec::IntegrationSpec;
use port_agent_core::text::value_text;
use serde_json::{Map, Value};

use crate::Failure;
use crate::commands::resync::default_mapping;
use crate::config::{self, env};

/// Agent settings that hold credentials.
const SECRET_KEYS: &[&str] = &["port.client_secret", "http.resync_token"];

/// Whether the value at `key` is a secret: a known one, one the integration's spec marks
/// sensitive, or one whose name says so.
fn is_secret(key: &str, spec: Option<&IntegrationSpec>) -> bool {
    if SECRET_KEYS.contains(&key) {
        return true;
    }
    if let Some(name) = key.strip_prefix("integration.config.")
        && let Some(setting) = spec.and_then(|s| s.configuration(name))
        && setting.sensitive
    {
        return true;
    }
    let last: String = key
        .rsplit('.')
        .next()
        .unwrap_or(key)
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    [
        "secret",
        "token",
        "password",
        "apikey",
        "privatekey",
        "credentials",
    ]
    .iter()
    .any(|word| last.ends_with(word))
}

/// Each leaf of `value` as (dotted key, value).
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let key = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(&key, value, out);
            }
        }
        other => out.push((prefix.to_owned(), other.clone())),
    }
}

pub fn show(config_path: &Path) -> Result<(), Failure> {
    let loaded = config::load(config_path)?;
    let text = std::fs::read_to_string(config_path).map_err(|e| Failure::Config(e.into()))?;
    let mut tree: Value = serde_yaml_ng::from_str::<Value>(&text)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(Map::new()));
    let mut vars: Vec<(String, String)> = env::read_dotenv(Path::new(".env"))
        .map(|d| d.into_iter().collect())
        .unwrap_or_default();
    vars.extend(std::env::vars());
    let overrides = env::apply(&mut tree, vars);
    let built_in = port_agent_integrations::built_in(&loaded.config.integration.integration_type);
    let spec = built_in.and_then(|b| IntegrationSpec::from_yaml(b.spec).ok());

    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut given = Vec::new();
    leaves("", &tree, &mut given);
    for (key, value) in &given {
        let source = overrides
            .iter()
            .find(|o| key == &o.key || key.starts_with(&format!("{}.", o.key)))
            .map_or_else(|| "file".to_owned(), |o| format!("env {}", o.variable));
        rows.push((key.clone(), value_text(value), source));
    }
    // What the agent fills in when the file and the environment say nothing.
    let has = |key: &str| {
        given
            .iter()
            .any(|(k, _)| k == key || k.starts_with(&format!("{key}.")))
    };
    let mut defaulted = vec![
        (
            "state.path".to_owned(),
            loaded.state_path().display().to_string(),
        ),
        ("http.listen".to_owned(), loaded.config.http.listen.clone()),
        (
            "resources_path".to_owned(),
            loaded
                .resolve(&loaded.config.resources_path)
                .display()
                .to_string(),
        ),
        (
            "mapping".to_owned(),
            match (loaded.mapping_path(), default_mapping(&loaded)) {
                (None, _) => "port".to_owned(),
                (Some(path), Some(built_in)) => format!(
                    "the {} integration's default (no file at {})",
                    built_in.name,
                    path.display()
                ),
                (Some(path), None) => path.display().to_string(),
            },
        ),
    ];
    if let Some(spec) = &spec {
        for setting in &spec.configurations {
            let key = format!("integration.config.{}", setting.name);
            let named = given.iter().any(|(k, _)| {
                k.strip_prefix("integration.config.")
                    .is_some_and(|n| port_agent_core::spec::same_name(n, &setting.name))
            });
            if let (false, Some(default)) = (named, &setting.default) {
                defaulted.push((key, value_text(default)));
            }
        }
    }
    for (key, value) in defaulted {
        if !has(&key) {
            rows.push((key, value, "default".to_owned()));
        }
    }
    rows.sort();
    let width = rows.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
    let mut out = std::io::stdout();
    let mut text = format!(
        "# {} (file, environment, defaults)\n",
        config_path.display()
    );
    for (key, value, source) in rows {
        let value = if is_secret(&key, spec.as_ref()) {
            "[redacted]".to_owned()
        } else {
            value
        };
        text.push_str(&format!("{key:<width$} = {value}    # {source}\n"));
    }
    out.write_all(text.as_bytes())
        .map_err(|e| Failure::Run(e.into()))
}
