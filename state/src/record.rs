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

impl Identity {
    /// The same identity as any credentials in the base URL would leave it: they name no other
    /// Port, and they are never stored or shown.
    pub fn without_credentials(&self) -> Self {
        let url = &self.port_base_url;
        let port_base_url = match url.split_once("://") {
            Some((scheme, rest)) => {
                let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
                match rest[..authority_end].rfind('@') {
                    Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                    None => url.clone(),
                }
            }
            None => url.clone(),
        };
        Self {
            port_base_url,
            ..self.clone()
        }
    }
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
    /// The run that last wrote it to Port, and when (milliseconds since the epoch). 0 for an
    /// entity Port has never acknowledged (its first upsert is in doubt).
    pub written_run: u64,
    pub written_at_ms: i64,
    /// A write was sent and its answer is not recorded: Port may hold the old value, the new
    /// one or, for a deletion, nothing. Such an entity is never "unchanged".
    pub doubt: Option<Doubt>,
}

/// What an unanswered write asked of Port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// An upsert of the contribution with this hash.
    Upsert([u8; 32]),
    Delete,
}

/// A write whose outcome the state does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Doubt {
    pub intent: Intent,
    /// The first run that left the entity in doubt. A refusal in that same run proves Port still
    /// holds the recorded value; a refusal in a later run proves nothing about the earlier send.
    pub since_run: u64,
}

/// hash, last seen run, written run, written at, resource, seen in run, number of later hashes,
/// doubt tag.
const FIXED: usize = 32 + 8 + 8 + 8 + 4 + 4 + 2 + 1;
const NO_DOUBT: u8 = 0;
const DOUBT_UPSERT: u8 = 1;
const DOUBT_DELETE: u8 = 2;

