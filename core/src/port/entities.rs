//! Entity calls: bulk upsert (with the single-upsert fallback), bulk delete, the owned-entity
//! listing and search.

use std::collections::HashSet;

use futures_util::{StreamExt, stream};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::client::{Call, PortClient, segment};
use super::error::PortError;
use super::model::{
    DeleteReport, Entity, EntityError, OwnedEntitiesPage, UpsertOptions, UpsertOutcome,
};
use crate::retry::{Idempotency, is_retryable_status};
use crate::text::printable;

/// A batch ready to send: the entities' positions in the caller's slice and their JSON.
#[derive(Debug)]
struct Batch {
    positions: Vec<usize>,
    encoded: Vec<Vec<u8>>,
}

const BULK_ENVELOPE: &[u8] = b"{\"entities\":[]}";

/// Cuts `encoded` entities into batches of at most `max_entities` and `max_bytes` of body.
/// An entity larger than `max_bytes` on its own still gets a batch: Port's answer decides.
fn plan_batches(encoded: Vec<Vec<u8>>, max_entities: usize, max_bytes: usize) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut current = Batch {
        positions: Vec::new(),
        encoded: Vec::new(),
    };
    let mut size = BULK_ENVELOPE.len();
    for (position, entity) in encoded.into_iter().enumerate() {
        let added = entity.len() + usize::from(!current.encoded.is_empty());
        if !current.encoded.is_empty()
            && (current.encoded.len() >= max_entities || size + added > max_bytes)
        {
            batches.push(std::mem::replace(
                &mut current,
                Batch {
                    positions: Vec::new(),
                    encoded: Vec::new(),
                },
            ));
            size = BULK_ENVELOPE.len();
        }
        size += entity.len() + usize::from(!current.encoded.is_empty());
        current.positions.push(position);
        current.encoded.push(entity);
    }
    if !current.encoded.is_empty() {
        batches.push(current);
    }
    batches
}

fn bulk_body(encoded: &[Vec<u8>]) -> Vec<u8> {
    let len = encoded.iter().map(|e| e.len() + 1).sum::<usize>() + BULK_ENVELOPE.len();
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(b"{\"entities\":[");
    for (i, entity) in encoded.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(entity);
    }
    body.extend_from_slice(b"]}");
    body
}

#[derive(Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    entities: Vec<BulkSuccess>,
    #[serde(default)]
    errors: Vec<BulkFailure>,
}

