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
///
/// Several resources (or several items of one) may produce the same entity; Port merges their
/// upserts in the order they were sent. The record keeps one hash per contribution, in the order a
/// run produces them, so each is compared with its own last version and an unchanged entity is
/// never re-sent, however many resources make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRecord {
    /// blake3 of the canonical entity Port acknowledged (the first contribution).
    pub hash: [u8; 32],
    /// Hashes of the later contributions to the same entity, in production order.
    pub later: Vec<[u8; 32]>,
    pub kind: String,
    pub resource: u32,
    /// The last run whose data produced this entity.
    pub last_seen_run: u64,
    /// How many contributions `last_seen_run` has produced so far.
    pub seen_in_run: u32,
    /// The run that last wrote it to Port, and when (milliseconds since the epoch).
    pub written_run: u64,
    pub written_at_ms: i64,
}

/// hash, last seen run, written run, written at, resource, seen in run, number of later hashes.
const FIXED: usize = 32 + 8 + 8 + 8 + 4 + 4 + 2;

impl EntityRecord {
    /// How far `run` has got through this entity's contributions (0: none yet). Each one the
    /// run produces is looked for from here on.
    pub fn position_in(&self, run: u64) -> u32 {
        if self.last_seen_run == run {
            self.seen_in_run
        } else {
            0
        }
    }

    /// Every contribution's hash, in production order.
    pub fn hashes(&self) -> impl Iterator<Item = &[u8; 32]> {
        std::iter::once(&self.hash).chain(&self.later)
    }

    /// Where Port holds `hash` among the contributions from `position` on. Skipping ahead lets
    /// a run that produces only some of them (`--kind`, or a resource that stopped producing
    /// the entity) find the others unchanged.
    pub fn find(&self, position: u32, hash: &[u8; 32]) -> Option<u32> {
        self.hashes()
            .zip(0..)
            .skip(position as usize)
            .find_map(|(held, at)| (held == hash).then_some(at))
    }

    /// Whether the next contribution `run` produces, with `hash`, is what Port already holds.
    /// Once an earlier contribution was re-sent in this run, the later ones follow it, so Port
    /// merges them in the same order as before.
    pub fn unchanged_in(&self, run: u64, hash: &[u8; 32]) -> bool {
        let position = self.position_in(run);
        !(position > 0 && self.written_run == run) && self.find(position, hash).is_some()
    }

    /// A record of an entity whose first contribution `run` just wrote.
    pub fn first_written(run: u64, hash: [u8; 32], kind: &str, resource: u32, at_ms: i64) -> Self {
        Self {
            hash,
            later: Vec::new(),
            kind: kind.to_owned(),
            resource,
            last_seen_run: run,
            seen_in_run: 1,
            written_run: run,
            written_at_ms: at_ms,
        }
    }

    /// Compares the next contribution of `run` with what Port holds and notes it as the state
    /// would once it is settled: seen when unchanged, written when not. Returns whether it was
    /// unchanged. A dry run plays the state's bookkeeping on copies this way.
    pub fn advance(&mut self, run: u64, hash: [u8; 32]) -> bool {
        let unchanged = self.unchanged_in(run, &hash);
        if unchanged {
            self.seen(run, &hash);
        } else {
            self.written(run, hash, self.written_at_ms);
        }
        unchanged
    }

    /// Notes that `run` produced one more contribution, `hash`, unchanged (or refused by Port).
    pub(crate) fn seen(&mut self, run: u64, hash: &[u8; 32]) {
        let position = self.position_in(run);
        self.seen_in_run = self.find(position, hash).unwrap_or(position) + 1;
        self.last_seen_run = run;
    }

