//! The test controls under `/_emulator/`: statistics, every entity, reset, faults, tokens.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::faults::FaultSpec;
use crate::stats::StatsReport;
use crate::store::iso;
use crate::{AppState, Shared, lock};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/entities", get(entities))
        .route("/_emulator/reset", post(reset_route))
        .route("/_emulator/faults", post(faults))
        .route("/_emulator/tokens/revoke", post(revoke_tokens))
        .route(
            "/_emulator/integrations/{id}/resync-request",
            post(request_resync),
        )
}

pub fn stats_json(state: &Shared) -> Value {
    let (entities_total, by_blueprint) = {
        let store = lock(&state.store);
        (store.entities.len() as u64, store.by_blueprint())
    };
    let counters = lock(&state.counters);
    serde_json::to_value(StatsReport {
        requests: &counters.requests,
        entities_upserted: counters.entities_upserted,
        entities_deleted: counters.entities_deleted,
        entities_total,
        by_blueprint,
        upserts_per_entity: &counters.upserts_per_entity,
        over_quota: counters.over_quota,
        writes_span_ms: counters.writes_between.map_or(0, |(first, last)| {
            last.duration_since(first).as_millis() as u64
        }),
    })
    .expect("stats are plain JSON")
}

/// Every stored entity as Port returns it, plus the `$datasource` Port recorded for it.
pub fn entities_json(state: &Shared) -> Value {
    let store = lock(&state.store);
    Value::Array(
        store
            .entities
            .values()
            .map(|e| {
                let mut json = e.to_json();
                json["$datasource"] = Value::from(e.datasource.clone());
                json
            })
            .collect(),
    )
}

/// Forgets all data, counters and faults; credentials and issued tokens stay valid.
pub fn reset(state: &Shared) {
    *lock(&state.store) = Default::default();
    *lock(&state.counters) = Default::default();
    *lock(&state.faults) = Default::default();
}

async fn stats(State(state): State<AppState>) -> Response {
    axum::Json(stats_json(&state)).into_response()
}

async fn entities(State(state): State<AppState>) -> Response {
    axum::Json(entities_json(&state)).into_response()
}

async fn reset_route(State(state): State<AppState>) -> Response {
    reset(&state);
    axum::Json(json!({"ok": true})).into_response()
}

async fn faults(State(state): State<AppState>, body: Bytes) -> Response {
    let spec: FaultSpec = match serde_json::from_slice(if body.is_empty() { b"{}" } else { &body })
    {
        Ok(spec) => spec,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"ok": false, "message": e.to_string()})),
            )
                .into_response();
        }
    };
    match lock(&state.faults).set(spec) {
        Ok(()) => axum::Json(json!({"ok": true})).into_response(),
        Err(message) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"ok": false, "message": message})),
        )
            .into_response(),
    }
}

async fn revoke_tokens(State(state): State<AppState>) -> Response {
    lock(&state.tokens).clear();
    axum::Json(json!({"ok": true})).into_response()
}

/// Records a resync request for integration `id`, as pressing "Resync" in Port's UI does.
async fn request_resync(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let request = record_resync_request(&state, id);
    axum::Json(json!({"ok": true, "request": request})).into_response()
}

pub(crate) fn record_resync_request(state: &AppState, id: String) -> Value {
    let request = json!({"id": format!("{:016x}", fastrand::u64(..)), "updatedAt": iso(jiff::Timestamp::now())});
    lock(&state.store)
        .resync_requests
        .insert(id, request.clone());
    request
}
