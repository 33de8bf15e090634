use serde::{Deserialize, Serialize};

/// (blueprint, identifier): how Port names an entity.
pub type EntityKey = (String, String);

/// Who owns a state file: one integration against one Port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub integration_type: String,
    pub integration_identifier: String,
    pub port_base_url: String,
}

/// What the agent knows of one entity in Port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRecord {
    /// blake3 of the canonical entity Port acknowledged.
    pub hash: [u8; 32],
    pub kind: String,
    pub resource: u32,
    /// The last run whose data produced this entity.
    pub last_seen_run: u64,
    /// The run that last wrote it to Port, and when (milliseconds since the epoch).
    pub written_run: u64,
    pub written_at_ms: i64,
}

const FIXED: usize = 32 + 8 + 8 + 8 + 4;

impl EntityRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + self.kind.len());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.last_seen_run.to_le_bytes());
        out.extend_from_slice(&self.written_run.to_le_bytes());
        out.extend_from_slice(&self.written_at_ms.to_le_bytes());
        out.extend_from_slice(&self.resource.to_le_bytes());
        out.extend_from_slice(self.kind.as_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < FIXED {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        Some(Self {
            hash: bytes[..32].try_into().expect("32 bytes"),
            last_seen_run: u64_at(32),
            written_run: u64_at(40),
            written_at_ms: u64_at(48) as i64,
            resource: u32::from_le_bytes(bytes[56..60].try_into().expect("4 bytes")),
            kind: String::from_utf8(bytes[FIXED..].to_vec()).ok()?,
        })
    }
}

/// An entity Port acknowledged, to record.
#[derive(Debug, Clone)]
pub struct Written {
    pub key: EntityKey,
    pub hash: [u8; 32],
    pub kind: String,
    pub resource: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Aborted,
}

/// The six counters of a run, per kind and in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounters {
    pub fetched: u64,
    pub mapped: u64,
    pub unchanged: u64,
    pub upserted: u64,
    pub failed: u64,
    pub deleted: u64,
}

impl std::ops::AddAssign for RunCounters {
    fn add_assign(&mut self, other: Self) {
        self.fetched += other.fetched;
        self.mapped += other.mapped;
        self.unchanged += other.unchanged;
        self.upserted += other.upserted;
        self.failed += other.failed;
        self.deleted += other.deleted;
    }
}

/// One resync, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: u64,
    pub trigger: String,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub status: RunStatus,
    #[serde(default)]
    pub kinds: std::collections::BTreeMap<String, RunCounters>,
    #[serde(default)]
    pub totals: RunCounters,
    /// Why it failed or what it skipped (e.g. deletions above the threshold).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = EntityRecord {
            hash: [7; 32],
            kind: "repository".into(),
            resource: 3,
            last_seen_run: 9,
            written_run: 8,
            written_at_ms: 1_700_000_000_000,
        };
        assert_eq!(EntityRecord::decode(&record.encode()), Some(record));
        assert_eq!(EntityRecord::decode(&[1, 2, 3]), None);
    }
}
