//! Port's `/v1` API: the gate every request passes (quota, faults, auth) and the handlers.

use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::faults::Verdict;
use crate::store::{Refusal, Store, WriteMode, iso};
use crate::{AppState, lock, search};

const TOKEN_ROUTE: &str = "/v1/auth/access_token";

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route(TOKEN_ROUTE, post(access_token))
        .route("/v1/organization", get(organization))
        .route("/v1/kafka-credentials", get(kafka_credentials))
        .route(
            "/v1/blueprints",
            get(list_blueprints).post(create_blueprint),
        )
        .route(
            "/v1/blueprints/{bp}",
            get(get_blueprint)
                .patch(patch_blueprint)
                .delete(delete_blueprint),
        )
        .route("/v1/blueprints/{bp}/entities", post(upsert_one))
        .route("/v1/blueprints/{bp}/entities/bulk", post(upsert_bulk))
        .route(
            "/v1/blueprints/{bp}/entities/{id}",
            get(get_entity).delete(delete_one),
        )
        .route(
            "/v1/blueprints/{bp}/bulk/entities/delete",
            post(delete_bulk),
        )
        .route(
            "/v1/blueprints/entities/datasource-entities",
            post(datasource_entities),
        )
        .route("/v1/entities/search", post(search_entities))
        .route("/v1/integration", post(create_integration))
        .route(
            "/v1/integration/{id}",
            get(get_integration).patch(patch_integration),
        )
        .route(
            "/v1/integration/{id}/config",
            patch(patch_integration_config),
        )
        .route(
            "/v1/integration/{id}/resync-state",
            patch(patch_resync_state),
        )
        .route(
            "/v1/integration/{id}/resync-request",
            get(get_resync_request),
        )
        // route_layer: runs after routing, so the matched route pattern is known and counted.
        .route_layer(middleware::from_fn_with_state(state, gate))
}

fn trace_id() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// Port's error answer: `{ok: false, error, message}` with an `x-trace-id`.
pub fn refuse(refusal: Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        axum::Json(json!({"ok": false, "error": refusal.error, "message": refusal.message})),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&trace_id()) {
        response.headers_mut().insert("x-trace-id", value);
    }
    response
}

fn ok(status: StatusCode, mut body: Value) -> Response {
    body["ok"] = Value::Bool(true);
    (status, axum::Json(body)).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    refuse(Refusal::new(400, "invalid_request", message))
}

/// Every `/v1` request passes here: counted, delayed, rate-limited, faulted, authenticated.
async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| request.uri().path().to_owned());
    lock(&state.counters).count_request(format!("{} {route}", request.method()));

    let write = is_entity_write(request.method(), &route);
    let (latency, verdict, answer_delay) = {
        let mut faults = lock(&state.faults);
        let delay = if write {
            faults.answer_delay()
        } else {
            Default::default()
        };
        (faults.latency(), faults.judge(write), delay)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(quota) = &state.quota
        && let Some(wait) = lock(quota).take()
    {
        lock(&state.counters).over_quota += 1;
        let mut response = refuse(Refusal::new(
            429,
            "rate_limit_exceeded",
            "too many requests",
        ));
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return response;
    }
    match verdict {
        Verdict::Serve | Verdict::LoseAnswer => {}
        Verdict::Fail {
            status,
            retry_after,
        } => {
            let mut response = refuse(Refusal::new(
                status,
                "injected_fault",
                format!("fault injected by the emulator ({status})"),
            ));
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            return response;
        }
        Verdict::Drop => return dropped_connection(),
    }
    if route != TOKEN_ROUTE && !authorized(&state, request.headers()) {
        return refuse(Refusal::new(
            401,
            "unauthorized",
            "missing, invalid or expired access token",
        ));
    }
    let response = next.run(request).await;
    // The write is applied; what follows only decides whether the agent hears of it.
    if !answer_delay.is_zero() {
        tokio::time::sleep(answer_delay).await;
    }
    if verdict == Verdict::LoseAnswer {
        return dropped_connection();
    }
    response
}

/// Requests that change entities: the ones whose answers a fault may lose after applying them.
fn is_entity_write(method: &axum::http::Method, route: &str) -> bool {
    use axum::http::Method;
    matches!(
        (method, route),
        (&Method::POST, "/v1/blueprints/{bp}/entities")
            | (&Method::POST, "/v1/blueprints/{bp}/entities/bulk")
            | (&Method::POST, "/v1/blueprints/{bp}/bulk/entities/delete")
            | (&Method::DELETE, "/v1/blueprints/{bp}/entities/{id}")
    )
}

