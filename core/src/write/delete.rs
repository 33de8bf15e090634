//! Deletions through the write path: each marked in doubt before it leaves, settled by Port's
//! answer.

use std::collections::BTreeMap;

use port_agent_state::{EntityKey, Intent, Sending};

use super::Writer;
use crate::resync::{ResyncError, with_state};
use crate::text::printable;

/// An entity to delete: the state owns it and no item produced it.
#[derive(Debug, Clone)]
pub struct Vanished {
    pub key: EntityKey,
    pub kind: String,
}

/// What a round of deletions did.
#[derive(Debug, Default)]
pub struct DeletionOutcome {
    /// Entities Port deleted, by kind.
    pub deleted: BTreeMap<String, u64>,
    /// What did not go as asked, for the run's notes.
    pub notes: Vec<String>,
    /// Some deletion failed (retried next resync).
    pub failed: bool,
    /// Entities Port deleted on its own as dependents of the deleted ones (forgotten by the
    /// state, so the next resync re-creates those the data still produces).
    pub dependents: u64,
}

impl Writer<'_> {
    /// Deletes `vanished` in Port, blueprint by blueprint. Each blueprint's entities are marked
    /// in doubt before their request leaves; Port's answer settles them. A blueprint whose
    /// request fails stops the deletions (the rest are retried next resync).
    pub async fn delete(
        &mut self,
        vanished: Vec<Vanished>,
        delete_dependents: bool,
    ) -> Result<DeletionOutcome, ResyncError> {
        let mut outcome = DeletionOutcome::default();
        let mut by_blueprint: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for Vanished { key, kind } in vanished {
            by_blueprint.entry(key.0).or_default().insert(key.1, kind);
        }
        let run = self.run_id;
        for (blueprint, kinds) in by_blueprint {
            let ids: Vec<String> = kinds.keys().cloned().collect();
            if let Some(state) = &self.state {
                let sending: Vec<Sending> = kinds
                    .iter()
                    .map(|(id, kind)| Sending {
                        key: (blueprint.clone(), id.clone()),
                        intent: Intent::Delete,
                        kind: kind.clone(),
                        resource: 0,
                    })
                    .collect();
                with_state(state, move |s| s.mark_sending(run, &sending)).await?;
            }
            let report = match self
                .client
                .delete_entities(&blueprint, &ids, delete_dependents)
                .await
            {
                Ok(report) => report,
                Err(e) => {
                    // No answer: the entities stay in doubt and are settled next resync.
                    outcome.notes.push(format!(
                        "deletion failed for {} entities of {blueprint}: {e}; retried next resync",
                        ids.len()
                    ));
                    outcome.failed = true;
                    break;
                }
            };
            for id in &report.deleted {
                let kind = kinds.get(id).cloned().unwrap_or_default();
                *outcome.deleted.entry(kind).or_default() += 1;
            }
            if let Some((id, error)) = report.failed.first() {
                outcome.notes.push(format!(
                    "deletion failed for {} entities of {blueprint} (first {}: {}); retried next resync",
                    report.failed.len(),
                    printable(id),
                    error.message
                ));
                outcome.failed = true;
            }
            // Gone either way: deleted now, or Port no longer had it.
            let key = |id: &String| (blueprint.clone(), id.clone());
            let gone: Vec<EntityKey> = report
                .deleted
                .iter()
                .chain(&report.not_deleted)
                .map(key)
                .collect();
            let refused: Vec<EntityKey> = report.failed.iter().map(|(id, _)| key(id)).collect();
            if let Some(state) = &self.state {
                with_state(state, move |s| s.record_deletions(run, &gone, &refused)).await?;
            }
        }
        if delete_dependents && !outcome.deleted.is_empty() {
            self.forget_dependents(&mut outcome).await?;
        }
        Ok(outcome)
    }

    /// Port deletes the entities related to a deleted one along with it
    /// (`deleteDependentEntities`). Which ones is Port's to know: the state forgets every
    /// record whose entity Port no longer holds, read back from Port.
    async fn forget_dependents(&self, outcome: &mut DeletionOutcome) -> Result<(), ResyncError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let in_port = match self.client.owned_keys().await {
            Ok(keys) => keys,
            Err(e) => {
                // The state may claim dependents Port deleted: say so; `state verify` finds them.
                outcome.notes.push(format!(
                    "could not read back which dependents Port deleted ({e}); run `port-agent state verify --repair`"
                ));
                outcome.failed = true;
                return Ok(());
            }
        };
        let gone = with_state(state, move |s| {
            let gone: Vec<EntityKey> = s
                .entities(|key, _| !in_port.contains(key))?
                .into_iter()
                .map(|(key, _)| key)
                .collect();
            s.remove(&gone)?;
            Ok(gone)
        })
        .await?;
        if !gone.is_empty() {
            tracing::warn!(
                entities = gone.len(),
                "Port deleted dependents of the deleted entities; the next resync re-creates those the data still produces"
            );
            outcome.dependents = gone.len() as u64;
            outcome.notes.push(format!(
                "Port deleted {} dependents of the deleted entities (deleteDependentEntities); the next resync re-creates those the data still produces",
                gone.len()
            ));
        }
        Ok(())
    }
}