/// Reads a record field by field; `None` as soon as the bytes run out.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_le_bytes)
    }
}

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
        self.doubt.is_none()
            && !(position > 0 && self.written_run == run)
            && self.find(position, hash).is_some()
    }

    /// A record for an entity whose first upsert `run` is about to send: in doubt until Port
    /// answers, and already owned (a deletion candidate once no item produces it).
    pub fn sending_new(run: u64, hash: [u8; 32], kind: &str, resource: u32) -> Self {
        Self {
            seen_in_run: 0,
            written_run: 0,
            written_at_ms: 0,
            doubt: Some(Doubt {
                intent: Intent::Upsert(hash),
                since_run: run,
            }),
            ..Self::first_written(run, hash, kind, resource, 0)
        }
    }

    /// Notes that `run` is about to send `intent`. An entity already in doubt stays in doubt
    /// since the earlier run.
    pub fn send(&mut self, run: u64, intent: Intent) {
        let since_run = self.doubt.map_or(run, |d| d.since_run);
        self.doubt = Some(Doubt { intent, since_run });
    }

    /// Port refused `run`'s write: when the doubt began in this run, Port holds what the record
    /// says (`true`: the doubt is lifted); an older doubt stays, since the earlier send may
    /// have been applied.
    pub fn refused(&mut self, run: u64) -> bool {
        if self.doubt.is_some_and(|d| d.since_run == run) {
            self.doubt = None;
            true
        } else {
            false
        }
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
            doubt: None,
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
        self.doubt = None;
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED + 40 + self.later.len() * 32 + self.kind.len());
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(&self.last_seen_run.to_le_bytes());
        out.extend_from_slice(&self.written_run.to_le_bytes());
        out.extend_from_slice(&self.written_at_ms.to_le_bytes());
        out.extend_from_slice(&self.resource.to_le_bytes());
        out.extend_from_slice(&self.seen_in_run.to_le_bytes());
        let later = u16::try_from(self.later.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&later.to_le_bytes());
        match self.doubt {
            None => out.push(NO_DOUBT),
            Some(Doubt { intent, since_run }) => {
                match intent {
                    Intent::Upsert(_) => out.push(DOUBT_UPSERT),
                    Intent::Delete => out.push(DOUBT_DELETE),
                }
                out.extend_from_slice(&since_run.to_le_bytes());
                if let Intent::Upsert(hash) = intent {
                    out.extend_from_slice(&hash);
                }
            }
        }
        for hash in self.later.iter().take(usize::from(later)) {
            out.extend_from_slice(hash);
        }
        out.extend_from_slice(self.kind.as_bytes());
        out
    }

    /// `None` for bytes that are not a record of this schema (never a panic).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        let hash = r.array::<32>()?;
        let last_seen_run = r.u64()?;
        let written_run = r.u64()?;
        let written_at_ms = r.u64()? as i64;
        let resource = r.u32()?;
        let seen_in_run = r.u32()?;
        let later_count = usize::from(r.u16()?);
        let doubt = match r.take(1)?[0] {
            NO_DOUBT => None,
            tag @ (DOUBT_UPSERT | DOUBT_DELETE) => {
                let since_run = r.u64()?;
                let intent = if tag == DOUBT_UPSERT {
                    Intent::Upsert(r.array::<32>()?)
                } else {
                    Intent::Delete
                };
                Some(Doubt { intent, since_run })
            }
            _ => return None,
        };
        let later = (0..later_count)
            .map(|_| r.array::<32>())
            .collect::<Option<Vec<_>>>()?;
        let kind = String::from_utf8(r.0.to_vec()).ok()?;
        Some(Self {
            hash,
            later,
            kind,
            resource,
            last_seen_run,
            seen_in_run,
            written_run,
            written_at_ms,
            doubt,
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
    /// Every resource ran, but items failed or Port refused entities: nothing was deleted.
    #[serde(rename = "completed_with_errors")]
    CompletedWithErrors,
    Failed,
    Aborted,
}

impl RunStatus {
    /// The status as `--json`, metrics and `state inspect` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::CompletedWithErrors => "completed_with_errors",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
        }
    }
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
            doubt: None,
        };
        assert_eq!(EntityRecord::decode(&record.encode()), Some(record.clone()));
        assert_eq!(EntityRecord::decode(&[1, 2, 3]), None);
        for intent in [Intent::Upsert([5; 32]), Intent::Delete] {
            let mut doubtful = record.clone();
            doubtful.send(10, intent);
            assert_eq!(
                EntityRecord::decode(&doubtful.encode()),
                Some(doubtful.clone())
            );
        }
    }

    #[test]
    fn an_entity_in_doubt_is_never_unchanged_until_port_answers() {
        let a = [1; 32];
        let mut record = fresh(1, a);
        record.send(2, Intent::Upsert([2; 32]));
        assert!(!record.unchanged_in(3, &a), "Port may hold either value");
        assert!(!record.unchanged_in(3, &[2; 32]));
        // A refusal in a later run says nothing about run 2's send.
        assert!(!record.refused(3));
        assert!(record.doubt.is_some());
        // Sent again in run 3 and acknowledged: settled.
        record.send(3, Intent::Upsert(a));
        assert_eq!(record.doubt.unwrap().since_run, 2);
        record.written(3, a, 5);
        assert!(record.unchanged_in(4, &a));
        // A refusal in the run that began the doubt restores the record.
        record.send(4, Intent::Delete);
        assert!(record.refused(4));
        assert!(record.unchanged_in(5, &a));
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

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        fn record() -> impl Strategy<Value = EntityRecord> {
            let doubt = prop_oneof![
                Just(None),
                (any::<[u8; 32]>(), any::<u64>()).prop_map(|(hash, since_run)| Some(Doubt {
                    intent: Intent::Upsert(hash),
                    since_run
                })),
                any::<u64>().prop_map(|since_run| Some(Doubt {
                    intent: Intent::Delete,
                    since_run
                })),
            ];
            (
                any::<[u8; 32]>(),
                proptest::collection::vec(any::<[u8; 32]>(), 0..4),
                ".{0,20}",
                any::<u32>(),
                (any::<u64>(), any::<u32>(), any::<u64>(), any::<i64>()),
                doubt,
            )
                .prop_map(
                    |(hash, later, kind, resource, (seen, seen_in, written, at), doubt)| {
                        EntityRecord {
                            hash,
                            later,
                            kind,
                            resource,
                            last_seen_run: seen,
                            seen_in_run: seen_in,
                            written_run: written,
                            written_at_ms: at,
                            doubt,
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn any_bytes_decode_to_a_record_or_to_nothing_never_a_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..300)
            ) {
                let _ = EntityRecord::decode(&bytes);
            }

            #[test]
            fn every_record_survives_its_encoding(record in record()) {
                prop_assert_eq!(EntityRecord::decode(&record.encode()), Some(record));
            }

            #[test]
            fn a_damaged_encoding_never_panics(record in record(), at in any::<usize>(), bit in 0u8..8) {
                let mut bytes = record.encode();
                let at = at % bytes.len();
                bytes[at] ^= 1 << bit;
                let _ = EntityRecord::decode(&bytes);
                bytes.truncate(at);
                let _ = EntityRecord::decode(&bytes);
            }
        }
    }
}