/// A response whose body fails at once: hyper cuts the connection mid-answer.
fn dropped_connection() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped by the emulator"))
    });
    Response::new(Body::from_stream(failing))
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    lock(&state.tokens)
        .get(token)
        .is_some_and(|expiry| Instant::now() < *expiry)
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("port")
        .to_owned()
}

fn parse_json(body: &Bytes) -> Result<Value, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            400,
            "invalid_request",
            format!("the body is not valid JSON: {e}"),
        )
    })
}

/// The `key=value` pairs of a query string, percent-decoded; keys may repeat.
fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match (
                bytes[i],
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (b'+', _, _) => out.push(b' '),
                (b'%', Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                (b, _, _) => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    raw.as_deref()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn flag(pairs: &[(String, String)], name: &str, default: bool) -> bool {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.eq_ignore_ascii_case("true"))
        .unwrap_or(default)
}

fn write_mode(query: &Option<String>) -> (WriteMode, bool) {
    let pairs = query_pairs(query);
    let mode = WriteMode {
        merge: flag(&pairs, "merge", false),
        create_missing_related_entities: flag(&pairs, "create_missing_related_entities", false),
    };
    (mode, flag(&pairs, "validation_only", false))
}

async fn access_token(State(state): State<AppState>, body: Bytes) -> Response {
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return refuse(r),
    };
    let config = &state.config;
    if body["clientId"].as_str() != Some(config.client_id.as_str())
        || body["clientSecret"].as_str() != Some(config.client_secret.as_str())
    {
        return refuse(Refusal::new(
            401,
            "unauthorized",
            "invalid client id or client secret",
        ));
    }
    let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    lock(&state.tokens).insert(token.clone(), Instant::now() + config.token_ttl);
    ok(
        StatusCode::OK,
        json!({"accessToken": token, "expiresIn": config.token_ttl.as_secs_f64(), "tokenType": "Bearer"}),
    )
}

async fn organization(State(state): State<AppState>) -> Response {
    ok(
        StatusCode::OK,
        json!({"organization": {"id": state.config.organization_id, "name": "Port emulator", "featureFlags": []}}),
    )
}

async fn kafka_credentials(State(state): State<AppState>) -> Response {
    ok(
        StatusCode::OK,
        json!({"credentials": {"username": state.config.kafka_username, "password": state.config.kafka_password}}),
    )
}

/// Stores a new blueprint, filling in Port's defaults.
pub fn insert_blueprint(store: &mut Store, mut blueprint: Value) -> Result<Value, Refusal> {
    let identifier = blueprint
        .get("identifier")
        .and_then(Value::as_str)
        .filter(|id| {
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@_=-".contains(c))
        })
        .ok_or_else(|| {
            Refusal::new(
                422,
                "invalid_request",
                "a blueprint needs an identifier matching ^[A-Za-z0-9@_=\\-]+$",
            )
        })?
        .to_owned();
    if store.blueprints.contains_key(&identifier) {
        return Err(Refusal::new(
            409,
            "identifier_taken",
            format!("blueprint \"{identifier}\" already exists"),
        ));
    }
    if blueprint.get("schema").is_none() {
        blueprint["schema"] = json!({"properties": {}, "required": []});
    }
    if blueprint.get("relations").is_none() {
        blueprint["relations"] = json!({});
    }
    if let Some(relations) = blueprint["relations"].as_object() {
        for (name, spec) in relations {
            let target = spec
                .get("target")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if target != identifier && !store.blueprints.contains_key(target) {
                return Err(Refusal::new(
                    404,
                    "not_found",
                    format!("relation \"{name}\" targets unknown blueprint \"{target}\""),
                ));
            }
        }
    }
    store.blueprints.insert(identifier, blueprint.clone());
    Ok(blueprint)
}

async fn list_blueprints(State(state): State<AppState>) -> Response {
    let blueprints: Vec<Value> = lock(&state.store).blueprints.values().cloned().collect();
    ok(StatusCode::OK, json!({"blueprints": blueprints}))
}

async fn create_blueprint(State(state): State<AppState>, body: Bytes) -> Response {
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return refuse(r),
    };
    match insert_blueprint(&mut lock(&state.store), body) {
        Ok(blueprint) => ok(StatusCode::CREATED, json!({"blueprint": blueprint})),
        Err(r) => refuse(r),
    }
}

fn blueprint_not_found(id: &str) -> Response {
    refuse(Refusal::new(
        404,
        "not_found",
        format!("blueprint \"{id}\" was not found"),
    ))
}

async fn get_blueprint(State(state): State<AppState>, Path(bp): Path<String>) -> Response {
    match lock(&state.store).blueprints.get(&bp) {
        Some(blueprint) => ok(StatusCode::OK, json!({"blueprint": blueprint})),
        None => blueprint_not_found(&bp),
    }
}

