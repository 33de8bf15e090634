//! A mapping compiled for evaluation, and Ocean's rules for turning one raw item into entities.

use std::fmt;

use jaq_json::Val;
use serde_json::{Map, Value};

use super::budget::{self, Limits, nesting_exceeds};
use super::config::{PortAppConfig, ResourceConfig, Template};
use super::jq::{CompileError, EvalError, Jq, Program};
use super::value::{parse_raw, to_json};
use crate::port::{Entity, UpsertOptions};

/// An expression of the mapping that does not compile.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub resource: usize,
    pub kind: String,
    /// e.g. `resources[2].port.entity.mappings.properties.url`.
    pub field: String,
    pub expression: String,
    pub error: CompileError,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (kind {}): `{}`: {}",
            self.field, self.kind, self.expression, self.error
        )
    }
}

/// A field whose expression failed on an item: the field is null and the entity still made.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldWarning {
    pub field: String,
    pub message: String,
}

/// What one raw item became under one resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemResult {
    /// Entities whose item passed the selector, with a non-empty identifier and blueprint.
    pub entities: Vec<Entity>,
    /// Items the selector turned away.
    pub filtered_out: usize,
    /// Item errors: the selector did not yield a boolean, the item could not be expanded, or
    /// its identifier or blueprint came out empty (Ocean drops such an entity silently; here
    /// the item fails, so that a source renaming a field cannot make a kind look empty). Any
    /// of these makes the run delete nothing.
    pub errors: Vec<String>,
    pub warnings: Vec<FieldWarning>,
    /// Why the item was skipped: `itemsToParse` did not yield an array (Ocean skips it too,
    /// with a warning, and it is no error).
    pub skipped: Vec<String>,
}

impl ItemResult {
    fn failed(error: String) -> Self {
        Self {
            errors: vec![error],
            ..Default::default()
        }
    }
}

enum CompiledTemplate {
    Expr {
        field: String,
        program: Program,
    },
    /// An entity field whose expression does not compile: null on every entity, with a
    /// warning, as in Ocean (which compiles each field on use and nulls it when that fails).
    Broken {
        field: String,
        message: String,
    },
    Object(Vec<(String, CompiledTemplate)>),
    List(Vec<CompiledTemplate>),
}

struct ItemsToParse {
    field: String,
    program: Program,
    name: String,
    /// `del(path)` of the parsed array, when the top-level transform is on.
    remove_from_parent: Option<Program>,
}

/// One resource, every expression compiled.
pub struct CompiledResource {
    pub index: usize,
    pub kind: String,
    selector: Program,
    items_to_parse: Option<ItemsToParse>,
    identifier: CompiledTemplate,
    title: Option<CompiledTemplate>,
    blueprint: CompiledTemplate,
    icon: Option<CompiledTemplate>,
    team: Option<CompiledTemplate>,
    /// `None` when the mapping does not declare them.
    properties: Option<Vec<(String, CompiledTemplate)>>,
    relations: Option<Vec<(String, CompiledTemplate)>>,
    /// Entity fields that do not compile (null on every entity): errors for `mapping validate`
    /// and `config validate`, warnings for a run.
    pub broken_fields: Vec<FieldError>,
}

impl fmt::Debug for CompiledResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledResource")
            .field("index", &self.index)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The mapping, compiled. Resources that failed to compile are kept with their errors, so the
/// others still run and the failed ones are reported (and block deletions).
pub struct CompiledMapping {
    jq: Jq,
    pub options: UpsertOptions,
    pub delete_dependent_entities: bool,
    pub entity_deletion_threshold: f64,
    pub resources: Vec<Result<CompiledResource, Vec<FieldError>>>,
}

impl fmt::Debug for CompiledMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledMapping")
            .field("resources", &self.resources.len())
            .finish_non_exhaustive()
    }
}