#[derive(Deserialize)]
struct BulkSuccess {
    index: usize,
    identifier: String,
    #[serde(default)]
    created: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BulkFailure {
    index: usize,
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct DeleteAnswer {
    #[serde(default, rename = "deletedEntities")]
    deleted_entities: Vec<String>,
}

#[derive(Deserialize)]
struct SearchAnswer {
    #[serde(default)]
    entities: Vec<Value>,
}

fn upsert_query(call: Call, options: UpsertOptions) -> Call {
    call.idempotent()
        .query("upsert", true)
        .query("merge", options.merge)
        .query(
            "create_missing_related_entities",
            options.create_missing_related_entities,
        )
        .query("validation_only", false)
}

/// Turns a failed request into the error of each entity it carried.
fn request_failure(error: &PortError) -> EntityError {
    match error {
        PortError::Api {
            status,
            error: code,
            message,
            ..
        } => EntityError {
            status: Some(*status),
            error: code.clone().unwrap_or_else(|| "request_failed".to_owned()),
            message: message.clone(),
        },
        other => EntityError {
            status: other.status(),
            error: "request_failed".to_owned(),
            message: other.to_string(),
        },
    }
}

/// Errors that no other request can escape either: stop the whole call.
/// Failures no other request of the call can escape: bad credentials or settings, and Port
/// unavailable (no answer, or 429/408/5xx still after every retry). The caller stops rather
/// than spend the whole retry budget again on each remaining batch.
fn is_fatal(error: &PortError) -> bool {
    match error {
        PortError::Credentials { .. } | PortError::Config { .. } | PortError::Network { .. } => {
            true
        }
        PortError::Api { status, .. } => StatusCode::from_u16(*status)
            .is_ok_and(|s| is_retryable_status(s, Idempotency::Idempotent)),
        PortError::Decode { .. } => false,
    }
}

impl PortClient {
    /// Upserts `entities` of one blueprint in bulk batches and reports each entity's outcome,
    /// in input order. Partial success is normal: one bad entity fails alone.
    ///
    /// A batch that Port refuses as too large (413) is sent again entity by entity. Other
    /// batch-level refusals (400, 404, ...) fail that batch's entities; failures that no request
    /// can escape (credentials, configuration, Port unavailable after retries) fail the whole
    /// call.
    pub async fn upsert_entities(
        &self,
        blueprint: &str,
        entities: &[Entity],
        options: UpsertOptions,
    ) -> Result<Vec<UpsertOutcome>, PortError> {
        let encoded: Vec<Vec<u8>> = entities
            .iter()
            .map(|e| serde_json::to_vec(e).expect("entities are plain JSON"))
            .collect();
        let limits = self.config().bulk;
        let batches = plan_batches(encoded, limits.max_entities, limits.max_bytes);
        let concurrency = self.config().max_concurrency;
        let mut outcomes: Vec<Option<UpsertOutcome>> = vec![None; entities.len()];
        let mut results = stream::iter(batches)
            .map(|batch| self.upsert_batch(blueprint, batch, options))
            .buffer_unordered(concurrency);
        while let Some(result) = results.next().await {
            for (position, outcome) in result? {
                outcomes[position] = Some(outcome);
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every entity belongs to exactly one batch"))
            .collect())
    }

    async fn upsert_batch(
        &self,
        blueprint: &str,
        batch: Batch,
        options: UpsertOptions,
    ) -> Result<Vec<(usize, UpsertOutcome)>, PortError> {
        let path = format!("/blueprints/{}/entities/bulk", segment(blueprint));
        let call = upsert_query(Call::new(Method::POST, path), options)
            .raw_json(bulk_body(&batch.encoded));
        let answer = match self.execute(&call).await {
            Ok(answer) => answer,
            Err(PortError::Api { status: 413, .. }) => {
                tracing::info!(
                    blueprint,
                    entities = batch.encoded.len(),
                    "bulk upsert too large for Port (413); upserting one by one"
                );
                return self.upsert_one_by_one(blueprint, batch, options).await;
            }
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => {
                let failure = request_failure(&e);
                return Ok(batch
                    .positions
                    .into_iter()
                    .map(|p| (p, UpsertOutcome::Failed(failure.clone())))
                    .collect());
            }
        };
        let parsed: BulkAnswer = answer.json(&call)?;
        let mut outcomes: Vec<Option<UpsertOutcome>> = vec![None; batch.positions.len()];
        for success in parsed.entities {
            if let Some(slot) = outcomes.get_mut(success.index) {
                *slot = Some(UpsertOutcome::Upserted {
                    identifier: success.identifier,
                    created: success.created,
                });
            }
        }
        for failure in parsed.errors {
            if let Some(slot) = outcomes.get_mut(failure.index) {
                *slot = Some(UpsertOutcome::Failed(EntityError {
                    status: failure.status_code,
                    error: failure.error.unwrap_or_else(|| "unknown_error".to_owned()),
                    message: failure.message.unwrap_or_default(),
                }));
            }
        }
        Ok(batch
            .positions
            .into_iter()
            .zip(outcomes)
            .map(|(position, outcome)| {
                // Port must account for every entity it was sent; silence is not success.
                let outcome = outcome.unwrap_or_else(|| {
                    UpsertOutcome::Failed(EntityError {
                        status: None,
                        error: "missing_from_answer".to_owned(),
                        message: "Port's bulk answer did not mention this entity".to_owned(),
                    })
                });
                (position, outcome)
            })
            .collect())
    }

    async fn upsert_one_by_one(
        &self,
        blueprint: &str,
        batch: Batch,
        options: UpsertOptions,
    ) -> Result<Vec<(usize, UpsertOutcome)>, PortError> {
        let path = format!("/blueprints/{}/entities", segment(blueprint));
        let mut outcomes = Vec::with_capacity(batch.positions.len());
        for (position, encoded) in batch.positions.into_iter().zip(batch.encoded) {
            let call =
                upsert_query(Call::new(Method::POST, path.clone()), options).raw_json(encoded);
            let outcome = match self.execute(&call).await {
                Ok(answer) => {
                    #[derive(Deserialize)]
                    struct Single {
                        entity: Option<SingleEntity>,
                    }
                    #[derive(Deserialize)]
                    struct SingleEntity {
                        identifier: String,
                    }
                    let parsed: Single = answer.json(&call)?;
                    let identifier = parsed.entity.map(|e| e.identifier).unwrap_or_default();
                    UpsertOutcome::Upserted {
                        identifier,
                        created: answer.status == reqwest::StatusCode::CREATED,
                    }
                }
                Err(e) if is_fatal(&e) => return Err(e),
                Err(PortError::Api {
                    status: 404,
                    error: Some(code),
                    message,
                    ..
                }) if code == "not_found" => UpsertOutcome::Failed(EntityError {
                    status: Some(404),
                    error: code,
                    message: format!("a related entity does not exist: {message}"),
                }),
                Err(e) => UpsertOutcome::Failed(request_failure(&e)),
            };
            outcomes.push((position, outcome));
        }
        Ok(outcomes)
    }

    /// Deletes entities of one blueprint, in batches, and reports what Port confirmed.
    pub async fn delete_entities(
        &self,
        blueprint: &str,
        identifiers: &[String],
        delete_dependents: bool,
    ) -> Result<DeleteReport, PortError> {
        let path = format!("/blueprints/{}/bulk/entities/delete", segment(blueprint));
        let mut report = DeleteReport::default();
        for chunk in identifiers.chunks(self.config().delete_batch_size) {
            let call = Call::new(Method::POST, path.clone())
                .idempotent()
                .query("delete_dependents", delete_dependents)
                .json(&serde_json::json!({ "entities": chunk }));
            match self.execute(&call).await {
                Ok(answer) => {
                    let parsed: DeleteAnswer = answer.json(&call)?;
                    let deleted: std::collections::HashSet<&str> =
                        parsed.deleted_entities.iter().map(String::as_str).collect();
                    for id in chunk {
                        if deleted.contains(id.as_str()) {
                            report.deleted.push(id.clone());
                        } else {
                            report.not_deleted.push(id.clone());
                        }
                    }
                }
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => {
                    let failure = request_failure(&e);
                    report
                        .failed
                        .extend(chunk.iter().map(|id| (id.clone(), failure.clone())));
                }
            }
        }
        Ok(report)
    }

    /// One page of the entities this integration owns (by `$datasource`), optionally only
    /// those last updated before `before` (ISO 8601).
    pub async fn owned_entities_page(
        &self,
        before: Option<&str>,
        cursor: Option<&str>,
    ) -> Result<OwnedEntitiesPage, PortError> {
        let (prefix, suffix) = self.config().identity.datasource_bounds();
        let mut body = serde_json::json!({
            "datasource_prefix": prefix,
            "datasource_suffix": suffix,
            "limit": self.config().owned_page_limit,
        });
        if let Some(before) = before {
            body["before"] = Value::from(before);
        }
        if let Some(cursor) = cursor {
            body["from"] = Value::from(cursor);
        }
        let call = Call::new(Method::POST, "/blueprints/entities/datasource-entities")
            .idempotent()
            .json(&body);
        self.execute_json(&call).await
    }

    /// Every entity this integration owns, following the pages to the end.
    pub async fn owned_entities(&self, before: Option<&str>) -> Result<Vec<Value>, PortError> {
        let mut all = Vec::new();
        self.each_owned_page(before, |page| all.extend(page))
            .await?;
        Ok(all)
    }

    /// The (blueprint, identifier) of every entity this integration owns; the pages are read
    /// one at a time, so only the keys are held.
    pub async fn owned_keys(&self) -> Result<HashSet<(String, String)>, PortError> {
        let mut keys = HashSet::new();
        self.each_owned_page(None, |page| {
            keys.extend(page.into_iter().filter_map(|entity| {
                Some((
                    entity.get("blueprint")?.as_str()?.to_owned(),
                    entity.get("identifier")?.as_str()?.to_owned(),
                ))
            }))
        })
        .await?;
        Ok(keys)
    }

    /// Hands each page of owned entities to `take`. A cursor Port gives twice, or more pages
    /// than its entities could fill, is an error rather than a walk that never ends.
    async fn each_owned_page(
        &self,
        before: Option<&str>,
        mut take: impl FnMut(Vec<Value>),
    ) -> Result<(), PortError> {
        /// Far more than any organization's entities at the smallest page Port serves.
        const MAX_PAGES: usize = 100_000;
        let mut cursors: HashSet<String> = HashSet::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = self.owned_entities_page(before, cursor.as_deref()).await?;
            take(page.entities);
            match page.next {
                None => return Ok(()),
                Some(next) if !cursors.insert(next.clone()) => {
                    return Err(PortError::Decode {
                        call: "POST /blueprints/entities/datasource-entities".to_owned(),
                        reason: format!(
                            "Port gave the page cursor {} a second time; stopped reading a listing that would never end",
                            printable(&next)
                        ),
                    });
                }
                Some(next) => cursor = Some(next),
            }
        }
        Err(PortError::Decode {
            call: "POST /blueprints/entities/datasource-entities".to_owned(),
            reason: format!("more than {MAX_PAGES} pages; stopped reading"),
        })
    }

    /// Port's entity search. `include` limits the fields returned (empty: all).
    pub async fn search_entities(
        &self,
        query: &Value,
        include: &[&str],
    ) -> Result<Vec<Value>, PortError> {
        let mut call = Call::new(Method::POST, "/entities/search")
            .idempotent()
            .query("exclude_calculated_properties", true);
        for field in include {
            call = call.query("include", field);
        }
        let parsed: SearchAnswer = self.execute_json(&call.json(query)).await?;
        Ok(parsed.entities)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(sizes: &[usize]) -> Vec<Vec<u8>> {
        sizes.iter().map(|&n| vec![b'x'; n]).collect()
    }

    #[test]
    fn batches_respect_count_limit() {
        let batches = plan_batches(encoded(&[10; 45]), 20, 1 << 20);
        let sizes: Vec<usize> = batches.iter().map(|b| b.encoded.len()).collect();
        assert_eq!(sizes, [20, 20, 5]);
        let positions: Vec<usize> = batches.iter().flat_map(|b| b.positions.clone()).collect();
        assert_eq!(positions, (0..45).collect::<Vec<_>>());
    }

    #[test]
    fn batches_respect_byte_limit_exactly() {
        // Envelope 15 bytes + 4 entities of 20 bytes + 3 commas = 98 bytes.
        let batches = plan_batches(encoded(&[20; 5]), 20, 98);
        assert_eq!(
            batches.iter().map(|b| b.encoded.len()).collect::<Vec<_>>(),
            [4, 1]
        );
        assert!(bulk_body(&batches[0].encoded).len() <= 98);
        assert_eq!(bulk_body(&batches[0].encoded).len(), 98);
    }

    #[test]
    fn oversized_entity_travels_alone() {
        let batches = plan_batches(encoded(&[10, 500, 10]), 20, 100);
        assert_eq!(
            batches
                .iter()
                .map(|b| b.positions.clone())
                .collect::<Vec<_>>(),
            [vec![0], vec![1], vec![2]]
        );
    }

    #[test]
    fn bulk_body_is_valid_json() {
        let entities = [Entity::new("svc", "a"), Entity::new("svc", "b")];
        let encoded: Vec<Vec<u8>> = entities
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect();
        let body: Value = serde_json::from_slice(&bulk_body(&encoded)).unwrap();
        assert_eq!(body["entities"][1]["identifier"], "b");
    }
}