async fn patch_blueprint(
    State(state): State<AppState>,
    Path(bp): Path<String>,
    body: Bytes,
) -> Response {
    let patch = match parse_json(&body) {
        Ok(Value::Object(p)) => p,
        Ok(_) => return bad_request("a blueprint patch must be an object"),
        Err(r) => return refuse(r),
    };
    let mut store = lock(&state.store);
    let Some(blueprint) = store.blueprints.get_mut(&bp) else {
        return blueprint_not_found(&bp);
    };
    for (key, value) in patch {
        if key != "identifier" {
            blueprint[key] = value;
        }
    }
    ok(StatusCode::OK, json!({"blueprint": blueprint.clone()}))
}

async fn delete_blueprint(State(state): State<AppState>, Path(bp): Path<String>) -> Response {
    let mut store = lock(&state.store);
    if !store.blueprints.contains_key(&bp) {
        return blueprint_not_found(&bp);
    }
    if store.entities.keys().any(|(b, _)| *b == bp) {
        return refuse(Refusal::new(
            422,
            "has_entities",
            format!("blueprint \"{bp}\" still has entities"),
        ));
    }
    store.blueprints.remove(&bp);
    ok(StatusCode::OK, json!({}))
}

/// Runs a write against the real store, or against a scratch copy when only validating.
fn with_store<T>(
    state: &AppState,
    validation_only: bool,
    write: impl FnOnce(&mut Store) -> T,
) -> T {
    let mut store = lock(&state.store);
    if validation_only {
        let mut scratch = Store {
            blueprints: store.blueprints.clone(),
            entities: store.entities.clone(),
            ..Store::default()
        };
        write(&mut scratch)
    } else {
        write(&mut store)
    }
}

async fn upsert_one(
    State(state): State<AppState>,
    Path(bp): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let entity = match parse_json(&body) {
        Ok(e) => e,
        Err(r) => return refuse(r),
    };
    let (mode, validation_only) = write_mode(&query);
    let datasource = user_agent(&headers);
    let result = with_store(&state, validation_only, |store| {
        let written = store.upsert(&bp, &entity, mode, &datasource)?;
        let stored = store.entities[&(bp.clone(), written.identifier.clone())].to_json();
        Ok::<_, Refusal>((written, stored))
    });
    match result {
        Ok((written, stored)) => {
            if !validation_only {
                lock(&state.counters).count_upsert(&bp, &written.identifier);
            }
            let status = if written.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            ok(status, json!({"entity": stored}))
        }
        Err(r) => refuse(r),
    }
}

async fn upsert_bulk(
    State(state): State<AppState>,
    Path(bp): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return refuse(r),
    };
    let Some(entities) = body.get("entities").and_then(Value::as_array) else {
        return bad_request("the body must be {\"entities\": [...]}");
    };
    if entities.len() > state.config.bulk_max_entities {
        return refuse(Refusal::new(
            422,
            "invalid_request",
            format!(
                "at most {} entities per bulk request, got {}",
                state.config.bulk_max_entities,
                entities.len()
            ),
        ));
    }
    let (mode, validation_only) = write_mode(&query);
    let datasource = user_agent(&headers);
    let (successes, errors, written) = with_store(&state, validation_only, |store| {
        let mut successes = Vec::new();
        let mut errors = Vec::new();
        let mut written = Vec::new();
        for (index, entity) in entities.iter().enumerate() {
            match store.upsert(&bp, entity, mode, &datasource) {
                Ok(w) => {
                    successes.push(
                        json!({"index": index, "identifier": w.identifier, "created": w.created}),
                    );
                    written.push(w.identifier);
                }
                Err(r) => {
                    let identifier = entity
                        .get("identifier")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown");
                    errors.push(json!({"index": index, "identifier": identifier, "statusCode": r.status, "error": r.error, "message": r.message}));
                }
            }
        }
        (successes, errors, written)
    });
    if !validation_only {
        let mut counters = lock(&state.counters);
        for identifier in &written {
            counters.count_upsert(&bp, identifier);
        }
    }
    // Port answers a partly refused bulk with 207 Multi-Status; the body says which.
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    ok(status, json!({"entities": successes, "errors": errors}))
}

async fn get_entity(
    State(state): State<AppState>,
    Path((bp, id)): Path<(String, String)>,
) -> Response {
    match lock(&state.store).entities.get(&(bp.clone(), id.clone())) {
        Some(entity) => ok(StatusCode::OK, json!({"entity": entity.to_json()})),
        None => refuse(Refusal::new(
            404,
            "not_found",
            format!("entity \"{id}\" of blueprint \"{bp}\" was not found"),
        )),
    }
}

