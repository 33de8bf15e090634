//! `state verify`: what Port holds against what the state believes, since a local hash cannot
//! see an entity someone edited or deleted in Port by hand.

use std::collections::HashMap;

use port_agent_state::{EntityKey, Written};
use serde_json::Value;

use crate::rebuild::{ORPHAN_KIND, port_holds};
use crate::resync::{Resync, ResyncError};

/// One disagreement between the state and Port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub blueprint: String,
    pub identifier: String,
    /// `missing in Port`, `unknown to the state` or `content differs`.
    pub what: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub checked: u64,
    pub drift: Vec<Drift>,
    /// Resources that failed to fetch or map: content drift is not judged for them.
    pub failed: Vec<String>,
}

impl Resync<'_> {
    /// Compares the state with Port (and, for content, with the current data). Changes nothing.
    pub async fn verify(&self) -> Result<VerifyReport, ResyncError> {
        let state = self
            .state
            .clone()
            .ok_or_else(|| ResyncError::Blocking("verify needs a state file".to_owned()))?;
        let owned = self.client.owned_entities(None).await?;
        let mut in_port: HashMap<EntityKey, Value> = HashMap::with_capacity(owned.len());
        for entity in owned {
            if let (Some(bp), Some(id)) =
                (entity["blueprint"].as_str(), entity["identifier"].as_str())
            {
                in_port.insert((bp.to_owned(), id.to_owned()), entity.clone());
            }
        }
        let records: HashMap<EntityKey, [u8; 32]> = {
            let state = state.clone();
            tokio::task::spawn_blocking(move || state.entities(|_, _| true))
                .await
                .map_err(|e| ResyncError::Blocking(e.to_string()))??
                .into_iter()
                .map(|(k, r)| (k, r.hash))
                .collect()
        };
        let mut report = VerifyReport {
            checked: records.len() as u64,
            ..Default::default()
        };
        let drift = |key: &EntityKey, what| Drift {
            blueprint: key.0.clone(),
            identifier: key.1.clone(),
            what,
        };
        for key in records.keys() {
            if !in_port.contains_key(key) {
                report.drift.push(drift(key, "missing in Port"));
            }
        }
        for key in in_port.keys() {
            if !records.contains_key(key) {
                report.drift.push(drift(key, "unknown to the state"));
            }
        }
        // Content: where the state believes Port is up to date with the data, Port must hold it.
        for (index, resource) in self.config.resources.iter().enumerate() {
            if self.mapping.resources[index].is_err() {
                report.failed.push(format!(
                    "resources[{index}] (kind {}) does not compile",
                    resource.kind
                ));
                continue;
            }
            let progress = self
                .map_resource(index, &resource.kind, false, async |mapped, _counters| {
                    for (entity, hash) in mapped.entities {
                        let key = (entity.blueprint.clone(), entity.identifier_label());
                        if records.get(&key) == Some(&hash.0)
                            && let Some(port) = in_port.get(&key)
                            && !port_holds(&entity, port)
                        {
                            report.drift.push(drift(&key, "content differs"));
                        }
                    }
                    Ok(())
                })
                .await?;
            if let Some(reason) = progress.failed {
                report.failed.push(reason);
            }
        }
        report
            .drift
            .sort_by(|a, b| (&a.blueprint, &a.identifier).cmp(&(&b.blueprint, &b.identifier)));
        Ok(report)
    }

    /// Makes the state tell the truth about `drift`: entities missing in Port or changed there
    /// are forgotten (the next resync sends them again); entities Port has and the state does
    /// not know are recorded as not produced (the next complete resync deletes them unless the
    /// data produces them).
    pub async fn forget_drift(&self, drift: &[Drift]) -> Result<(), ResyncError> {
        let state = self
            .state
            .clone()
            .ok_or_else(|| ResyncError::Blocking("repair needs a state file".to_owned()))?;
        let forget: Vec<EntityKey> = drift
            .iter()
            .filter(|d| d.what != "unknown to the state")
            .map(|d| (d.blueprint.clone(), d.identifier.clone()))
            .collect();
        let adopt: Vec<Written> = drift
            .iter()
            .filter(|d| d.what == "unknown to the state")
            .map(|d| Written {
                key: (d.blueprint.clone(), d.identifier.clone()),
                hash: [0; 32],
                kind: ORPHAN_KIND.to_owned(),
                resource: u32::MAX,
            })
            .collect();
        tokio::task::spawn_blocking(move || {
            state.remove(&forget)?;
            // Run 0: never "seen" by a real run, so a complete resync considers it for deletion.
            state.record_written(0, &adopt)
        })
        .await
        .map_err(|e| ResyncError::Blocking(e.to_string()))??;
        Ok(())
    }
}
