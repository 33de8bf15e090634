//! The emulator's memory: blueprints, entities and integrations, with Port's validation rules.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use crate::search;

/// A refusal, shaped like Port's: HTTP status, machine-readable code, human message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(status: u16, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
        }
    }
}

pub type EntityKey = (String, String);

#[derive(Debug, Clone)]
pub struct StoredEntity {
    pub identifier: String,
    pub blueprint: String,
    pub title: Option<Value>,
    pub icon: Option<Value>,
    pub team: Vec<Value>,
    pub properties: Map<String, Value>,
    pub relations: Map<String, Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The User-Agent of the last write: how Port tells which integration owns an entity.
    pub datasource: String,
}

pub fn iso(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl StoredEntity {
    /// The value a search rule's `property` refers to.
    pub fn field(&self, property: &str) -> Value {
        match property {
            "$identifier" => Value::from(self.identifier.clone()),
            "$blueprint" => Value::from(self.blueprint.clone()),
            "$title" => self.title.clone().unwrap_or(Value::Null),
            "$icon" => self.icon.clone().unwrap_or(Value::Null),
            "$team" => Value::Array(self.team.clone()),
            "$datasource" => Value::from(self.datasource.clone()),
            "$createdAt" => Value::from(iso(self.created_at)),
            "$updatedAt" => Value::from(iso(self.updated_at)),
            name => self
                .properties
                .get(name)
                .or_else(|| self.relations.get(name))
                .cloned()
                .unwrap_or(Value::Null),
        }
    }

    /// The entity as Port's API returns it.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "identifier": self.identifier,
            "blueprint": self.blueprint,
            "team": self.team,
            "properties": self.properties,
            "relations": self.relations,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        });
        if let Some(title) = &self.title {
            out["title"] = title.clone();
        }
        if let Some(icon) = &self.icon {
            out["icon"] = icon.clone();
        }
        out
    }
}

/// How an entity write treats what is already stored.
#[derive(Debug, Clone, Copy)]
pub struct WriteMode {
    pub merge: bool,
    pub create_missing_related_entities: bool,
}

/// What a successful write did.
#[derive(Debug, Clone)]
pub struct Written {
    pub identifier: String,
    pub created: bool,
}

#[derive(Debug, Default)]
pub struct Store {
    pub blueprints: BTreeMap<String, Value>,
    pub entities: BTreeMap<EntityKey, StoredEntity>,
    pub integrations: BTreeMap<String, Value>,
    pub resync_requests: BTreeMap<String, Value>,
}