fn delete_ids(
    state: &AppState,
    bp: &str,
    ids: &[String],
    query: &Option<String>,
) -> Result<Vec<String>, Refusal> {
    let delete_dependents = flag(&query_pairs(query), "delete_dependents", false);
    let (deleted, total) = lock(&state.store).delete(bp, ids, delete_dependents)?;
    lock(&state.counters).entities_deleted += total;
    Ok(deleted)
}

async fn delete_one(
    State(state): State<AppState>,
    Path((bp, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    match delete_ids(&state, &bp, std::slice::from_ref(&id), &query) {
        Ok(deleted) if deleted.is_empty() => refuse(Refusal::new(
            404,
            "not_found",
            format!("entity \"{id}\" of blueprint \"{bp}\" was not found"),
        )),
        Ok(_) => ok(StatusCode::OK, json!({})),
        Err(r) => refuse(r),
    }
}

async fn delete_bulk(
    State(state): State<AppState>,
    Path(bp): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return refuse(r),
    };
    let Some(ids) = body
        .get("entities")
        .and_then(Value::as_array)
        .and_then(|ids| {
            ids.iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
        })
    else {
        return bad_request("the body must be {\"entities\": [\"identifier\", ...]}");
    };
    if ids.len() > 100 {
        return refuse(Refusal::new(
            422,
            "invalid_request",
            format!("at most 100 entities per bulk delete, got {}", ids.len()),
        ));
    }
    if !lock(&state.store).blueprints.contains_key(&bp) {
        return blueprint_not_found(&bp);
    }
    match delete_ids(&state, &bp, &ids, &query) {
        Ok(deleted) => ok(StatusCode::OK, json!({"deletedEntities": deleted})),
        Err(r) => refuse(r),
    }
}

/// Cursor of the owned-entity listing: `blueprint/identifier` of the last entity sent
/// (blueprint identifiers cannot hold `/`).
fn cursor_key(cursor: &str) -> Option<(String, String)> {
    let (bp, id) = cursor.split_once('/')?;
    Some((bp.to_owned(), id.to_owned()))
}

async fn datasource_entities(State(state): State<AppState>, body: Bytes) -> Response {
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return refuse(r),
    };
    let (Some(prefix), Some(suffix)) = (
        body["datasource_prefix"].as_str(),
        body["datasource_suffix"].as_str(),
    ) else {
        return bad_request("datasource_prefix and datasource_suffix are required");
    };
    let limit = body["limit"].as_u64().unwrap_or(5000).clamp(1, 5000) as usize;
    let before = match body.get("before").and_then(Value::as_str) {
        Some(text) => match text.parse::<Timestamp>() {
            Ok(ts) => Some(ts),
            Err(e) => return bad_request(format!("before must be an ISO 8601 time: {e}")),
        },
        None => None,
    };
    let after = match body.get("from").and_then(Value::as_str) {
        Some(cursor) => match cursor_key(cursor) {
            Some(key) => Some(key),
            None => return bad_request("from is not a cursor this API returned"),
        },
        None => None,
    };
    let store = lock(&state.store);
    let range = match &after {
        Some(key) => store.entities.range::<(String, String), _>((
            std::ops::Bound::Excluded(key),
            std::ops::Bound::Unbounded,
        )),
        None => store.entities.range::<(String, String), _>(..),
    };
    let mut matching = range.filter(|(_, e)| {
        e.datasource.starts_with(prefix)
            && e.datasource.ends_with(suffix)
            && before.is_none_or(|b| e.updated_at < b)
    });
    let page: Vec<_> = matching.by_ref().take(limit).collect();
    let next = match (matching.next(), page.last()) {
        (Some(_), Some(((bp, id), _))) => Value::from(format!("{bp}/{id}")),
        _ => Value::Null,
    };
    let entities: Vec<Value> = page.into_iter().map(|(_, e)| e.to_json()).collect();
    ok(StatusCode::OK, json!({"entities": entities, "next": next}))
}

