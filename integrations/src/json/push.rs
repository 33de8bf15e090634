//! The `json` integration's push endpoint: the fixed contract by which a pipeline or a script
//! pushes items as live events.
//!
//! `POST /integration/webhook` with the body `{"id": "<delivery id>", "kind": "<kind>",
//! "upsert": [raw items], "delete": [raw items]}` (either list may be absent) and the header
//! `X-Port-Agent-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with
//! integration.config.webhookSecret>`. `{"id": "<delivery id>", "resync": true}` (no kind, no
//! items) asks for a full resync instead.

use port_agent_core::Secret;
use port_agent_core::mapping::config::ResourceConfig;
use port_agent_core::webhook::{
    AcceptedEvent, DEFAULT_PATH, HandleError, HandleFuture, Handled, Refusal, WebhookProcessor,
    WebhookRequest,
};
use serde::Deserialize;
use serde_json::value::RawValue;

pub use crate::signature::{signature, verify};

/// The route the push endpoint answers on.
pub const PATH: &str = DEFAULT_PATH;

/// The header carrying the body's signature.
pub const SIGNATURE_HEADER: &str = "x-port-agent-signature-256";

/// The integration setting that holds the webhook secret.
pub const SECRET_SETTING: &str = "webhookSecret";

/// A pushed event, as the body says it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushEvent {
    /// The sender's delivery id: a redelivery with the same id is not applied twice.
    #[serde(default)]
    pub id: Option<String>,
    /// Absent only in a resync request.
    #[serde(default)]
    pub kind: Option<String>,
    /// `true`: the event asks for a full resync and carries no items (a pipeline that changed
    /// what the mapping reads).
    #[serde(default)]
    pub resync: bool,
    #[serde(default)]
    pub upsert: Vec<Box<RawValue>>,
    #[serde(default)]
    pub delete: Vec<Box<RawValue>>,
}

/// Reads a push body; the error names what is wrong with it (never its values).
pub fn parse(body: &[u8]) -> Result<PushEvent, String> {
    let event: PushEvent = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the body is not a push event ({{\"id\", \"kind\", \"upsert\": [...], \"delete\": [...]}}): {} at line {} column {}",
            match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not JSON",
                _ => "wrong shape",
            },
            e.line(),
            e.column()
        )
    })?;
    if event.resync {
        if event.kind.is_some() || !event.upsert.is_empty() || !event.delete.is_empty() {
            return Err(
                "a resync request (\"resync\": true) carries no kind and no items".to_owned(),
            );
        }
    } else if event.kind.as_deref().unwrap_or_default().is_empty() {
        return Err("the event's kind is missing or empty".to_owned());
    }
    if event
        .id
        .as_deref()
        .is_some_and(|id| id.is_empty() || id.len() > 256)
    {
        return Err("the event's id must be 1 to 256 characters".to_owned());
    }
    Ok(event)
}

/// The push endpoint as a live-event processor.
#[derive(Debug, Clone)]
pub struct PushProcessor {
    /// `integration.config.webhookSecret`.
    pub secret: Option<Secret>,
    /// Accept unsigned events when no secret is set.
    pub allow_unsigned: bool,
}

