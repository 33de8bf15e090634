//! The JSON shapes of Port's API that port-agent reads and writes.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::Secret;

/// An entity as port-agent sends it to Port: only the fields the mapping produced, nulls kept.
///
/// `identifier` (and `team`, and relation values) may be a search query `{combinator, rules}`
/// instead of a literal, which Port resolves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub identifier: Value,
    pub blueprint: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub title: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub icon: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub team: Option<Value>,
    /// Sent when the mapping declares it, even empty (`properties: {}`), as Ocean sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relations: Option<Map<String, Value>>,
}

impl Entity {
    pub fn new(blueprint: impl Into<String>, identifier: impl Into<String>) -> Self {
        Self {
            identifier: Value::String(identifier.into()),
            blueprint: blueprint.into(),
            title: None,
            icon: None,
            team: None,
            properties: None,
            relations: None,
        }
    }

    /// The properties (none declared: none).
    pub fn properties(&self) -> &Map<String, Value> {
        static NONE: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        self.properties.as_ref().unwrap_or(&NONE)
    }

    /// The relations (none declared: none).
    pub fn relations(&self) -> &Map<String, Value> {
        static NONE: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        self.relations.as_ref().unwrap_or(&NONE)
    }

    /// Sets relation `name` (declaring the relations if the entity had none).
    pub fn set_relation(&mut self, name: impl Into<String>, value: Value) {
        self.relations
            .get_or_insert_with(Map::new)
            .insert(name.into(), value);
    }

    /// Sets property `name` (declaring the properties if the entity had none).
    pub fn set_property(&mut self, name: impl Into<String>, value: Value) {
        self.properties
            .get_or_insert_with(Map::new)
            .insert(name.into(), value);
    }

    /// The identifier as text, for messages: the literal, or the search query's JSON.
    pub fn identifier_label(&self) -> String {
        crate::text::value_text(&self.identifier)
    }
}

/// A field that is present in the JSON, even as `null`, is `Some`.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// Options of an entity write, from the mapping's top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpsertOptions {
    /// `enableMergeEntity`: merge properties into the stored entity instead of replacing it.
    pub merge: bool,
    /// `createMissingRelatedEntities`.
    pub create_missing_related_entities: bool,
}

impl Default for UpsertOptions {
    /// Ocean's defaults.
    fn default() -> Self {
        Self {
            merge: true,
            create_missing_related_entities: true,
        }
    }
}

/// What happened to one entity of an upsert.
#[derive(Debug, Clone, PartialEq)]
pub enum UpsertOutcome {
    /// Port stored it. `identifier` is Port's, which matters when a search query identified it.
    Upserted { identifier: String, created: bool },
    /// Port refused it, or the request carrying it failed.
    Failed(EntityError),
}

impl UpsertOutcome {
    pub fn is_upserted(&self) -> bool {
        matches!(self, UpsertOutcome::Upserted { .. })
    }
}

/// Why Port did not accept one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityError {
    /// HTTP status Port gave this entity, when there was one.
    pub status: Option<u16>,
    /// Port's error code (`not_found`, `invalid_entity`, ...) or `request_failed`.
    pub error: String,
    pub message: String,
}

/// What a bulk delete did, id by id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeleteReport {
    /// Port confirmed these are deleted.
    pub deleted: Vec<String>,
    /// The request succeeded but Port did not list these as deleted (most often: already gone).
    pub not_deleted: Vec<String>,
    /// The request carrying these failed.
    pub failed: Vec<(String, EntityError)>,
}

/// One page of the entities this integration owns.
#[derive(Debug, Clone, Deserialize)]
pub struct OwnedEntitiesPage {
    #[serde(default)]
    pub entities: Vec<Value>,
    /// Cursor of the next page; `None` on the last one.
    #[serde(default)]
    pub next: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Organization {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub feature_flags: Vec<String>,
}

/// The integration object Port keeps for this agent.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Integration {
    pub identifier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installation_app_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The mapping (port-app-config) stored in Port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_state: Option<Value>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The body of `POST /v1/integration`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewIntegration {
    pub installation_id: String,
    pub installation_app_type: String,
    pub version: String,
    pub config: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changelog_destination: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResyncStatus {
    Running,
    Completed,
    Failed,
    Aborted,
}

/// The body of `PATCH /v1/integration/{id}/resync-state`. Times are ISO 8601.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResyncState {
    pub status: ResyncStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_resync_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_resync_end: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_resync: Option<String>,
    /// Port's own spelling.
    #[serde(rename = "intervalInMinuets", skip_serializing_if = "Option::is_none")]
    pub interval_in_minutes: Option<u64>,
}

/// A resync someone asked for in Port's UI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResyncRequest {
    pub id: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct KafkaCredentials {
    pub username: String,
    pub password: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_keeps_explicit_nulls_and_omits_absent_fields() {
        let json = r#"{"identifier":"a","blueprint":"svc","title":null,"properties":{"x":null}}"#;
        let entity: Entity = serde_json::from_str(json).unwrap();
        assert_eq!(entity.title, Some(Value::Null));
        assert_eq!(entity.icon, None);
        let back = serde_json::to_value(&entity).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(json).unwrap());
    }
}