async fn search_entities(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let search_query = match parse_json(&body) {
        Ok(q) => q,
        Err(r) => return refuse(r),
    };
    let include: Vec<String> = query_pairs(&query)
        .into_iter()
        .filter(|(k, _)| k == "include")
        .map(|(_, v)| v)
        .collect();
    let store = lock(&state.store);
    let mut found = Vec::new();
    for entity in store.entities.values() {
        match search::matches(&search_query, entity) {
            Ok(true) => {
                let full = entity.to_json();
                if include.is_empty() {
                    found.push(full);
                } else {
                    let picked: serde_json::Map<String, Value> = include
                        .iter()
                        .filter_map(|k| full.get(k).map(|v| (k.clone(), v.clone())))
                        .collect();
                    found.push(Value::Object(picked));
                }
            }
            Ok(false) => {}
            Err(message) => return refuse(Refusal::new(400, "invalid_search_query", message)),
        }
    }
    ok(StatusCode::OK, json!({"entities": found}))
}

fn integration_not_found(id: &str) -> Response {
    refuse(Refusal::new(
        404,
        "not_found",
        format!("integration \"{id}\" was not found"),
    ))
}

fn now_iso() -> String {
    iso(Timestamp::now())
}

async fn create_integration(State(state): State<AppState>, body: Bytes) -> Response {
    let body = match parse_json(&body) {
        Ok(b) => b,
        Err(r) => return refuse(r),
    };
    let Some(id) = body["installationId"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
    else {
        return bad_request("installationId is required");
    };
    let mut store = lock(&state.store);
    if store.integrations.contains_key(&id) {
        return refuse(Refusal::new(
            409,
            "identifier_taken",
            format!("integration \"{id}\" already exists"),
        ));
    }
    let now = now_iso();
    let integration = json!({
        "identifier": id,
        "installationId": id,
        "installationAppType": body.get("installationAppType").cloned().unwrap_or(Value::Null),
        "version": body.get("version").cloned().unwrap_or(Value::Null),
        "config": body.get("config").cloned().unwrap_or_else(|| json!({})),
        "changelogDestination": body.get("changelogDestination").cloned().unwrap_or(Value::Null),
        "resyncState": Value::Null,
        "createdAt": now,
        "updatedAt": now,
    });
    store.integrations.insert(id, integration.clone());
    ok(StatusCode::OK, json!({"integration": integration}))
}

async fn get_integration(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match lock(&state.store).integrations.get(&id) {
        Some(integration) => ok(StatusCode::OK, json!({"integration": integration})),
        None => integration_not_found(&id),
    }
}

/// Applies `change` to the stored integration and answers with it.
fn update_integration(state: &AppState, id: &str, change: impl FnOnce(&mut Value)) -> Response {
    let mut store = lock(&state.store);
    let Some(integration) = store.integrations.get_mut(id) else {
        return integration_not_found(id);
    };
    change(integration);
    integration["updatedAt"] = Value::from(now_iso());
    ok(StatusCode::OK, json!({"integration": integration.clone()}))
}

async fn patch_integration(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let patch = match parse_json(&body) {
        Ok(Value::Object(p)) => p,
        Ok(_) => return bad_request("an integration patch must be an object"),
        Err(r) => return refuse(r),
    };
    update_integration(&state, &id, |integration| {
        for (key, value) in patch {
            if key != "identifier" && key != "installationId" {
                integration[key] = value;
            }
        }
    })
}

async fn patch_integration_config(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let config = match parse_json(&body) {
        Ok(b) => match b.get("config") {
            Some(c) => c.clone(),
            None => return bad_request("the body must be {\"config\": ...}"),
        },
        Err(r) => return refuse(r),
    };
    update_integration(&state, &id, |integration| integration["config"] = config)
}

async fn patch_resync_state(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let mut resync = match parse_json(&body) {
        Ok(b @ Value::Object(_)) => b,
        Ok(_) => return bad_request("the resync state must be an object"),
        Err(r) => return refuse(r),
    };
    match resync["status"].as_str() {
        Some("running" | "completed" | "failed" | "aborted") => {}
        other => {
            return bad_request(format!(
                "status must be running, completed, failed or aborted, got {other:?}"
            ));
        }
    }
    resync["updatedAt"] = Value::from(now_iso());
    update_integration(&state, &id, |integration| {
        integration["resyncState"] = resync
    })
}

async fn get_resync_request(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let store = lock(&state.store);
    if !store.integrations.contains_key(&id) {
        return integration_not_found(&id);
    }
    let request = store
        .resync_requests
        .get(&id)
        .cloned()
        .unwrap_or(Value::Null);
    ok(StatusCode::OK, json!({"request": request}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_and_repeat() {
        let pairs = query_pairs(&Some(
            "include=blueprint&include=identifier&merge=true&x=a%2Fb+c".into(),
        ));
        assert_eq!(pairs[0], ("include".into(), "blueprint".into()));
        assert_eq!(pairs[1], ("include".into(), "identifier".into()));
        assert!(flag(&pairs, "merge", false));
        assert_eq!(pairs[3].1, "a/b c");
    }
}