impl WebhookProcessor for PushProcessor {
    fn name(&self) -> &'static str {
        "json-push"
    }

    fn should_process(&self, request: &WebhookRequest<'_>) -> bool {
        request.path == PATH
    }

    fn accept(&self, request: &WebhookRequest<'_>) -> Result<AcceptedEvent, Refusal> {
        let signature = request.header(SIGNATURE_HEADER);
        match &self.secret {
            Some(secret) if !verify(secret.expose().as_bytes(), request.body, signature) => {
                return Err(Refusal::Unauthenticated(format!(
                    "a valid {SIGNATURE_HEADER} header is required"
                )));
            }
            None if !self.allow_unsigned => {
                return Err(Refusal::Unauthenticated(format!(
                    "events are refused: set integration.config.{SECRET_SETTING} and sign them (or live_events.allow_unsigned_webhooks: true)"
                )));
            }
            _ => {}
        }
        let event = parse(request.body).map_err(Refusal::Invalid)?;
        Ok(AcceptedEvent {
            delivery_id: event.id,
            kinds: event.kind.into_iter().collect(),
            payload: request.body.to_vec(),
            // The items are in the payload: handling fetches nothing, so nothing gains from
            // handling events at once.
            ordering_key: None,
            requests_resync: event.resync,
        })
    }

    fn handle<'a>(&'a self, payload: &'a [u8], resource: &'a ResourceConfig) -> HandleFuture<'a> {
        Box::pin(std::future::ready(handle_now(payload, &resource.kind)))
    }
}

/// The items are in the payload: nothing to fetch.
fn handle_now(payload: &[u8], kind: &str) -> Result<Handled, HandleError> {
    let event = parse(payload).map_err(HandleError::Permanent)?;
    if event.kind.as_deref() != Some(kind) {
        return Ok(Handled::default());
    }
    Ok(Handled {
        updated: event.upsert,
        deleted: event.delete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_processor_authenticates_validates_and_hands_items_per_kind() {
        let processor = PushProcessor {
            secret: Some(Secret::new("k".to_owned())),
            allow_unsigned: false,
        };
        let body = br#"{"id": "d", "kind": "service", "upsert": [{"a": 1}], "delete": [{"b": 2}]}"#;
        let headers = vec![(SIGNATURE_HEADER.to_owned(), signature(b"k", body))];
        let request = WebhookRequest {
            path: PATH,
            headers: &headers,
            body,
        };
        assert!(processor.should_process(&request));
        assert!(!processor.should_process(&WebhookRequest {
            path: "/elsewhere",
            ..request
        }));
        let accepted = processor.accept(&request).unwrap();
        assert_eq!(accepted.delivery_id.as_deref(), Some("d"));
        assert_eq!(accepted.kinds, ["service"]);
        assert!(!accepted.requests_resync);
        let handled = handle_now(&accepted.payload, "service").unwrap();
        assert_eq!((handled.updated.len(), handled.deleted.len()), (1, 1));
        let other = handle_now(&accepted.payload, "team").unwrap();
        assert!(other.updated.is_empty() && other.deleted.is_empty());
        let unsigned = WebhookRequest {
            headers: &[],
            ..request
        };
        assert!(matches!(
            processor.accept(&unsigned),
            Err(Refusal::Unauthenticated(_))
        ));
        let open = PushProcessor {
            secret: None,
            allow_unsigned: true,
        };
        assert!(open.accept(&unsigned).is_ok());
        assert!(matches!(
            open.accept(&WebhookRequest {
                body: b"[]",
                ..unsigned
            }),
            Err(Refusal::Invalid(_))
        ));
    }

    #[test]
    fn push_bodies_are_read_with_errors_that_name_no_value() {
        let event =
            parse(br#"{"id": "d-1", "kind": "service", "upsert": [{"name": "a"}]}"#).unwrap();
        assert_eq!(event.id.as_deref(), Some("d-1"));
        assert_eq!(event.upsert.len(), 1);
        assert!(event.delete.is_empty());
        let resync = parse(br#"{"id": "d-2", "resync": true}"#).unwrap();
        assert!(resync.resync && resync.kind.is_none());
        for bad in [
            &b"not json"[..],
            br#"{"kind": ""}"#,
            br#"{"upsert": []}"#,
            br#"{"kind": "s", "extra": "secret-ish"}"#,
            br#"{"resync": true, "kind": "s"}"#,
            br#"{"resync": true, "upsert": [{"a": 1}]}"#,
        ] {
            let error = parse(bad).unwrap_err();
            assert!(!error.contains("secret-ish"), "{error}");
        }
    }
}
