//! `state rebuild --from-port`: build the state from what Port already holds, so a user
//! switching from Ocean does not re-send everything on the first run.
//!
//! The data is fetched and mapped as in a resync. A mapped entity whose content Port already
//! holds (compared on the fields the mapping produces) is recorded as written; one that differs
//! is left out, so the next resync sends it. Entities this integration owns in Port that the data
//! no longer produces are recorded too, so the next complete resync deletes them, as Ocean would.
//! Nothing is sent to Port.

use port_agent_state::{RunRecord, RunStatus, Written};
use serde_json::Value;

use crate::entity_hash::canonical_value;
use crate::port::Entity;
use crate::resync::{Resync, ResyncError, with_state};

/// What a rebuild found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub run_id: u64,
    /// Mapped entities Port holds as mapped: recorded, not to be sent.
    pub adopted: u64,
    /// Mapped entities Port holds differently: the next resync sends them.
    pub differing: u64,
    /// Mapped entities Port does not hold: the next resync sends them.
    pub missing: u64,
    /// Owned by this integration in Port but produced by no item: the next resync deletes them.
    pub orphaned: u64,
    /// Resources that failed; with any, orphans are not recorded (they cannot be told apart).
    pub failed: Vec<String>,
}

/// Kind recorded for entities Port holds that no resource produced.
pub const ORPHAN_KIND: &str = "(not produced)";

fn same(a: &Value, b: &Value) -> bool {
    canonical_value(a) == canonical_value(b)
}

fn sorted_team(team: &Value) -> Value {
    let mut members = match team {
        Value::Null => Vec::new(),
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    members.sort_by_cached_key(|m| m.to_string());
    Value::Array(members)
}

/// Whether Port's stored entity has what `ours` would set, on the fields the mapping produces.
pub fn port_holds(ours: &Entity, port: &Value) -> bool {
    let field = |name: &str| port.get(name).unwrap_or(&Value::Null);
    let plain = |v: &Value| !v.is_object();
    if !ours.identifier.is_string() {
        return false;
    }
    if ours
        .title
        .as_ref()
        .is_some_and(|t| !same(t, field("title")))
        || ours.icon.as_ref().is_some_and(|i| !same(i, field("icon")))
    {
        return false;
    }
    if ours
        .team
        .as_ref()
        .is_some_and(|t| !plain(t) || !same(&sorted_team(t), &sorted_team(field("team"))))
    {
        return false;
    }
    let properties = field("properties");
    if ours
        .properties()
        .iter()
        .any(|(k, v)| !same(v, properties.get(k).unwrap_or(&Value::Null)))
    {
        return false;
    }
    let relations = field("relations");
    !ours
        .relations()
        .iter()
        .any(|(k, v)| !plain(v) || !same(v, relations.get(k).unwrap_or(&Value::Null)))
}

impl Resync<'_> {
    /// Builds the (empty) state from Port's entities and the current data. Sends nothing.
    pub async fn rebuild_from_port(&self) -> Result<RebuildReport, ResyncError> {
        let state = self.require_state("rebuild")?;
        let mut in_port = self.owned_by_key().await?;
        let run = with_state(&state, |s| s.start_run("rebuild-from-port")).await?;
        let mut report = RebuildReport {
            run_id: run.id,
            ..Default::default()
        };
        for (index, resource) in self.config.resources.iter().enumerate() {
            if self.mapping.resources[index].is_err() {
                report.failed.push(format!(
                    "resources[{index}] (kind {}) does not compile",
                    resource.kind
                ));
                continue;
            }
            let kind = resource.kind.clone();
            let progress = self
                .map_resource(index, &resource.kind, None, async |mapped| {
                    let mut written = Vec::new();
                    for (entity, hash) in mapped.entities {
                        let key = (entity.blueprint.clone(), entity.identifier_label());
                        match in_port.remove(&key) {
                            Some(port) if port_holds(&entity, &port) => {
                                report.adopted += 1;
                                written.push(Written {
                                    key,
                                    hash: hash.0,
                                    kind: kind.clone(),
                                    resource: index as u32,
                                });
                            }
                            Some(_) => report.differing += 1,
                            None => report.missing += 1,
                        }
                    }
                    let run_id = run.id;
                    with_state(&state, move |s| s.record_written(run_id, &written)).await?;
                    Ok(None)
                })
                .await?;
            if let Some(reason) = progress.failed {
                report.failed.push(reason);
            }
        }
        if report.failed.is_empty() {
            let orphans: Vec<Written> = in_port
                .into_keys()
                .map(|key| Written {
                    key,
                    hash: [0; 32],
                    kind: ORPHAN_KIND.to_owned(),
                    resource: u32::MAX,
                })
                .collect();
            report.orphaned = orphans.len() as u64;
            let run_id = run.id;
            with_state(&state, move |s| s.record_written(run_id, &orphans)).await?;
        }
        let finished = RunRecord {
            status: if report.failed.is_empty() {
                RunStatus::Completed
            } else {
                RunStatus::Failed
            },
            notes: report.failed.clone(),
            ..run
        };
        with_state(&state, move |s| s.finish_run(&finished)).await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn port_holds_compares_only_what_the_mapping_produces() {
        let mut ours = Entity::new("service", "api");
        ours.title = Some(json!("API"));
        ours.team = Some(json!("core"));
        ours.set_property("stars", json!(3.0));
        ours.set_relation("owner", json!("t1"));
        let port = json!({"identifier": "api", "blueprint": "service", "title": "API", "team": ["core"],
            "properties": {"stars": 3, "extra": "set by someone else"}, "relations": {"owner": "t1"}, "icon": "Git"});
        assert!(port_holds(&ours, &port));
        let mut changed = ours.clone();
        changed.set_property("stars", json!(4));
        assert!(!port_holds(&changed, &port));
        let mut null_prop = ours.clone();
        null_prop.set_property("missing", Value::Null);
        assert!(
            port_holds(&null_prop, &port),
            "an absent property is null in Port"
        );
        let mut search = ours;
        search.set_relation("owner", json!({"combinator": "and", "rules": []}));
        assert!(
            !port_holds(&search, &port),
            "search relations cannot be compared; send them"
        );
    }
}
