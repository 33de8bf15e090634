//! The mapping file, `port-app-config.yaml`, in Ocean's schema.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

/// The whole mapping: options and resources, as Ocean reads them.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortAppConfig {
    #[serde(default = "yes")]
    pub enable_merge_entity: bool,
    #[serde(default = "yes")]
    pub delete_dependent_entities: bool,
    #[serde(default = "yes")]
    pub create_missing_related_entities: bool,
    #[serde(default = "default_threshold")]
    pub entity_deletion_threshold: f64,
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    /// Top-level keys of the integration's own (GitHub's `repositoryType`), handed to its
    /// fetches.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn yes() -> bool {
    true
}

fn default_threshold() -> f64 {
    0.9
}

/// One `resources[]` entry. The same kind may appear several times; each is its own resource.
#[derive(Debug, Clone, Deserialize)]
pub struct ResourceConfig {
    pub kind: String,
    pub selector: Selector,
    pub port: PortResourceConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Selector {
    /// jq; must yield a boolean.
    pub query: String,
    /// Integration-specific selector keys, kept for the integration to read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortResourceConfig {
    pub entity: EntityConfig,
    #[serde(default)]
    pub items_to_parse: Option<String>,
    #[serde(default = "default_items_name")]
    pub items_to_parse_name: String,
    #[serde(default = "yes")]
    pub items_to_parse_top_level_transform: bool,
}

fn default_items_name() -> String {
    "item".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
pub struct EntityConfig {
    pub mappings: EntityMappings,
}

/// jq expressions for each field. `identifier`, `team` and relation values may instead be
/// search queries `{combinator, rules}` whose leaves are jq expressions.
#[derive(Debug, Clone, Deserialize)]
pub struct EntityMappings {
    pub identifier: Template,
    #[serde(default)]
    pub title: Option<Expression>,
    pub blueprint: Expression,
    #[serde(default)]
    pub icon: Option<Expression>,
    #[serde(default)]
    pub team: Option<Template>,
    /// `None` when the mapping does not declare them; `properties: {}` is sent as it is.
    #[serde(default)]
    pub properties: Option<Map<String, Value>>,
    #[serde(default)]
    pub relations: Option<Map<String, Value>>,
}

/// A jq expression as written in the file (YAML numbers and booleans are read as their text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression(pub String);

impl<'de> Deserialize<'de> for Expression {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::String(s) => Ok(Self(s)),
            Value::Number(n) => Ok(Self(n.to_string())),
            Value::Bool(b) => Ok(Self(b.to_string())),
            _ => Err(serde::de::Error::custom(
                "expected a jq expression (a string)",
            )),
        }
    }
}

/// A mapping value: a jq expression, or an object (search query) whose leaves are expressions.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Expr(String),
    Object(Vec<(String, Template)>),
    List(Vec<Template>),
}

impl Template {
    pub fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(s) => Ok(Template::Expr(s.clone())),
            Value::Number(n) => Ok(Template::Expr(n.to_string())),
            Value::Bool(b) => Ok(Template::Expr(b.to_string())),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| Template::from_value(v).map(|t| (k.clone(), t)))
                .collect::<Result<_, _>>()
                .map(Template::Object),
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::Object(_) => Template::from_value(item),
                    other => Err(format!(
                        "a list in a mapping holds objects (search rules), found {other}"
                    )),
                })
                .collect::<Result<_, _>>()
                .map(Template::List),
            Value::Null => Err("expected a jq expression or a search query, found null".to_owned()),
        }
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Template::from_value(&value).map_err(serde::de::Error::custom)
    }
}

/// Why a mapping file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum MappingFileError {
    // The cause is in the message and not a `source`: a report of the chain would say it twice.
    #[error("cannot read mapping file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("mapping file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl PortAppConfig {
    /// Reads a `port-app-config.yaml` (or .json) file.
    pub fn from_file(path: &Path) -> Result<Self, MappingFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|cause| MappingFileError::Read {
            path: shown.clone(),
            cause,
        })?;
        Self::from_yaml(&text).map_err(|message| MappingFileError::Invalid {
            path: shown,
            message,
        })
    }

    /// Parses YAML (JSON is YAML), naming the field that is wrong.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
        Self::from_value(value)
    }

    /// From the JSON Port keeps on the integration object.
    pub fn from_value(value: Value) -> Result<Self, String> {
        let config: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = crate::text::without_values(&e.into_inner().to_string());
            if path == "." {
                format!("{message} (a mapping is a map with `resources`)")
            } else {
                format!("{path}: {message}")
            }
        })?;
        if !(0.0..=1.0).contains(&config.entity_deletion_threshold) {
            return Err("entityDeletionThreshold: must be between 0 and 1".to_owned());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITHUB_LIKE: &str = r#"
deleteDependentEntities: true
createMissingRelatedEntities: false
resources:
  - kind: repository
    selector:
      query: 'true'
      includedFiles: ["README.md"]
    port:
      entity:
        mappings:
          identifier: .name
          title: .name
          blueprint: '"githubRepository"'
          properties:
            readme: file://README.md
            url: .html_url
            stars: .stargazers_count
          relations:
            owner:
              combinator: '"and"'
              rules:
                - property: '"$identifier"'
                  operator: '"="'
                  value: .owner.login
  - kind: repository
    selector: {query: .archived}
    port:
      itemsToParse: .topics
      entity:
        mappings: {identifier: .item, blueprint: '"topic"'}
"#;

    #[test]
    fn reads_ocean_mappings_with_defaults() {
        let config = PortAppConfig::from_yaml(GITHUB_LIKE).unwrap();
        assert!(
            config.enable_merge_entity
                && config.delete_dependent_entities
                && !config.create_missing_related_entities
        );
        assert_eq!(config.entity_deletion_threshold, 0.9);
        assert_eq!(config.resources.len(), 2);
        let first = &config.resources[0];
        assert_eq!(first.selector.extra["includedFiles"][0], "README.md");
        assert_eq!(
            first.port.entity.mappings.blueprint,
            Expression("\"githubRepository\"".into())
        );
        assert!(matches!(
            &first.port.entity.mappings.relations.as_ref().unwrap()["owner"],
            Value::Object(_)
        ));
        let second = &config.resources[1];
        assert_eq!(second.port.items_to_parse.as_deref(), Some(".topics"));
        assert_eq!(second.port.items_to_parse_name, "item");
        assert!(second.port.items_to_parse_top_level_transform);
    }

    #[test]
    fn schema_errors_name_the_field() {
        let missing = "resources:\n  - kind: x\n    selector: {query: 'true'}\n    port: {entity: {mappings: {identifier: .id}}}\n";
        let message = PortAppConfig::from_yaml(missing).unwrap_err();
        assert!(
            message.contains("resources[0].port.entity.mappings") && message.contains("blueprint"),
            "{message}"
        );
        let threshold = "entityDeletionThreshold: 2\nresources: []\n";
        assert!(
            PortAppConfig::from_yaml(threshold)
                .unwrap_err()
                .contains("entityDeletionThreshold")
        );
    }
}
