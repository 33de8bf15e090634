//! A dry run's plan: the writes a real run would make, judged by the state's own rule on
//! copies of the records (a dry run writes nothing, not even the state).

use std::collections::HashMap;

use port_agent_state::{EntityKey, EntityRecord};

/// A planned write, for `--dry-run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedChange {
    pub blueprint: String,
    pub identifier: String,
    pub kind: String,
    /// `new`, `changed`, `in doubt` (a write whose answer never arrived) or `vanished`.
    pub reason: &'static str,
}

/// What a dry run found: the writes it would make, and every entity the data produced.
#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<PlannedChange>,
    /// Every entity the data produced, with the record the state would hold after this run.
    pub produced: HashMap<EntityKey, EntityRecord>,
}

/// The run id a dry run keeps its copies under: never a real run's.
const DRY_RUN: u64 = u64::MAX;

impl Plan {
    /// Whether the next contribution to `key`, with `hash`, is what Port holds, judged as
    /// [`EntityRecord::advance`] judges it in a real run.
    pub(crate) fn unchanged(
        &mut self,
        key: &EntityKey,
        record: Option<&EntityRecord>,
        hash: &[u8; 32],
    ) -> bool {
        match (self.produced.get_mut(key), record) {
            (Some(simulated), _) => simulated.advance(DRY_RUN, *hash),
            (None, Some(record)) => {
                let mut simulated = record.clone();
                let unchanged = simulated.advance(DRY_RUN, *hash);
                self.produced.insert(key.clone(), simulated);
                unchanged
            }
            (None, None) => {
                let created = EntityRecord::first_written(DRY_RUN, *hash, "", 0, 0);
                self.produced.insert(key.clone(), created);
                false
            }
        }
    }
}
