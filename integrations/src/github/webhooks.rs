//! GitHub's webhooks (`POST /integration/webhook`, as Ocean's): `repository`, `pull_request`,
//! `issues`, `release`, and `create`/`delete` of tags and branches, signed with
//! `X-Hub-Signature-256`. A delivery is queued as it came;
//! handling it reads the object afresh from GitHub (a delivery may be old by then, and
//! deliveries are not ordered), so what reaches Port is GitHub's current state:
//! a repository deleted or archived, a pull request or issue outside the selector's states, or
//! anything GitHub no longer shows, is deleted; anything else is upserted. A renamed repository
//! also deletes the entity of its old name.

use std::sync::Arc;

use port_agent_core::Secret;
use port_agent_core::mapping::config::ResourceConfig;
use port_agent_core::vendor_http::{Priority, VendorError};
use port_agent_core::webhook::{
    AcceptedEvent, HandleError, HandleFuture, Handled, Refusal, WebhookProcessor, WebhookRequest,
};
use serde_json::{Value, json};

use super::{
    GitHubIntegration, RepositoryListing, raw_batch, selector_keys, with_organization,
    with_repository,
};
use crate::signature::verify;

pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const EVENT_HEADER: &str = "x-github-event";
pub const DELIVERY_HEADER: &str = "x-github-delivery";

/// The deliveries taken, and the kind each changes (`create` and `delete` by their
/// `ref_type`).
const EVENTS: [(&str, &str); 4] = [
    ("repository", "repository"),
    ("pull_request", "pull-request"),
    ("issues", "issue"),
    ("release", "release"),
];

#[derive(Debug)]
pub struct GitHubWebhooks {
    /// Shares the resync's API client (one rate limit), without its resync caches.
    pub integration: Arc<GitHubIntegration>,
    /// `webhookSecret`.
    pub secret: Option<Secret>,
    pub allow_unsigned: bool,
}

/// The kind a delivery changes: by its event, and for `create` and `delete` by its
/// `ref_type` (read only then).
fn kind_of(event: &str, ref_type: impl FnOnce() -> Option<String>) -> Option<&'static str> {
    if event == "create" || event == "delete" {
        return match ref_type()?.as_str() {
            "tag" => Some("tag"),
            "branch" => Some("branch"),
            _ => None,
        };
    }
    EVENTS.iter().find(|(e, _)| *e == event).map(|(_, k)| *k)
}

/// A received body's `ref_type`, without reading the rest of it into values.
fn ref_type_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Reference {
        ref_type: String,
    }
    serde_json::from_slice::<Reference>(body)
        .ok()
        .map(|r| r.ref_type)
}

impl GitHubWebhooks {
    fn authenticate(&self, request: &WebhookRequest<'_>) -> Result<(), Refusal> {
        match &self.secret {
            Some(secret)
                if !verify(
                    secret.expose().as_bytes(),
                    request.body,
                    request.header(SIGNATURE_HEADER),
                ) =>
            {
                Err(Refusal::Unauthenticated(format!(
                    "a valid {SIGNATURE_HEADER} header is required (the webhook's secret is integration.config.webhookSecret)"
                )))
            }
            None if !self.allow_unsigned => Err(Refusal::Unauthenticated(
                "deliveries are refused: set integration.config.webhookSecret and the same secret on GitHub's webhook (or live_events.allow_unsigned_webhooks: true)".to_owned(),
            )),
            _ => Ok(()),
        }
    }
}

