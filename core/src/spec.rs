//! An integration's `.port/spec.yaml`, Ocean's format: its `configurations` are enforced on
//! `integration.config` at load (required, type, `enum`, default), all problems at once, each
//! naming the key and never its value; `dependencies` (required when another setting has a
//! value), which Ocean leaves to its UI, are checked by `config validate`.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::text::value_text;

/// The parts of `spec.yaml` port-agent reads (Ocean's UI keys are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct IntegrationSpec {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub configurations: Vec<Configuration>,
}

/// One setting.
#[derive(Debug, Clone, Deserialize)]
pub struct Configuration {
    pub name: String,
    #[serde(rename = "type")]
    pub value_type: ValueType,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<Value>,
    #[serde(default)]
    pub sensitive: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "enum")]
    pub allowed: Option<Vec<Value>>,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
}

/// Ocean's setting types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    String,
    Url,
    Integer,
    Boolean,
    Object,
    Array,
}

impl ValueType {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::String => "string",
            ValueType::Url => "url",
            ValueType::Integer => "integer",
            ValueType::Boolean => "boolean",
            ValueType::Object => "object",
            ValueType::Array => "array",
        }
    }
}

/// `required` when setting `on` has the value `when` names.
#[derive(Debug, Clone, Deserialize)]
pub struct Dependency {
    pub on: String,
    pub when: Condition,
    pub then: Consequence,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Condition {
    #[serde(default)]
    pub equals: Option<Value>,
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Consequence {
    #[serde(default)]
    pub required: bool,
}

/// Names compare without case and `_`/`-`: `OCEAN__INTEGRATION__CONFIG__BASE_URL` sets
/// `baseUrl`, as Ocean's decamelizing does.
pub fn same_name(a: &str, b: &str) -> bool {
    let normal = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    normal(a) == normal(b)
}

/// A value of type `value_type`, from what the user gave (environment variables give text).
fn coerce(value: &Value, value_type: ValueType) -> Option<Value> {
    match (value_type, value) {
        (ValueType::String, Value::String(_)) => Some(value.clone()),
        (ValueType::String, Value::Number(_) | Value::Bool(_)) => {
            Some(Value::String(value.to_string()))
        }
        (ValueType::Url, Value::String(s))
            if s.starts_with("http://") || s.starts_with("https://") =>
        {
            // Ocean strips a trailing `/` from url settings.
            Some(Value::String(s.trim_end_matches('/').to_owned()))
        }
        (ValueType::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(value.clone()),
        (ValueType::Integer, Value::String(s)) => s.trim().parse::<i64>().ok().map(Value::from),
        (ValueType::Boolean, Value::Bool(_)) => Some(value.clone()),
        (ValueType::Boolean, Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        (ValueType::Object, Value::Object(_)) | (ValueType::Array, Value::Array(_)) => {
            Some(value.clone())
        }
        // Object and array settings may come as JSON text.
        (ValueType::Object | ValueType::Array, Value::String(s)) => {
            let parsed: Value = serde_json::from_str(s).ok()?;
            let fits = match value_type {
                ValueType::Object => parsed.is_object(),
                _ => parsed.is_array(),
            };
            fits.then_some(parsed)
        }
        _ => None,
    }
}

impl IntegrationSpec {
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_yaml_ng::from_str(text).map_err(|e| format!("spec.yaml: {e}"))
    }

    /// The setting named `name` (in any spelling).
    pub fn configuration(&self, name: &str) -> Option<&Configuration> {
        self.configurations
            .iter()
            .find(|c| same_name(&c.name, name))
    }

    /// `config` checked and completed: each setting under its spec name, of its type,
    /// defaults filled in; keys the spec does not name are kept as they are (an integration may
    /// read more). Every problem at once.
    pub fn apply(&self, config: &Map<String, Value>) -> Result<Map<String, Value>, Vec<String>> {
        let mut out = Map::new();
        let mut problems = Vec::new();
        for (key, value) in config {
            if self.configuration(key).is_none() {
                out.insert(key.clone(), value.clone());
            }
        }
        for setting in &self.configurations {
            let given = config
                .iter()
                .find(|(key, value)| same_name(key, &setting.name) && !value.is_null())
                .map(|(_, value)| value);
            let key = format!("integration.config.{}", setting.name);
            let Some(given) = given.or(setting.default.as_ref()) else {
                if setting.required {
                    problems.push(format!("{key}: required"));
                }
                continue;
            };
            let Some(value) = coerce(given, setting.value_type) else {
                problems.push(format!("{key}: expected {}", describe(setting.value_type)));
                continue;
            };
            if let Some(allowed) = &setting.allowed
                && !allowed.contains(&value)
            {
                let names: Vec<String> = allowed.iter().map(value_text).collect();
                problems.push(format!("{key}: expected one of {}", names.join(", ")));
                continue;
            }
            out.insert(setting.name.clone(), value);
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(problems)
        }
    }

    /// Settings required by another's value (`dependencies`) and missing from `config` (as
    /// completed by [`IntegrationSpec::apply`]).
    pub fn check_dependencies(&self, config: &Map<String, Value>) -> Vec<String> {
        let mut problems = Vec::new();
        for setting in &self.configurations {
            if config.get(&setting.name).is_some_and(|v| !v.is_null()) {
                continue;
            }
            for dependency in setting.dependencies.iter().filter(|d| d.then.required) {
                let Some(value) = self
                    .configuration(&dependency.on)
                    .and_then(|on| config.get(&on.name))
                else {
                    continue;
                };
                let applies = dependency.when.equals.as_ref() == Some(value)
                    || dependency
                        .when
                        .one_of
                        .as_ref()
                        .is_some_and(|set| set.contains(value));
                if applies {
                    let shown = value_text(value);
                    problems.push(format!(
                        "integration.config.{}: required when {} is {shown}",
                        setting.name, dependency.on
                    ));
                }
            }
        }
        problems
    }
}

fn describe(value_type: ValueType) -> &'static str {
    match value_type {
        ValueType::String => "text",
        ValueType::Url => "an http:// or https:// URL",
        ValueType::Integer => "a whole number",
        ValueType::Boolean => "true or false",
        ValueType::Object => "an object (or its JSON text)",
        ValueType::Array => "an array (or its JSON text)",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SPEC: &str = r#"
title: Demo
configurations:
  - {name: baseUrl, type: url, required: true}
  - {name: authType, type: string, default: none, enum: [none, bearer_token]}
  - name: apiToken
    type: string
    sensitive: true
    dependencies: [{on: authType, when: {equals: bearer_token}, then: {required: true}}]
  - {name: pageSize, type: integer, default: 100}
  - {name: verifySsl, type: boolean, default: true}
  - {name: extraHeaders, type: object}
  - {name: projects, type: array}
"#;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn settings_are_typed_defaulted_and_renamed_to_the_spec() {
        let spec = IntegrationSpec::from_yaml(SPEC).unwrap();
        let applied = spec
            .apply(&map(json!({"base_url": "https://x.example/", "PAGE_SIZE": "50", "verify_ssl": "false", "extraHeaders": "{\"a\": \"b\"}", "projects": ["p"], "other": 1})))
            .unwrap();
        assert_eq!(
            Value::Object(applied),
            json!({"baseUrl": "https://x.example", "authType": "none", "pageSize": 50, "verifySsl": false, "extraHeaders": {"a": "b"}, "projects": ["p"], "other": 1})
        );
    }

    #[test]
    fn every_problem_is_named_and_no_value_is_repeated() {
        let spec = IntegrationSpec::from_yaml(SPEC).unwrap();
        let problems = spec
            .apply(&map(json!({"authType": "s3cret-mode", "pageSize": "many-s3cret", "extraHeaders": "[1]", "verifySsl": "perhaps"})))
            .unwrap_err();
        let text = problems.join("\n");
        for key in [
            "baseUrl: required",
            "authType: expected one of none, bearer_token",
            "pageSize: expected a whole number",
            "extraHeaders: expected an object",
            "verifySsl: expected true or false",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn dependencies_require_a_setting_when_another_has_a_value() {
        let spec = IntegrationSpec::from_yaml(SPEC).unwrap();
        let bearer = spec
            .apply(&map(
                json!({"baseUrl": "http://x", "authType": "bearer_token"}),
            ))
            .unwrap();
        assert_eq!(
            spec.check_dependencies(&bearer),
            ["integration.config.apiToken: required when authType is bearer_token"]
        );
        let none = spec.apply(&map(json!({"baseUrl": "http://x"}))).unwrap();
        assert!(spec.check_dependencies(&none).is_empty());
    }
}