fn valid_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 1000
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@_.+:\\/=-".contains(c))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Store {
    pub fn by_blueprint(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for (blueprint, _) in self.entities.keys() {
            *counts.entry(blueprint.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Resolves a search-query identifier to the one entity of `blueprint` it selects.
    fn resolve_search(&self, blueprint: &str, query: &Value) -> Result<Vec<String>, Refusal> {
        let mut found = Vec::new();
        for ((bp, id), entity) in &self.entities {
            if bp == blueprint
                && search::matches(query, entity)
                    .map_err(|m| Refusal::new(400, "invalid_search_query", m))?
            {
                found.push(id.clone());
            }
        }
        Ok(found)
    }

    /// Validates `input` against its blueprint and stores it (the upsert of Port's entity API).
    pub fn upsert(
        &mut self,
        blueprint: &str,
        input: &Value,
        mode: WriteMode,
        datasource: &str,
    ) -> Result<Written, Refusal> {
        let schema = self
            .blueprints
            .get(blueprint)
            .ok_or_else(|| {
                Refusal::new(
                    404,
                    "not_found",
                    format!("blueprint \"{blueprint}\" was not found"),
                )
            })?
            .clone();
        let object = input.as_object().ok_or_else(|| {
            Refusal::new(422, "invalid_request", "an entity must be a JSON object")
        })?;
        if let Some(bp) = object.get("blueprint").and_then(Value::as_str)
            && bp != blueprint
        {
            return Err(Refusal::new(
                422,
                "invalid_request",
                format!("entity blueprint \"{bp}\" differs from the path's \"{blueprint}\""),
            ));
        }
        let identifier = match object.get("identifier") {
            Some(Value::String(id)) if valid_identifier(id) => id.clone(),
            Some(Value::String(id)) => {
                return Err(Refusal::new(
                    422,
                    "invalid_request",
                    format!("identifier {id:?} must match ^[A-Za-z0-9@_.+:\\\\/=-]+$"),
                ));
            }
            Some(query @ Value::Object(_)) => {
                match self.resolve_search(blueprint, query)?.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(Refusal::new(
                            404,
                            "not_found",
                            "the search identifier matched no entity",
                        ));
                    }
                    many => {
                        return Err(Refusal::new(
                            422,
                            "invalid_request",
                            format!("the search identifier matched {} entities", many.len()),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err(Refusal::new(
                    422,
                    "invalid_request",
                    format!("identifier must be a string, not {}", json_type(other)),
                ));
            }
            None => {
                return Err(Refusal::new(
                    422,
                    "invalid_request",
                    "the entity has no identifier",
                ));
            }
        };

        let title = object.get("title").cloned();
        if let Some(t) = &title
            && !(t.is_string() || t.is_null())
        {
            return Err(Refusal::new(
                422,
                "invalid_request",
                format!("title must be a string, not {}", json_type(t)),
            ));
        }
        let team = match object.get("team") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(vec![Value::from(s.clone())]),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Some(items.clone()),
            Some(other) => {
                return Err(Refusal::new(
                    422,
                    "invalid_request",
                    format!("team must be a string or an array of strings, not {other}"),
                ));
            }
        };
        let properties = match object.get("properties") {
            None => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(other) => {
                return Err(Refusal::new(
                    422,
                    "invalid_request",
                    format!("properties must be an object, not {}", json_type(other)),
                ));
            }
        };
        let relations_in = match object.get("relations") {
            None => Map::new(),
            Some(Value::Object(r)) => r.clone(),
            Some(other) => {
                return Err(Refusal::new(
                    422,
                    "invalid_request",
                    format!("relations must be an object, not {}", json_type(other)),
                ));
            }
        };

        let key = (blueprint.to_owned(), identifier.clone());
        let existing = self.entities.get(&key);
        let (mut merged_properties, mut merged_relations) = match (mode.merge, existing) {
            (true, Some(e)) => (e.properties.clone(), e.relations.clone()),
            _ => (Map::new(), Map::new()),
        };
        merged_properties.extend(properties);
        validate_properties(&schema, &merged_properties)?;

        let mut relations = Map::new();
        let mut missing_targets = Vec::new();
        let relation_schema = schema
            .get("relations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (name, value) in relations_in {
            let spec = relation_schema.get(&name).ok_or_else(|| {
                Refusal::new(
                    422,
                    "invalid_request",
                    format!("relation \"{name}\" is not defined on blueprint \"{blueprint}\""),
                )
            })?;
            let target = spec
                .get("target")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let many = spec.get("many").and_then(Value::as_bool).unwrap_or(false);
            let resolved = self.resolve_relation(&name, &target, many, value)?;
            for id in relation_ids(&resolved) {
                if !self.entities.contains_key(&(target.clone(), id.clone())) {
                    missing_targets.push((target.clone(), id));
                }
            }
            relations.insert(name, resolved);
        }
        merged_relations.extend(relations);
        for (name, spec) in &relation_schema {
            if spec
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                && merged_relations
                    .get(name)
                    .is_none_or(|v| v.is_null() || v.as_array().is_some_and(Vec::is_empty))
            {
                return Err(Refusal::new(
                    422,
                    "invalid_request",
                    format!("required relation \"{name}\" is missing"),
                ));
            }
        }
        if !missing_targets.is_empty() && !mode.create_missing_related_entities {
            let (bp, id) = &missing_targets[0];
            return Err(Refusal::new(
                404,
                "not_found",
                format!("related entity \"{id}\" of blueprint \"{bp}\" was not found"),
            ));
        }
        for (target_bp, _) in &missing_targets {
            if !self.blueprints.contains_key(target_bp) {
                return Err(Refusal::new(
                    404,
                    "not_found",
                    format!("relation target blueprint \"{target_bp}\" was not found"),
                ));
            }
        }

        let now = Timestamp::now();
        let created = existing.is_none();
        let created_at = existing.map(|e| e.created_at).unwrap_or(now);
        let (title, icon, team) = match (mode.merge, existing) {
            (true, Some(e)) => (
                title.or_else(|| e.title.clone()),
                object.get("icon").cloned().or_else(|| e.icon.clone()),
                team.unwrap_or_else(|| e.team.clone()),
            ),
            _ => (title, object.get("icon").cloned(), team.unwrap_or_default()),
        };
        for target in &missing_targets {
            self.entities
                .entry(target.clone())
                .or_insert_with(|| StoredEntity {
                    identifier: target.1.clone(),
                    blueprint: target.0.clone(),
                    title: None,
                    icon: None,
                    team: Vec::new(),
                    properties: Map::new(),
                    relations: Map::new(),
                    created_at: now,
                    updated_at: now,
                    datasource: datasource.to_owned(),
                });
        }
        self.entities.insert(
            key,
            StoredEntity {
                identifier: identifier.clone(),
                blueprint: blueprint.to_owned(),
                title,
                icon,
                team,
                properties: merged_properties,
                relations: merged_relations,
                created_at,
                updated_at: now,
                datasource: datasource.to_owned(),
            },
        );
        Ok(Written {
            identifier,
            created,
        })
    }

    fn resolve_relation(
        &self,
        name: &str,
        target: &str,
        many: bool,
        value: Value,
    ) -> Result<Value, Refusal> {
        let bad = |what: String| {
            Refusal::new(
                422,
                "invalid_request",
                format!("relation \"{name}\": {what}"),
            )
        };
        match value {
            Value::Null => Ok(Value::Null),
            Value::String(id) if !many => Ok(Value::String(id)),
            Value::Array(items) if many => {
                if items.iter().all(Value::is_string) {
                    Ok(Value::Array(items))
                } else {
                    Err(bad("a many-relation takes an array of identifiers".into()))
                }
            }
            query @ Value::Object(_) => {
                let found = self.resolve_search(target, &query)?;
                if many {
                    Ok(Value::from(found))
                } else {
                    match found.as_slice() {
                        [one] => Ok(Value::from(one.clone())),
                        _ => Err(bad(format!(
                            "the search matched {} entities, expected exactly one",
                            found.len()
                        ))),
                    }
                }
            }
            other if many => Err(bad(format!(
                "a many-relation takes an array, not {}",
                json_type(&other)
            ))),
            other => Err(bad(format!(
                "takes one identifier, not {}",
                json_type(&other)
            ))),
        }
    }

    /// Deletes `ids` of `blueprint`. Entities related to them through a required relation block
    /// the delete unless `delete_dependents`; optional relations to them are cleared.
    /// Returns the ids that existed and are gone, and how many entities went in all.
    pub fn delete(
        &mut self,
        blueprint: &str,
        ids: &[String],
        delete_dependents: bool,
    ) -> Result<(Vec<String>, u64), Refusal> {
        let mut doomed: BTreeSet<EntityKey> = ids
            .iter()
            .map(|id| (blueprint.to_owned(), id.clone()))
            .filter(|k| self.entities.contains_key(k))
            .collect();
        let deleted_ids: Vec<String> = doomed.iter().map(|(_, id)| id.clone()).collect();
        // Walk dependents until no new entity is added.
        let mut frontier: Vec<EntityKey> = doomed.iter().cloned().collect();
        while let Some(target) = frontier.pop() {
            for (key, entity) in &self.entities {
                if doomed.contains(key) {
                    continue;
                }
                for (relation, value) in &entity.relations {
                    if !points_to(value, &target.1)
                        || self.relation_target(&entity.blueprint, relation)
                            != Some(target.0.as_str())
                    {
                        continue;
                    }
                    if delete_dependents {
                        doomed.insert(key.clone());
                        frontier.push(key.clone());
                    } else if self.relation_required(&entity.blueprint, relation) {
                        return Err(Refusal::new(
                            422,
                            "has_dependents",
                            format!(
                                "entity \"{}\" of blueprint \"{}\" has a required relation \"{relation}\" to \"{}\"; delete with delete_dependents=true",
                                entity.identifier, entity.blueprint, target.1
                            ),
                        ));
                    }
                }
            }
        }
        for key in &doomed {
            self.entities.remove(key);
        }
        // Optional relations to deleted entities are cleared, as Port does.
        let gone: BTreeSet<&EntityKey> = doomed.iter().collect();
        let blueprints = self.blueprints.clone();
        for entity in self.entities.values_mut() {
            for (relation, value) in entity.relations.iter_mut() {
                let target_bp = blueprints
                    .get(&entity.blueprint)
                    .and_then(|b| b.pointer(&format!("/relations/{relation}/target")))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                match value {
                    Value::String(id) if gone.contains(&(target_bp.clone(), id.clone())) => {
                        *value = Value::Null
                    }
                    Value::Array(items) => items.retain(|i| {
                        !i.as_str()
                            .is_some_and(|id| gone.contains(&(target_bp.clone(), id.to_owned())))
                    }),
                    _ => {}
                }
            }
        }
        Ok((deleted_ids, doomed.len() as u64))
    }

    fn relation_target(&self, blueprint: &str, relation: &str) -> Option<&str> {
        self.blueprints
            .get(blueprint)?
            .pointer(&format!("/relations/{relation}/target"))?
            .as_str()
    }

    fn relation_required(&self, blueprint: &str, relation: &str) -> bool {
        self.blueprints
            .get(blueprint)
            .and_then(|b| b.pointer(&format!("/relations/{relation}/required")))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

fn relation_ids(value: &Value) -> Vec<String> {
    match value {
        Value::String(id) => vec![id.clone()],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn points_to(value: &Value, id: &str) -> bool {
    match value {
        Value::String(v) => v == id,
        Value::Array(items) => items.iter().any(|i| i.as_str() == Some(id)),
        _ => false,
    }
}

/// Checks properties against the blueprint's `schema`: known names, JSON types, enums, required.
fn validate_properties(blueprint: &Value, properties: &Map<String, Value>) -> Result<(), Refusal> {
    let empty = Map::new();
    let declared = blueprint
        .pointer("/schema/properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, value) in properties {
        let spec = declared.get(name).ok_or_else(|| {
            Refusal::new(
                422,
                "invalid_request",
                format!("property \"{name}\" is not defined on the blueprint"),
            )
        })?;
        if value.is_null() {
            continue;
        }
        if let Some(expected) = spec.get("type").and_then(Value::as_str)
            && json_type(value) != expected
        {
            return Err(Refusal::new(
                422,
                "invalid_request",
                format!(
                    "property \"{name}\" must be of type {expected}, got {} ({value})",
                    json_type(value)
                ),
            ));
        }
        if let Some(options) = spec.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            return Err(Refusal::new(
                422,
                "invalid_request",
                format!(
                    "property \"{name}\" must be one of {}",
                    Value::Array(options.clone())
                ),
            ));
        }
        if spec.get("format").and_then(Value::as_str) == Some("date-time")
            && value
                .as_str()
                .is_some_and(|s| s.parse::<Timestamp>().is_err())
        {
            return Err(Refusal::new(
                422,
                "invalid_request",
                format!("property \"{name}\" must be an ISO 8601 date-time"),
            ));
        }
    }
    if let Some(required) = blueprint
        .pointer("/schema/required")
        .and_then(Value::as_array)
    {
        for name in required.iter().filter_map(Value::as_str) {
            if properties.get(name).is_none_or(Value::is_null) {
                return Err(Refusal::new(
                    422,
                    "invalid_request",
                    format!("required property \"{name}\" is missing"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODE: WriteMode = WriteMode {
        merge: false,
        create_missing_related_entities: false,
    };

    fn store() -> Store {
        let mut store = Store::default();
        store.blueprints.insert(
            "team".into(),
            json!({"identifier": "team", "schema": {"properties": {}}}),
        );
        store.blueprints.insert(
            "service".into(),
            json!({
                "identifier": "service",
                "schema": {"properties": {"url": {"type": "string"}, "stars": {"type": "number"}, "tier": {"type": "string", "enum": ["gold", "silver"]}}, "required": ["url"]},
                "relations": {"owner": {"target": "team", "required": false, "many": false}}
            }),
        );
        store
    }

    #[test]
    fn validates_types_required_and_enums() {
        let mut s = store();
        let ok = json!({"identifier": "a", "properties": {"url": "u", "stars": 3}});
        assert!(s.upsert("service", &ok, MODE, "ua").unwrap().created);
        let wrong_type = json!({"identifier": "b", "properties": {"url": "u", "stars": "3"}});
        assert!(
            s.upsert("service", &wrong_type, MODE, "ua")
                .unwrap_err()
                .message
                .contains("type number")
        );
        let missing = json!({"identifier": "c", "properties": {"stars": 1}});
        assert!(
            s.upsert("service", &missing, MODE, "ua")
                .unwrap_err()
                .message
                .contains("required property \"url\"")
        );
        let bad_enum = json!({"identifier": "d", "properties": {"url": "u", "tier": "bronze"}});
        assert!(s.upsert("service", &bad_enum, MODE, "ua").is_err());
        assert_eq!(s.upsert("nope", &ok, MODE, "ua").unwrap_err().status, 404);
        let bad_id = json!({"identifier": "has space", "properties": {"url": "u"}});
        assert!(s.upsert("service", &bad_id, MODE, "ua").is_err());
    }

    #[test]
    fn merge_keeps_other_properties_replace_drops_them() {
        let mut s = store();
        s.upsert(
            "service",
            &json!({"identifier": "a", "title": "A", "properties": {"url": "u", "stars": 1}}),
            MODE,
            "ua",
        )
        .unwrap();
        let merge = WriteMode {
            merge: true,
            ..MODE
        };
        s.upsert(
            "service",
            &json!({"identifier": "a", "properties": {"stars": 2}}),
            merge,
            "ua",
        )
        .unwrap();
        let e = &s.entities[&("service".into(), "a".into())];
        assert_eq!(e.properties["url"], "u");
        assert_eq!(e.properties["stars"], 2);
        assert_eq!(e.title, Some(json!("A")));
        let err = s
            .upsert(
                "service",
                &json!({"identifier": "a", "properties": {"stars": 3}}),
                MODE,
                "ua",
            )
            .unwrap_err();
        assert!(
            err.message.contains("url"),
            "replace must revalidate the whole entity: {err:?}"
        );
    }

    #[test]
    fn missing_relation_target_fails_or_is_created() {
        let mut s = store();
        let e = json!({"identifier": "a", "properties": {"url": "u"}, "relations": {"owner": "platform"}});
        let err = s.upsert("service", &e, MODE, "ua").unwrap_err();
        assert_eq!((err.status, err.error), (404, "not_found"));
        let create = WriteMode {
            create_missing_related_entities: true,
            ..MODE
        };
        s.upsert("service", &e, create, "ua").unwrap();
        assert!(s.entities.contains_key(&("team".into(), "platform".into())));
    }

    #[test]
    fn delete_clears_optional_relations_and_cascades_with_dependents() {
        let mut s = store();
        let create = WriteMode {
            create_missing_related_entities: true,
            ..MODE
        };
        s.upsert(
            "service",
            &json!({"identifier": "a", "properties": {"url": "u"}, "relations": {"owner": "t"}}),
            create,
            "ua",
        )
        .unwrap();
        let (deleted, total) = s
            .delete("team", &["t".into(), "ghost".into()], false)
            .unwrap();
        assert_eq!((deleted, total), (vec!["t".to_owned()], 1));
        assert_eq!(
            s.entities[&("service".into(), "a".into())].relations["owner"],
            Value::Null
        );

        s.upsert(
            "service",
            &json!({"identifier": "a", "properties": {"url": "u"}, "relations": {"owner": "t"}}),
            create,
            "ua",
        )
        .unwrap();
        let (_, total) = s.delete("team", &["t".into()], true).unwrap();
        assert_eq!(total, 2);
        assert!(s.entities.is_empty());
    }
}