impl WebhookProcessor for GitHubWebhooks {
    fn name(&self) -> &'static str {
        "github"
    }

    fn should_process(&self, request: &WebhookRequest<'_>) -> bool {
        request
            .header(EVENT_HEADER)
            .and_then(|event| kind_of(event, || ref_type_of(request.body)))
            .is_some()
    }

    fn accept(&self, request: &WebhookRequest<'_>) -> Result<AcceptedEvent, Refusal> {
        self.authenticate(request)?;
        let event = request.header(EVENT_HEADER).unwrap_or_default();
        let kind = kind_of(event, || ref_type_of(request.body))
            .ok_or_else(|| Refusal::Invalid(format!("event {event}: not taken")))?;
        let body: Value = serde_json::from_slice(request.body)
            .map_err(|_| Refusal::Invalid("the delivery's body is not JSON".to_owned()))?;
        let full_name = body["repository"]["full_name"]
            .as_str()
            .filter(|name| is_repository_name(name))
            .ok_or_else(|| {
                Refusal::Invalid(format!(
                    "{event} delivery without a repository.full_name of the form owner/name"
                ))
            })?;
        if let Some(organization) = &self.integration.organization {
            let owner = body["repository"]["owner"]["login"]
                .as_str()
                .unwrap_or_default();
            if !owner.eq_ignore_ascii_case(organization) {
                return Err(Refusal::Invalid(format!(
                    "the repository's owner is not githubOrganization ({organization})"
                )));
            }
        }
        let number = match event {
            "pull_request" => Some(&body["pull_request"]["number"]),
            "issues" => Some(&body["issue"]["number"]),
            _ => None,
        };
        let ordering_key = match number {
            Some(number) if number.is_u64() => format!("{full_name}#{number}"),
            Some(_) => {
                return Err(Refusal::Invalid(format!(
                    "{event} delivery without a number"
                )));
            }
            None => full_name.to_owned(),
        };
        Ok(AcceptedEvent {
            delivery_id: request.header(DELIVERY_HEADER).map(str::to_owned),
            kinds: vec![kind.to_owned()],
            payload: serde_json::to_vec(&json!({"event": event, "body": body}))
                .expect("serde_json writes JSON"),
            ordering_key: Some(ordering_key),
            requests_resync: false,
        })
    }

    fn handle<'a>(&'a self, payload: &'a [u8], resource: &'a ResourceConfig) -> HandleFuture<'a> {
        Box::pin(async move {
            let queued: Value = serde_json::from_slice(payload)
                .map_err(|e| HandleError::Permanent(format!("a queued GitHub delivery: {e}")))?;
            let event = queued["event"].as_str().unwrap_or_default();
            let body = &queued["body"];
            let kind = kind_of(event, || body["ref_type"].as_str().map(str::to_owned));
            if kind != Some(resource.kind.as_str()) {
                return Ok(Handled::default());
            }
            let (updated, deleted) = match event {
                "repository" => self.repository(body, resource).await?,
                "release" => self.release(body).await?,
                "create" | "delete" => self.reference(event, body, resource).await?,
                _ => self.numbered(event, body, resource).await?,
            };
            Ok(Handled {
                updated: raw_batch(updated),
                deleted: raw_batch(deleted),
            })
        })
    }
}

type Changes = (Vec<Value>, Vec<Value>);

impl GitHubWebhooks {
    async fn repository(
        &self,
        body: &Value,
        resource: &ResourceConfig,
    ) -> Result<Changes, HandleError> {
        let sent = body["repository"].clone();
        let (full_name, _, organization) = delivered_names(&body["repository"]);
        let mut deleted = Vec::new();
        if let Some(old) = body["changes"]["repository"]["name"]["from"].as_str() {
            let mut renamed = sent.clone();
            renamed["name"] = Value::from(old);
            deleted.push(with_organization(renamed, organization));
        }
        let action = body["action"].as_str().unwrap_or_default();
        let current = if action == "deleted" {
            None
        } else {
            self.integration
                .api
                .get(&format!("/repos/{full_name}"), Priority::Live, None)
                .await
                .map_err(handle_error)?
        };
        match current {
            Some(mut repository) if repository["archived"] != true => {
                let keys = selector_keys(&resource.kind, &resource.selector.extra)
                    .map_err(HandleError::Permanent)?;
                self.integration
                    .include_files(&mut repository, &keys.included_files, Priority::Live, None)
                    .await
                    .map_err(handle_error)?;
                Ok((vec![with_organization(repository, organization)], deleted))
            }
            // Archived (GitHub's current copy), deleted or no longer visible.
            current => {
                deleted.push(with_organization(current.unwrap_or(sent), organization));
                Ok((Vec::new(), deleted))
            }
        }
    }

    /// A pull request or an issue: upserted while GitHub shows it in one of the selector's
    /// states, deleted otherwise.
    async fn numbered(
        &self,
        event: &str,
        body: &Value,
        resource: &ResourceConfig,
    ) -> Result<Changes, HandleError> {
        let keys = selector_keys(&resource.kind, &resource.selector.extra)
            .map_err(HandleError::Permanent)?;
        let repository = &body["repository"];
        let (full_name, name, organization) = delivered_names(repository);
        let (field, path, wanted) = if event == "pull_request" {
            ("pull_request", "pulls", keys.pull_request_states())
        } else {
            let state = keys.state.clone().unwrap_or_else(|| "open".to_owned());
            let wanted = if state == "all" {
                vec!["open".to_owned(), "closed".to_owned()]
            } else {
                vec![state]
            };
            ("issue", "issues", wanted)
        };
        let sent = with_repository(body[field].clone(), name, organization);
        let number = &body[field]["number"];
        let current = if body["action"] == "deleted" {
            None
        } else {
            self.integration
                .api
                .get(
                    &format!("/repos/{full_name}/{path}/{number}"),
                    Priority::Live,
                    None,
                )
                .await
                .map_err(handle_error)?
        };
        // What GitHub shows now, whole, decides; the delivery's copy only when GitHub shows
        // nothing.
        Ok(match current {
            Some(item) => {
                let wanted = item["state"]
                    .as_str()
                    .is_some_and(|s| wanted.iter().any(|w| w == s))
                    && (event != "issues" || has_labels(&item, keys.labels.as_deref()));
                let item = with_repository(item, name, organization);
                if wanted {
                    (vec![item], Vec::new())
                } else {
                    (Vec::new(), vec![item])
                }
            }
            None => (Vec::new(), vec![sent]),
        })
    }
}