    /// Records the next contribution of `run` as written with `hash`.
    pub(crate) fn written(&mut self, run: u64, hash: [u8; 32], at_ms: i64) {
        let position = self.position_in(run);
        match position {
            0 => {
                self.hash = hash;
                // Port's entity may now differ from what the later contributions left: they are
                // compared (and sent) again.
                self.later.clear();
            }
            n => {
                self.later.truncate(n as usize - 1);
                self.later.push(hash);
            }
        }
        self.seen_in_run = position + 1;
        self.last_seen_run = run;
        self.written_run = run;
        self.written_at_ms = at_ms;
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + self.later.len() * 32 + self.kind.len());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.last_seen_run.to_le_bytes());
        out.extend_from_slice(&self.written_run.to_le_bytes());
        out.extend_from_slice(&self.written_at_ms.to_le_bytes());
        out.extend_from_slice(&self.resource.to_le_bytes());
        out.extend_from_slice(&self.seen_in_run.to_le_bytes());
        let later = u16::try_from(self.later.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&later.to_le_bytes());
        for hash in self.later.iter().take(usize::from(later)) {
            out.extend_from_slice(hash);
        }
        out.extend_from_slice(self.kind.as_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < FIXED {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let later_count = usize::from(u16::from_le_bytes(
            bytes[64..66].try_into().expect("2 bytes"),
        ));
        let kind_at = FIXED + later_count * 32;
        if bytes.len() < kind_at {
            return None;
        }
        Some(Self {
            hash: bytes[..32].try_into().expect("32 bytes"),
            last_seen_run: u64_at(32),
            written_run: u64_at(40),
            written_at_ms: u64_at(48) as i64,
            resource: u32_at(56),
            seen_in_run: u32_at(60),
            later: bytes[FIXED..kind_at]
                .chunks_exact(32)
                .map(|h| h.try_into().expect("32 bytes"))
                .collect(),
            kind: String::from_utf8(bytes[kind_at..].to_vec()).ok()?,
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
            later: vec![[8; 32], [9; 32]],
            kind: "repository".into(),
            resource: 3,
            last_seen_run: 9,
            seen_in_run: 2,
            written_run: 8,
            written_at_ms: 1_700_000_000_000,
        };
        assert_eq!(EntityRecord::decode(&record.encode()), Some(record));
        assert_eq!(EntityRecord::decode(&[1, 2, 3]), None);
    }

    fn fresh(run: u64, hash: [u8; 32]) -> EntityRecord {
        EntityRecord::first_written(run, hash, "service", 0, 1)
    }

    #[test]
    fn each_contribution_is_compared_with_its_own_last_version() {
        let (a, b) = ([1; 32], [2; 32]);
        let mut record = fresh(1, a);
        assert!(
            !record.unchanged_in(1, &b),
            "second contribution of run 1 is new"
        );
        record.written(1, b, 2);
        assert_eq!((record.hash, record.later.clone()), (a, vec![b]));
        // Run 2 produces the same two contributions: neither is sent.
        assert!(record.unchanged_in(2, &a));
        record.seen(2, &a);
        assert!(record.unchanged_in(2, &b));
        assert!(
            !record.unchanged_in(2, &a),
            "a was the first; only b is left"
        );
        record.seen(2, &b);
        assert_eq!(record.seen_in_run, 2);
    }

    #[test]
    fn a_run_that_produces_only_some_contributions_finds_them_unchanged() {
        let (a, b) = ([1; 32], [2; 32]);
        let mut record = fresh(1, a);
        record.written(1, b, 2);
        // `--kind` of b's resource alone: b is found past a; nothing to send.
        assert!(record.unchanged_in(2, &b));
        record.seen(2, &b);
        // The full run after it finds both in place.
        assert!(record.unchanged_in(3, &a));
        record.seen(3, &a);
        assert!(record.unchanged_in(3, &b));
        // Order still matters: after b, a is not found again.
        record.seen(3, &b);
        assert!(!record.unchanged_in(3, &a));
    }

    #[test]
    fn a_resent_contribution_makes_the_later_ones_follow() {
        let (a, a2, b) = ([1; 32], [3; 32], [2; 32]);
        let mut record = fresh(1, a);
        record.written(1, b, 2);
        // Run 2: the first contribution changed and is re-sent; the second, unchanged, must be
        // sent after it again so that Port merges them in the same order.
        assert!(!record.unchanged_in(2, &a2));
        record.written(2, a2, 3);
        assert!(record.later.is_empty());
        assert!(!record.unchanged_in(2, &b));
        record.written(2, b, 4);
        assert_eq!((record.hash, record.later.clone()), (a2, vec![b]));
        assert!(record.unchanged_in(3, &a2));
    }
}
