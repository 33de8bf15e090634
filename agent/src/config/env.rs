//! Ocean's environment variables: `OCEAN__` prefix, `__` nests, names case-insensitive, and a
//! whole section may be given as JSON (`OCEAN__PORT='{"client_id": ...}'`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

const PREFIX: &str = "OCEAN__";

/// Top-level keys that environment variables may set. Ocean has more settings than port-agent;
/// variables for those are ignored rather than refused, so an Ocean deployment's environment
/// works unchanged.
pub const KNOWN_SECTIONS: &[&str] = &[
    "port",
    "integration",
    "mapping",
    "resources_path",
    "state",
    "event_listener",
    "scheduled_resync_interval",
    "initialize_port_resources",
    "allow_environment_variables_jq_access",
    "http",
];

/// One variable that set a config key, kept to name it in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub variable: String,
    /// Dotted path of the key it set, e.g. `port.client_id`.
    pub key: String,
}

/// Names compare without case and without `_`/`-`, so `JIRA_HOST` finds `jiraHost` and
/// `CLIENT_ID` finds `client_id`, as Ocean's decamelizing does.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Environment text as a config value: JSON objects, arrays, numbers and booleans are parsed,
/// anything else stays a string. String-typed fields accept numbers back as text.
fn parse_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(value @ (Value::Object(_) | Value::Array(_) | Value::Bool(_) | Value::Number(_))) => {
            value
        }
        _ => Value::String(text.to_owned()),
    }
}

/// Applies every `OCEAN__*` variable in `vars` to `config` and returns what was set.
/// Later sources win: pass `.env` variables first, then the process environment.
pub fn apply(
    config: &mut Value,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Vec<Override> {
    if !config.is_object() {
        *config = Value::Object(Map::new());
    }
    let mut applied = Vec::new();
    for (variable, text) in vars {
        let Some(rest) = variable
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .map(|_| &variable[PREFIX.len()..])
        else {
            continue;
        };
        let segments: Vec<String> = rest
            .split("__")
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase)
            .collect();
        let Some(first) = segments.first() else {
            continue;
        };
        if !KNOWN_SECTIONS
            .iter()
            .any(|k| normalize(k) == normalize(first))
        {
            tracing::debug!(
                variable,
                "ignoring an Ocean setting port-agent does not use"
            );
            continue;
        }
        let key = set_path(config, &segments, parse_value(&text));
        applied.push(Override { variable, key });
    }
    applied
}

/// Sets `value` at `segments`, matching existing keys loosely, creating objects on the way.
/// Returns the dotted path of the keys actually used.
fn set_path(root: &mut Value, segments: &[String], value: Value) -> String {
    let mut node = root;
    let mut path = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let object = node.as_object_mut().expect("made an object above");
        let key = object
            .keys()
            .find(|k| normalize(k) == normalize(segment))
            .cloned()
            .unwrap_or_else(|| segment.clone());
        path.push(key.clone());
        if i + 1 == segments.len() {
            // A JSON object for a whole section merges into what the file set.
            match (object.get_mut(&key), value) {
                (Some(Value::Object(existing)), Value::Object(new)) => existing.extend(new),
                (_, value) => {
                    object.insert(key, value);
                }
            }
            break;
        }
        node = object
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    path.join(".")
}

/// The `KEY=VALUE` lines of a `.env` file (comments, blank lines and `export ` allowed,
/// values optionally quoted). Only `OCEAN__` variables are returned.
pub fn read_dotenv(path: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)?;
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        if key.len() >= PREFIX.len() && key[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
            vars.insert(key.to_owned(), value.to_owned());
        }
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nested_case_insensitive_keys_override_the_file() {
        let mut config = json!({"port": {"client_id": "file-id", "base_url": "http://file"}, "integration": {"config": {"jiraHost": "a"}}});
        let set = apply(
            &mut config,
            vars(&[
                ("OCEAN__PORT__CLIENT_ID", "env-id"),
                ("ocean__integration__config__JIRA_HOST", "b"),
                ("OCEAN__INTEGRATION__IDENTIFIER", "svc"),
                ("OCEAN__SCHEDULED_RESYNC_INTERVAL", "30"),
                ("OCEAN__SOMETHING_ELSE", "x"),
                ("PATH", "/bin"),
            ]),
        );
        assert_eq!(config["port"]["client_id"], "env-id");
        assert_eq!(config["port"]["base_url"], "http://file");
        assert_eq!(config["integration"]["config"]["jiraHost"], "b");
        assert_eq!(config["integration"]["identifier"], "svc");
        assert_eq!(config["scheduled_resync_interval"], 30);
        assert!(config.get("something_else").is_none());
        assert_eq!(
            set[1],
            Override {
                variable: "ocean__integration__config__JIRA_HOST".into(),
                key: "integration.config.jiraHost".into()
            }
        );
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn a_whole_section_may_be_json() {
        let mut config = json!({"port": {"base_url": "http://file"}});
        apply(
            &mut config,
            vars(&[("OCEAN__PORT", r#"{"client_id": "j", "client_secret": "s"}"#)]),
        );
        assert_eq!(
            config["port"],
            json!({"base_url": "http://file", "client_id": "j", "client_secret": "s"})
        );
    }

    #[test]
    fn dotenv_lines_are_parsed() {
        let dir = std::env::temp_dir().join(format!("port-agent-dotenv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(".env");
        std::fs::write(&path, "# comment\nexport OCEAN__PORT__CLIENT_ID=\"abc\"\nOTHER=1\nOCEAN__INTEGRATION__TYPE='json'\n\n").unwrap();
        let vars = read_dotenv(&path).unwrap();
        assert_eq!(
            vars.get("OCEAN__PORT__CLIENT_ID").map(String::as_str),
            Some("abc")
        );
        assert_eq!(
            vars.get("OCEAN__INTEGRATION__TYPE").map(String::as_str),
            Some("json")
        );
        assert_eq!(vars.len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