impl GitHubWebhooks {
    /// A release: GitHub's current copy, or deleted.
    async fn release(&self, body: &Value) -> Result<Changes, HandleError> {
        let repository = &body["repository"];
        let (full_name, name, organization) = delivered_names(repository);
        let listing = RepositoryListing::of("release").expect("a listing");
        let sent = listing.enrich(body["release"].clone(), repository, name, organization);
        let id = &body["release"]["id"];
        let current = if body["action"] == "deleted" || !id.is_u64() {
            None
        } else {
            self.integration
                .api
                .get(
                    &format!("/repos/{full_name}/releases/{id}"),
                    Priority::Live,
                    None,
                )
                .await
                .map_err(handle_error)?
        };
        Ok(match current {
            Some(release) => (
                vec![listing.enrich(release, repository, name, organization)],
                Vec::new(),
            ),
            None => (Vec::new(), vec![sent]),
        })
    }

    /// A tag or branch created (read from GitHub) or deleted.
    async fn reference(
        &self,
        event: &str,
        body: &Value,
        resource: &ResourceConfig,
    ) -> Result<Changes, HandleError> {
        let repository = &body["repository"];
        let (full_name, name, organization) = delivered_names(repository);
        let listing = RepositoryListing::of(&resource.kind).expect("tag and branch are listings");
        let keys = selector_keys(&resource.kind, &resource.selector.extra)
            .map_err(HandleError::Permanent)?;
        let reference = body["ref"].as_str().unwrap_or_default();
        let gone = listing.enrich(json!({"name": reference}), repository, name, organization);
        if event == "delete" {
            return Ok((Vec::new(), vec![gone]));
        }
        let encoded = reference
            .replace('%', "%25")
            .replace('#', "%23")
            .replace('?', "%3F");
        let current = if resource.kind == "branch" {
            self.integration
                .api
                .get(
                    &format!("/repos/{full_name}/branches/{encoded}"),
                    Priority::Live,
                    None,
                )
                .await
                .map_err(handle_error)?
        } else {
            // GitHub has no one-tag answer shaped as its tag listing: the ref gives its commit.
            self.integration
                .api
                .get(&format!("/repos/{full_name}/git/ref/tags/{encoded}"), Priority::Live, None)
                .await
                .map_err(handle_error)?
                .map(|found| json!({"name": reference, "commit": {"sha": found["object"]["sha"], "url": found["object"]["url"]}}))
        };
        Ok(match current {
            Some(item) if listing.wanted(&item, repository, &keys) => (
                vec![listing.enrich(item, repository, name, organization)],
                Vec::new(),
            ),
            Some(_) => (Vec::new(), Vec::new()),
            None => (Vec::new(), vec![gone]),
        })
    }
}

/// Whether an issue has every label of the selector's `labels` (GitHub's comma-separated
/// filter, as the resync's listing applies it).
fn has_labels(issue: &Value, labels: Option<&str>) -> bool {
    let Some(labels) = labels else { return true };
    let names: Vec<&str> = issue["labels"]
        .as_array()
        .map(|all| all.iter().filter_map(|l| l["name"].as_str()).collect())
        .unwrap_or_default();
    labels
        .split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .all(|wanted| names.iter().any(|n| n.eq_ignore_ascii_case(wanted)))
}

/// A delivery's repository's `full_name`, `name` and owner.
fn delivered_names(repository: &Value) -> (&str, &str, &str) {
    (
        repository["full_name"].as_str().unwrap_or_default(),
        repository["name"].as_str().unwrap_or_default(),
        repository["owner"]["login"].as_str().unwrap_or_default(),
    )
}

/// `owner/name` as GitHub allows them: the name goes into the API paths asked with the token,
/// so nothing else (`..`, `?`, more slashes) may come from a delivery.
fn is_repository_name(full_name: &str) -> bool {
    let mut parts = full_name.split('/');
    let part_ok = |part: Option<&str>| {
        part.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
    };
    part_ok(parts.next()) && part_ok(parts.next()) && parts.next().is_none()
}

/// GitHub unavailable or rate-limited: try again later; anything else will not get better.
fn handle_error(error: VendorError) -> HandleError {
    match error.status() {
        Some(status) if status.is_client_error() && status.as_u16() != 429 => {
            HandleError::Permanent(error.to_string())
        }
        _ => HandleError::Retryable(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issue_keeps_the_selector_s_labels_as_github_s_filter_does() {
        let issue = json!({"labels": [{"name": "bug"}, {"name": "P1"}]});
        assert!(has_labels(&issue, None));
        assert!(has_labels(&issue, Some("bug")));
        assert!(has_labels(&issue, Some("bug, p1")));
        assert!(!has_labels(&issue, Some("bug,wontfix")));
        assert!(!has_labels(&json!({}), Some("bug")));
    }
}
