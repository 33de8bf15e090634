//! `state verify`: what Port holds against what the state believes, since a local hash cannot
//! see an entity someone edited or deleted in Port by hand.

use std::collections::HashMap;

use port_agent_state::{EntityKey, EntityRecord, Written};

use crate::rebuild::{ORPHAN_KIND, port_holds};
use crate::resync::{Resync, ResyncError, with_state};

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
        let state = self.require_state("verify")?;
        let in_port = self.owned_by_key().await?;
        let records: HashMap<EntityKey, EntityRecord> =
            with_state(&state, |s| s.entities(|_, _| true))
                .await?
                .into_iter()
                .collect();
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
                .map_resource(index, &resource.kind, None, async |mapped| {
                    for (entity, hash) in mapped.entities {
                        let key = (entity.blueprint.clone(), entity.identifier_label());
                        if records
                            .get(&key)
                            .is_some_and(|r| r.hashes().any(|h| *h == hash.0))
                            && let Some(port) = in_port.get(&key)
                            && !port_holds(&entity, port)
                        {
                            report.drift.push(drift(&key, "content differs"));
                        }
                    }
                    Ok(None)
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
        let state = self.require_state("repair")?;
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
        with_state(&state, move |s| {
            s.remove(&forget)?;
            // Run 0: never "seen" by a real run, so a complete resync considers it for deletion.
            s.record_written(0, &adopt)
        })
        .await?;
        Ok(())
    }
}