/// The first `.a.b` path in an `itemsToParse` expression: what the top-level transform removes
/// from the parent (Ocean extracts it the same way, e.g. `.file.content.raw` from
/// `. as $all | ($all | .file.content.raw) // {}`).
fn parsed_path(expression: &str) -> Option<String> {
    let bytes = expression.as_bytes();
    let ident_start = |b: u8| b.is_ascii_alphabetic() || b == b'_';
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'.' && ident_start(bytes[i + 1]) {
            let start = i;
            loop {
                i += 1;
                while i < bytes.len() && ident(bytes[i]) {
                    i += 1;
                }
                if i + 1 < bytes.len() && bytes[i] == b'.' && ident_start(bytes[i + 1]) {
                    continue;
                }
                return Some(expression[start..i].to_owned());
            }
        }
        i += 1;
    }
    None
}

struct Compiler<'a> {
    jq: &'a Jq,
    resource: usize,
    kind: &'a str,
    errors: Vec<FieldError>,
    /// Entity fields that do not compile; they do not stop the resource.
    broken: Vec<FieldError>,
}

impl Compiler<'_> {
    fn expr(&mut self, field: String, expression: &str) -> Option<Program> {
        match self.jq.compile(expression) {
            Ok(program) => Some(program),
            Err(error) => {
                self.errors.push(FieldError {
                    resource: self.resource,
                    kind: self.kind.to_owned(),
                    field,
                    expression: expression.to_owned(),
                    error,
                });
                None
            }
        }
    }

    /// An entity field's template; an expression that does not compile makes it
    /// [`CompiledTemplate::Broken`].
    fn template(&mut self, field: String, template: &Template) -> Option<CompiledTemplate> {
        match template {
            Template::Expr(expression) => match self.jq.compile(expression) {
                Ok(program) => Some(CompiledTemplate::Expr { field, program }),
                Err(error) => {
                    let message = format!("`{expression}` does not compile: {error}");
                    self.broken.push(FieldError {
                        resource: self.resource,
                        kind: self.kind.to_owned(),
                        field: field.clone(),
                        expression: expression.to_owned(),
                        error,
                    });
                    Some(CompiledTemplate::Broken { field, message })
                }
            },
            Template::Object(entries) => {
                let mut out = Vec::with_capacity(entries.len());
                let mut ok = true;
                for (key, value) in entries {
                    match self.template(format!("{field}.{key}"), value) {
                        Some(t) => out.push((key.clone(), t)),
                        None => ok = false,
                    }
                }
                ok.then_some(CompiledTemplate::Object(out))
            }
            Template::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.template(format!("{field}[{i}]"), item) {
                        Some(t) => out.push(t),
                        None => ok = false,
                    }
                }
                ok.then_some(CompiledTemplate::List(out))
            }
        }
    }

    fn map_fields(
        &mut self,
        prefix: &str,
        fields: &Map<String, Value>,
    ) -> Option<Vec<(String, CompiledTemplate)>> {
        let mut out = Vec::with_capacity(fields.len());
        let mut ok = true;
        for (name, value) in fields {
            let field = format!("{prefix}.{name}");
            match Template::from_value(value) {
                Ok(template) => match self.template(field, &template) {
                    Some(t) => out.push((name.clone(), t)),
                    None => ok = false,
                },
                Err(message) => {
                    self.errors.push(FieldError {
                        resource: self.resource,
                        kind: self.kind.to_owned(),
                        field,
                        expression: value.to_string(),
                        error: CompileError { offset: 0, message },
                    });
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn resource(mut self, config: &ResourceConfig) -> Result<CompiledResource, Vec<FieldError>> {
        let at = format!("resources[{}]", self.resource);
        let m = &config.port.entity.mappings;
        let base = format!("{at}.port.entity.mappings");
        let selector = self.expr(format!("{at}.selector.query"), &config.selector.query);
        let items_to_parse = config.port.items_to_parse.as_ref().map(|expression| {
            let field = format!("{at}.port.itemsToParse");
            let program = self.expr(field.clone(), expression);
            let remove_from_parent = match (
                config.port.items_to_parse_top_level_transform,
                parsed_path(expression),
            ) {
                (true, Some(path)) => self.expr(field.clone(), &format!(". | del({path})")),
                _ => None,
            };
            (field, program, remove_from_parent)
        });
        let identifier = self.template(format!("{base}.identifier"), &m.identifier);
        let title = m
            .title
            .as_ref()
            .map(|e| self.template(format!("{base}.title"), &Template::Expr(e.0.clone())));
        let blueprint = self.template(
            format!("{base}.blueprint"),
            &Template::Expr(m.blueprint.0.clone()),
        );
        let icon = m
            .icon
            .as_ref()
            .map(|e| self.template(format!("{base}.icon"), &Template::Expr(e.0.clone())));
        let team = m
            .team
            .as_ref()
            .map(|t| self.template(format!("{base}.team"), t));
        let properties = m
            .properties
            .as_ref()
            .map(|fields| self.map_fields(&format!("{base}.properties"), fields));
        let relations = m
            .relations
            .as_ref()
            .map(|fields| self.map_fields(&format!("{base}.relations"), fields));
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let some = "no error was recorded, so every part compiled";
        Ok(CompiledResource {
            index: self.resource,
            kind: config.kind.clone(),
            selector: selector.expect(some),
            items_to_parse: items_to_parse.map(|(field, program, remove_from_parent)| {
                ItemsToParse {
                    field,
                    program: program.expect(some),
                    name: config.port.items_to_parse_name.clone(),
                    remove_from_parent,
                }
            }),
            identifier: identifier.expect(some),
            title: title.map(|t| t.expect(some)),
            blueprint: blueprint.expect(some),
            icon: icon.map(|t| t.expect(some)),
            team: team.map(|t| t.expect(some)),
            properties: properties.map(|p| p.expect(some)),
            relations: relations.map(|r| r.expect(some)),
            broken_fields: self.broken,
        })
    }
}

/// Python's truthiness, which Ocean applies to identifier and blueprint.
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

impl CompiledMapping {
    /// Compiles every expression. `env` is what `$ENV` holds for the mappings.
    pub fn compile(config: &PortAppConfig, env: Val) -> Self {
        let jq = Jq::new(env);
        let resources = config
            .resources
            .iter()
            .enumerate()
            .map(|(index, resource)| {
                Compiler {
                    jq: &jq,
                    resource: index,
                    kind: &resource.kind,
                    errors: Vec::new(),
                    broken: Vec::new(),
                }
                .resource(resource)
            })
            .collect();
        Self {
            jq,
            options: UpsertOptions {
                merge: config.enable_merge_entity,
                create_missing_related_entities: config.create_missing_related_entities,
            },
            delete_dependent_entities: config.delete_dependent_entities,
            entity_deletion_threshold: config.entity_deletion_threshold,
            resources,
        }
    }

    /// Every compile error, in resource order: those that stop a resource and the entity
    /// fields that are null on every entity.
    pub fn errors(&self) -> impl Iterator<Item = &FieldError> {
        self.resources.iter().flat_map(|r| match r {
            Err(errors) => errors.iter(),
            Ok(resource) => resource.broken_fields.iter(),
        })
    }

    /// Indices of the resources of `kind`, in file order, compiled or not.
    pub fn resources_of_kind<'a>(
        &'a self,
        kind: &'a str,
        config: &'a PortAppConfig,
    ) -> impl Iterator<Item = usize> + 'a {
        config
            .resources
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.kind == kind)
            .map(|(i, _)| i)
    }

    /// Maps one raw item, as JSON text, within `limits`: an item nested too deeply, or whose
    /// evaluation runs out of time, stack or memory, fails alone, with the field it was in.
    pub fn map_raw(&self, resource: &CompiledResource, raw: &[u8], limits: &Limits) -> ItemResult {
        if nesting_exceeds(raw, limits.nesting) {
            return ItemResult::failed(format!(
                "the item nests arrays and objects more than {} levels deep (limits.item_nesting)",
                limits.nesting
            ));
        }
        let raw = match parse_raw(raw) {
            Ok(raw) => raw,
            Err(message) => return ItemResult::failed(format!("not readable as JSON: {message}")),
        };
        budget::for_item(limits, || self.map_item(resource, &raw))
    }

    /// The (blueprint, identifier) of each entity `raw` names under `resource`, whatever its
    /// selector says: what a live event's deleted item, or one that left the selector, would
    /// have made. Inputs without a usable identifier and blueprint (or a search-query
    /// identifier, which only Port can resolve) name nothing.
    pub fn keys_of(
        &self,
        resource: &CompiledResource,
        raw: &[u8],
        limits: &Limits,
    ) -> Vec<(String, String)> {
        if nesting_exceeds(raw, limits.nesting) {
            return Vec::new();
        }
        let Ok(raw) = parse_raw(raw) else {
            return Vec::new();
        };
        budget::for_item(limits, || {
            let inputs = match &resource.items_to_parse {
                None => vec![raw.clone()],
                Some(parse) => match self.expand(parse, &raw) {
                    Ok(Ok(inputs)) => inputs,
                    _ => return Vec::new(),
                },
            };
            let mut warnings = Vec::new();
            inputs
                .iter()
                .filter_map(|input| {
                    let identifier = self.eval(&resource.identifier, input, &mut warnings).ok()?;
                    let blueprint = self.eval(&resource.blueprint, input, &mut warnings).ok()?;
                    match (blueprint, identifier) {
                        (Value::String(bp), Value::String(id))
                            if !bp.is_empty() && !id.is_empty() =>
                        {
                            Some((bp, id))
                        }
                        (Value::String(bp), Value::Number(n)) if !bp.is_empty() => {
                            Some((bp, n.to_string()))
                        }
                        _ => None,
                    }
                })
                .collect()
        })
    }

    /// Maps one raw item with one compiled resource.
    pub fn map_item(&self, resource: &CompiledResource, raw: &Val) -> ItemResult {
        let mut result = ItemResult::default();
        let inputs = match &resource.items_to_parse {
            None => vec![raw.clone()],
            Some(parse) => match self.expand(parse, raw) {
                Ok(Ok(inputs)) => inputs,
                Ok(Err(reason)) => {
                    result.skipped.push(reason);
                    return result;
                }
                Err(message) => {
                    result.errors.push(message);
                    return result;
                }
            },
        };
        for input in inputs {
            match self.jq.first(&resource.selector, input.clone()) {
                Ok(Some(Val::Bool(true))) => {}
                Ok(Some(Val::Bool(false))) => {
                    result.filtered_out += 1;
                    continue;
                }
                Ok(Some(other)) => {
                    result.errors.push(format!(
                        "resources[{}].selector.query: expected a boolean, got {}",
                        resource.index,
                        to_json(&other)
                    ));
                    continue;
                }
                Ok(None) => {
                    result.errors.push(format!(
                        "resources[{}].selector.query: expected a boolean, got no output",
                        resource.index
                    ));
                    continue;
                }
                Err(message) => {
                    result.errors.push(format!(
                        "resources[{}].selector.query: {message}",
                        resource.index
                    ));
                    continue;
                }
            }
            match self.entity(resource, &input, &mut result.warnings) {
                Ok(entity) => result.entities.push(entity),
                Err(error) => result.errors.push(error),
            }
        }
        result
    }

    /// `itemsToParse`: the expanded inputs, `Ok(Err(reason))` when the item is to be skipped,
    /// `Err` when it cannot be expanded at all.
    fn expand(&self, parse: &ItemsToParse, raw: &Val) -> Result<Result<Vec<Val>, String>, String> {
        let items = match self.jq.first(&parse.program, raw.clone()) {
            Ok(Some(Val::Arr(items))) => items,
            Ok(other) => {
                let got = other.as_ref().map(to_json).unwrap_or(Value::Null);
                return Ok(Err(format!(
                    "{}: expected an array, got {got}; the item is skipped",
                    parse.field
                )));
            }
            Err(EvalError::Budget(why)) => return Err(format!("{}: {why}", parse.field)),
            Err(EvalError::Jq(message)) => {
                return Ok(Err(format!(
                    "{}: {message}; the item is skipped",
                    parse.field
                )));
            }
        };
        let parent = match &parse.remove_from_parent {
            Some(program) => self
                .jq
                .first(program, raw.clone())
                .map_err(|e| {
                    format!(
                        "{}: removing the parsed array from the item: {e}",
                        parse.field
                    )
                })?
                .unwrap_or(Val::Null),
            None => raw.clone(),
        };
        let Val::Obj(parent) = parent else {
            return Err(format!(
                "{}: the item is not an object, so its parsed elements cannot be put under .{}",
                parse.field, parse.name
            ));
        };
        let key = Val::from(parse.name.clone());
        Ok(Ok(items
            .iter()
            .map(|element| {
                let mut merged = (*parent).clone();
                merged.insert(key.clone(), element.clone());
                Val::obj(merged)
            })
            .collect()))
    }

    /// A template's value for `input`. A failing expression is null with a warning, as in
    /// Ocean; `Err` (the item fails) when the item's budget ran out.
    fn eval(
        &self,
        template: &CompiledTemplate,
        input: &Val,
        warnings: &mut Vec<FieldWarning>,
    ) -> Result<Value, String> {
        Ok(match template {
            CompiledTemplate::Broken { field, message } => {
                warnings.push(FieldWarning {
                    field: field.clone(),
                    message: message.clone(),
                });
                Value::Null
            }
            CompiledTemplate::Expr { field, program } => {
                match self.jq.first(program, input.clone()) {
                    Ok(Some(value)) => to_json(&value),
                    Ok(None) => Value::Null,
                    Err(EvalError::Jq(message)) => {
                        warnings.push(FieldWarning {
                            field: field.clone(),
                            message,
                        });
                        Value::Null
                    }
                    Err(EvalError::Budget(why)) => return Err(format!("{field}: {why}")),
                }
            }
            CompiledTemplate::Object(entries) => {
                let mut out = Map::new();
                for (key, value) in entries {
                    out.insert(key.clone(), self.eval(value, input, warnings)?);
                }
                Value::Object(out)
            }
            CompiledTemplate::List(items) => Value::Array(
                items
                    .iter()
                    .map(|t| self.eval(t, input, warnings))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// Declared fields' values, in the mapping's order.
    fn fields(
        &self,
        declared: Option<&[(String, CompiledTemplate)]>,
        input: &Val,
        warnings: &mut Vec<FieldWarning>,
    ) -> Result<Option<Map<String, Value>>, String> {
        let Some(declared) = declared else {
            return Ok(None);
        };
        let mut out = Map::new();
        for (name, template) in declared {
            out.insert(name.clone(), self.eval(template, input, warnings)?);
        }
        Ok(Some(out))
    }

    fn entity(
        &self,
        resource: &CompiledResource,
        input: &Val,
        warnings: &mut Vec<FieldWarning>,
    ) -> Result<Entity, String> {
        let identifier = self.eval(&resource.identifier, input, warnings)?;
        let blueprint = self.eval(&resource.blueprint, input, warnings)?;
        for (name, value) in [("identifier", &identifier), ("blueprint", &blueprint)] {
            if truthy(value) {
                continue;
            }
            let field = format!("resources[{}].port.entity.mappings.{name}", resource.index);
            let why = match warnings.iter().find(|w| w.field == field) {
                Some(warning) => format!("failed: {}", warning.message),
                None => format!("gave {value}"),
            };
            return Err(format!("{field} {why}; an entity needs a non-empty {name}"));
        }
        let blueprint = match blueprint {
            Value::String(s) => s,
            other => {
                return Err(format!(
                    "resources[{}].port.entity.mappings.blueprint gave {other}; the blueprint must be a string",
                    resource.index
                ));
            }
        };
        let mut entity = Entity {
            identifier,
            blueprint,
            title: resource
                .title
                .as_ref()
                .map(|t| self.eval(t, input, warnings))
                .transpose()?,
            icon: resource
                .icon
                .as_ref()
                .map(|t| self.eval(t, input, warnings))
                .transpose()?,
            team: resource
                .team
                .as_ref()
                .map(|t| self.eval(t, input, warnings))
                .transpose()?,
            properties: None,
            relations: None,
        };
        entity.properties = self.fields(resource.properties.as_deref(), input, warnings)?;
        entity.relations = self.fields(resource.relations.as_deref(), input, warnings)?;
        Ok(entity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::value::parse_raw;
    use serde_json::json;

    fn compile(yaml: &str) -> CompiledMapping {
        CompiledMapping::compile(&PortAppConfig::from_yaml(yaml).unwrap(), Val::Null)
    }

    fn map(mapping: &CompiledMapping, raw: &str) -> ItemResult {
        let resource = mapping.resources[0].as_ref().unwrap();
        mapping.map_item(resource, &parse_raw(raw.as_bytes()).unwrap())
    }

    #[test]
    fn parsed_path_finds_the_first_plain_path() {
        assert_eq!(
            parsed_path(".file.content.raw").as_deref(),
            Some(".file.content.raw")
        );
        assert_eq!(
            parsed_path(". as $all | ($all | .file.content.raw) // {}").as_deref(),
            Some(".file.content.raw")
        );
        assert_eq!(parsed_path(".items[] | .x").as_deref(), Some(".items"));
        assert_eq!(parsed_path("[1, 2]"), None);
    }

    #[test]
    fn compile_errors_name_resource_kind_field_and_offset_and_spare_the_rest() {
        let mapping = compile(
            r#"
resources:
  - kind: ok
    selector: {query: 'true'}
    port: {entity: {mappings: {identifier: .id, blueprint: '"b"'}}}
  - kind: broken
    selector: {query: 'true'}
    port: {entity: {mappings: {identifier: .id, blueprint: '"b"', properties: {url: '.html_url | nope(1)', ok: .x, bad: '.a |'}}}}
"#,
        );
        assert!(mapping.resources[0].is_ok());
        let errors: Vec<String> = mapping.errors().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2, "{errors:#?}");
        let url = errors
            .iter()
            .find(|e| e.contains("properties.url"))
            .expect("the url error is reported");
        assert!(url.starts_with("resources[1].port.entity.mappings.properties.url (kind broken): `.html_url | nope(1)`"), "{url}");
        assert!(url.contains("nope") && url.contains("offset 12"), "{url}");
        let bad = errors
            .iter()
            .find(|e| e.contains("properties.bad"))
            .expect("the bad error is reported");
        assert!(bad.contains("offset 4"), "{bad}");
    }

    /// Regression (issue 9): a mapping declaring `properties: {}` had the key left out; Ocean
    /// sends what the mapping declares (and leaves out what it does not).
    #[test]
    fn declared_empty_properties_are_sent_and_undeclared_relations_are_not() {
        let mapping = compile(
            r#"
resources:
  - kind: team
    selector: {query: 'true'}
    port: {entity: {mappings: {identifier: .id, title: .name, blueprint: '"team"', properties: {}}}}
"#,
        );
        let out = map(&mapping, r#"{"id": "core"}"#);
        assert_eq!(
            serde_json::to_value(&out.entities[0]).unwrap(),
            json!({"identifier": "core", "blueprint": "team", "title": null, "properties": {}})
        );
    }

    /// Regression (issue 9): GitLab's default mapping has `readme: file://README.md`, which jq
    /// cannot compile. Ocean sends the entities with that field null; the whole resource was
    /// refused here.
    #[test]
    fn a_field_that_does_not_compile_is_null_and_the_rest_maps() {
        let mapping = compile(
            r#"
resources:
  - kind: project
    selector: {query: 'true'}
    port: {entity: {mappings: {identifier: .id | tostring, blueprint: '"project"', properties: {readme: 'file://README.md', url: .web_url}}}}
"#,
        );
        let errors: Vec<String> = mapping.errors().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "validate still reports it: {errors:?}");
        assert!(errors[0].contains("properties.readme"), "{errors:?}");
        let out = map(&mapping, r#"{"id": 3, "web_url": "https://gitlab/p"}"#);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(
            serde_json::to_value(&out.entities[0].properties).unwrap(),
            json!({"readme": null, "url": "https://gitlab/p"})
        );
        assert_eq!(out.warnings.len(), 1);
        assert!(
            out.warnings[0].field.ends_with("properties.readme")
                && out.warnings[0].message.contains("does not compile"),
            "{:?}",
            out.warnings
        );
    }

    #[test]
    fn ocean_semantics_for_fields_selector_and_drops() {
        let mapping = compile(
            r#"
resources:
  - kind: svc
    selector: {query: .enabled}
    port:
      entity:
        mappings:
          identifier: .id | tostring
          title: .name // 'unnamed'
          blueprint: '"service"'
          team: '[.team]'
          properties: {broken: '.name | error("no")', nothing: 'empty', url: .url}
          relations:
            owner: {combinator: '"and"', rules: [{property: '"$identifier"', operator: '"="', value: .owner}]}
"#,
        );
        let out = map(
            &mapping,
            r#"{"id": 7, "enabled": true, "team": "core", "url": "u", "owner": "o"}"#,
        );
        assert_eq!(out.entities.len(), 1);
        let e = &out.entities[0];
        assert_eq!(e.identifier, json!("7"));
        assert_eq!(e.title, Some(json!("unnamed")));
        assert_eq!(e.team, Some(json!(["core"])));
        assert_eq!(e.properties()["broken"], Value::Null);
        assert_eq!(e.properties()["nothing"], Value::Null);
        assert_eq!(
            e.relations()["owner"],
            json!({"combinator": "and", "rules": [{"property": "$identifier", "operator": "=", "value": "o"}]})
        );
        assert_eq!(out.warnings.len(), 1);
        assert_eq!(
            out.warnings[0].field,
            "resources[0].port.entity.mappings.properties.broken"
        );

        assert_eq!(
            map(&mapping, r#"{"id": 7, "enabled": false}"#).filtered_out,
            1
        );
        let not_bool = map(&mapping, r#"{"id": 7, "enabled": "yes"}"#);
        assert!(
            not_bool.entities.is_empty() && not_bool.errors[0].contains("expected a boolean"),
            "{not_bool:?}"
        );
        let no_output = map(&mapping, r#"{"id": 7}"#);
        assert!(
            no_output.errors[0].contains("expected a boolean, got null"),
            "{no_output:?}"
        );
    }

    #[test]
    fn an_empty_or_failing_identifier_or_blueprint_fails_the_item_naming_the_field() {
        let mapping = compile(
            "resources:\n  - kind: k\n    selector: {query: 'true'}\n    port: {entity: {mappings: {identifier: .id, blueprint: .bp}}}\n",
        );
        let cases = [
            (r#"{"id": "", "bp": "b"}"#, "mappings.identifier gave \"\""),
            (r#"{"id": "a"}"#, "mappings.blueprint gave null"),
            (r#"{"id": 0, "bp": "b"}"#, "mappings.identifier gave 0"),
            (
                r#"{"id": {"x": 1}, "bp": 3}"#,
                "the blueprint must be a string",
            ),
            (
                r#""not an object""#,
                "mappings.identifier failed: Cannot index string",
            ),
        ];
        for (item, error) in cases {
            let result = map(&mapping, item);
            assert!(result.entities.is_empty(), "{item}");
            assert_eq!(result.errors.len(), 1, "{item}: {result:?}");
            assert!(
                result.errors[0].contains(error),
                "{item}: {}",
                result.errors[0]
            );
        }
        assert_eq!(map(&mapping, r#"{"id": "a", "bp": "b"}"#).entities.len(), 1);
    }

    #[test]
    fn items_to_parse_puts_each_element_under_its_name_and_removes_the_array() {
        let mapping = compile(
            r#"
resources:
  - kind: repo
    selector: {query: '.pr.open'}
    port:
      itemsToParse: .pulls
      itemsToParseName: pr
      entity:
        mappings: {identifier: '.repo + "-" + (.pr.n | tostring)', blueprint: '"pr"', properties: {still_there: '.pulls | length'}}
"#,
        );
        let out = map(
            &mapping,
            r#"{"repo": "r", "pulls": [{"n": 1, "open": true}, {"n": 2, "open": false}, {"n": 3, "open": true}]}"#,
        );
        let ids: Vec<&Value> = out.entities.iter().map(|e| &e.identifier).collect();
        assert_eq!(ids, [&json!("r-1"), &json!("r-3")]);
        assert_eq!(out.filtered_out, 1);
        // The top-level transform removed .pulls from each parent copy.
        assert_eq!(out.entities[0].properties()["still_there"], json!(0));
        let skipped = map(&mapping, r#"{"repo": "r", "pulls": "nope"}"#).skipped;
        assert!(
            skipped[0].contains("itemsToParse: expected an array, got \"nope\""),
            "{skipped:?}"
        );
    }
}
