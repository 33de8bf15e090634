//! The durable inbox of live events (webhooks, pushed items): an event is written here, fsynced,
//! before the sender gets its 2xx, so that once accepted it is never lost; it leaves the inbox
//! when applied, or for the dead letters when it keeps failing, from where an operator retries it.
//!
//! Events are opaque bytes to this crate (the caller encodes them). Delivery ids are remembered
//! after the event is applied, so that a sender's redelivery is not applied twice.

use redb::{Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::StateError;
use crate::store::{META, StateStore, now_ms, shield};

/// Sequence number → the event, in arrival order.
pub(crate) const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
/// Delivery id → when it was accepted (ms since the epoch), for de-duplication.
const DELIVERIES: TableDefinition<&str, i64> = TableDefinition::new("inbox_deliveries");
/// Sequence number → a dead letter: attempts, first failure (ms), error length, error, event.
pub(crate) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// The next sequence number.
const NEXT_SEQUENCE: &str = "inbox_next_sequence";
/// Delivery ids older than this are forgotten (senders redeliver within hours, not weeks).
const DELIVERY_MEMORY_MS: i64 = 7 * 24 * 3600 * 1000;

/// What became of an event offered to the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Durably queued under this sequence number.
    Queued(u64),
    /// Its delivery id was accepted before: not queued again.
    Duplicate,
    /// The inbox holds its capacity: the sender should retry later.
    Full,
}

/// An event that kept failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub sequence: u64,
    pub attempts: u32,
    /// When it first failed, ms since the epoch.
    pub first_failed_ms: i64,
    pub last_error: String,
    pub event: Vec<u8>,
}

fn encode_dead_letter(letter: &DeadLetter) -> Vec<u8> {
    let error = letter.last_error.as_bytes();
    let mut out = Vec::with_capacity(16 + error.len() + letter.event.len());
    out.extend_from_slice(&letter.attempts.to_le_bytes());
    out.extend_from_slice(&letter.first_failed_ms.to_le_bytes());
    out.extend_from_slice(&(error.len() as u32).to_le_bytes());
    out.extend_from_slice(error);
    out.extend_from_slice(&letter.event);
    out
}

fn decode_dead_letter(sequence: u64, bytes: &[u8]) -> Option<DeadLetter> {
    let attempts = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let first_failed_ms = i64::from_le_bytes(bytes.get(4..12)?.try_into().ok()?);
    let error_len = u32::from_le_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
    let error = bytes.get(16..16 + error_len)?;
    Some(DeadLetter {
        sequence,
        attempts,
        first_failed_ms,
        last_error: String::from_utf8_lossy(error).into_owned(),
        event: bytes.get(16 + error_len..)?.to_vec(),
    })
}

impl StateStore {
    /// Queues `event` durably (fsynced before it returns), unless its delivery `id` was accepted
    /// before or the inbox holds `capacity` events (dead letters do not count).
    pub fn inbox_accept(
        &self,
        id: Option<&str>,
        event: &[u8],
        capacity: usize,
    ) -> Result<Accepted, StateError> {
        Ok(self.inbox_accept_many(&[(id, event)], capacity)?[0])
    }

    /// Queues `events` in arrival order as [`StateStore::inbox_accept`] does each, in one
    /// fsynced commit: many webhooks arriving at once cost one disk flush.
    pub fn inbox_accept_many(
        &self,
        events: &[(Option<&str>, &[u8])],
        capacity: usize,
    ) -> Result<Vec<Accepted>, StateError> {
        shield(self.path(), || {
            let mut txn = self.write()?;
            txn.set_durability(Durability::Immediate)
                .map_err(|e| self.storage(e))?;
            let mut outcomes = Vec::with_capacity(events.len());
            {
                let mut deliveries = txn.open_table(DELIVERIES).map_err(|e| self.storage(e))?;
                let mut inbox = txn.open_table(INBOX).map_err(|e| self.storage(e))?;
                let mut meta = txn.open_table(META).map_err(|e| self.storage(e))?;
                let mut next: u64 = meta
                    .get(NEXT_SEQUENCE)
                    .map_err(|e| self.storage(e))?
                    .and_then(|v| v.value().parse().ok())
                    .unwrap_or(1);
                let mut waiting = inbox.len().map_err(|e| self.storage(e))?;
                for (id, event) in events {
                    // Ids written earlier in this commit are seen too: a redelivery in the
                    // same burst is a duplicate.
                    let seen = match id {
                        Some(id) => deliveries.get(*id).map_err(|e| self.storage(e))?.is_some(),
                        None => false,
                    };
                    let outcome = if seen {
                        Accepted::Duplicate
                    } else if waiting >= capacity as u64 {
                        Accepted::Full
                    } else {
                        inbox.insert(next, *event).map_err(|e| self.storage(e))?;
                        if let Some(id) = id {
                            deliveries
                                .insert(*id, now_ms())
                                .map_err(|e| self.storage(e))?;
                        }
                        waiting += 1;
                        next += 1;
                        Accepted::Queued(next - 1)
                    };
                    outcomes.push(outcome);
                }
                meta.insert(NEXT_SEQUENCE, next.to_string().as_str())
                    .map_err(|e| self.storage(e))?;
            }
            if outcomes.iter().any(|o| matches!(o, Accepted::Queued(_))) {
                txn.commit().map_err(|e| self.storage(e))?;
            } else {
                txn.abort().map_err(|e| self.storage(e))?;
            }
            Ok(outcomes)
        })
    }

    /// Up to `limit` queued events, oldest first.
    pub fn inbox_pending(&self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        shield(self.path(), || {
            let txn = self.read()?;
            let Some(inbox) = self.optional_table(&txn, INBOX)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for entry in inbox.iter().map_err(|e| self.storage(e))?.take(limit) {
                let (sequence, event) = entry.map_err(|e| self.storage(e))?;
                out.push((sequence.value(), event.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// How many events wait in the inbox, and how many are dead letters.
    pub fn inbox_depth(&self) -> Result<(u64, u64), StateError> {
        shield(self.path(), || {
            let txn = self.read()?;
            let count = |table| -> Result<u64, StateError> {
                match self.optional_table(&txn, table)? {
                    Some(table) => table.len().map_err(|e| self.storage(e)),
                    None => Ok(0),
                }
            };
            Ok((count(INBOX)?, count(DEAD_LETTERS)?))
        })
    }

    /// Events `sequences` were applied: they leave the inbox, in one commit. Not fsynced: a
    /// crash that loses this applies the events again, which the state's comparison makes a
    /// no-op.
    pub fn inbox_done(&self, sequences: &[u64]) -> Result<(), StateError> {
        shield(self.path(), || {
            let mut txn = self.write()?;
            txn.set_durability(Durability::None)
                .map_err(|e| self.storage(e))?;
            {
                let mut inbox = txn.open_table(INBOX).map_err(|e| self.storage(e))?;
                for sequence in sequences {
                    inbox.remove(*sequence).map_err(|e| self.storage(e))?;
                }
            }
            txn.commit().map_err(|e| self.storage(e))
        })
    }

    /// Event `sequence` kept failing after `attempts`: it moves to the dead letters with `error`,
    /// durably (it must not be lost, nor come back on its own).
    pub fn inbox_dead_letter(
        &self,
        sequence: u64,
        attempts: u32,
        error: &str,
    ) -> Result<(), StateError> {
        shield(self.path(), || {
            let txn = self.write()?;
            {
                let mut inbox = txn.open_table(INBOX).map_err(|e| self.storage(e))?;
                let Some(event) = inbox.remove(sequence).map_err(|e| self.storage(e))? else {
                    return Ok(());
                };
                let letter = DeadLetter {
                    sequence,
                    attempts,
                    first_failed_ms: now_ms(),
                    last_error: error.to_owned(),
                    event: event.value().to_vec(),
                };
                drop(event);
                txn.open_table(DEAD_LETTERS)
                    .map_err(|e| self.storage(e))?
                    .insert(sequence, encode_dead_letter(&letter).as_slice())
                    .map_err(|e| self.storage(e))?;
            }
            txn.commit().map_err(|e| self.storage(e))
        })
    }

    /// Every dead letter, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StateError> {
        shield(self.path(), || {
            let txn = self.read()?;
            let Some(table) = self.optional_table(&txn, DEAD_LETTERS)? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for entry in table.iter().map_err(|e| self.storage(e))? {
                let (sequence, bytes) = entry.map_err(|e| self.storage(e))?;
                let letter =
                    decode_dead_letter(sequence.value(), bytes.value()).ok_or_else(|| {
                        StateError::Corrupt {
                            path: self.path().to_owned(),
                            detail: format!("unreadable dead letter {}", sequence.value()),
                        }
                    })?;
                out.push(letter);
            }
            Ok(out)
        })
    }

    /// Puts every dead letter back in the inbox, under its sequence number (so it keeps its
    /// place before later events of the same kind). Returns how many. Durable.
    pub fn retry_dead_letters(&self) -> Result<usize, StateError> {
        let letters = self.dead_letters()?;
        shield(self.path(), || {
            let txn = self.write()?;
            {
                let mut inbox = txn.open_table(INBOX).map_err(|e| self.storage(e))?;
                let mut dead = txn.open_table(DEAD_LETTERS).map_err(|e| self.storage(e))?;
                for letter in &letters {
                    inbox
                        .insert(letter.sequence, letter.event.as_slice())
                        .map_err(|e| self.storage(e))?;
                    dead.remove(letter.sequence).map_err(|e| self.storage(e))?;
                }
            }
            txn.commit().map_err(|e| self.storage(e))?;
            Ok(letters.len())
        })
    }

    /// Forgets delivery ids accepted more than a week ago. Returns how many.
    pub fn inbox_forget_old_deliveries(&self) -> Result<usize, StateError> {
        shield(self.path(), || {
            let txn = self.write()?;
            let forgotten = {
                let mut deliveries = txn.open_table(DELIVERIES).map_err(|e| self.storage(e))?;
                let cutoff = now_ms() - DELIVERY_MEMORY_MS;
                let old: Vec<String> = deliveries
                    .iter()
                    .map_err(|e| self.storage(e))?
                    .filter_map(Result::ok)
                    .filter(|(_, at)| at.value() < cutoff)
                    .map(|(id, _)| id.value().to_owned())
                    .collect();
                for id in &old {
                    deliveries
                        .remove(id.as_str())
                        .map_err(|e| self.storage(e))?;
                }
                old.len()
            };
            txn.commit().map_err(|e| self.storage(e))?;
            Ok(forgotten)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Identity;

    fn open(path: &std::path::Path) -> StateStore {
        let identity = Identity {
            integration_type: "json".into(),
            integration_identifier: "svc".into(),
            port_base_url: "http://port".into(),
        };
        StateStore::open(path, &identity).unwrap()
    }

    #[test]
    fn accepted_events_survive_reopening_in_arrival_order_and_leave_when_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = open(&path);
        assert_eq!(store.inbox_pending(10).unwrap(), Vec::new());
        assert_eq!(
            store.inbox_accept(Some("d-1"), b"one", 10).unwrap(),
            Accepted::Queued(1)
        );
        assert_eq!(
            store.inbox_accept(None, b"two", 10).unwrap(),
            Accepted::Queued(2)
        );
        // A process killed after the 2xx: the events are in the file.
        drop(store);
        let store = open(&path);
        assert_eq!(
            store.inbox_pending(10).unwrap(),
            vec![(1, b"one".to_vec()), (2, b"two".to_vec())]
        );
        store.inbox_done(&[1]).unwrap();
        assert_eq!(store.inbox_pending(10).unwrap(), vec![(2, b"two".to_vec())]);
        assert_eq!(store.inbox_depth().unwrap(), (1, 0));
    }

    #[test]
    fn a_delivery_id_is_accepted_once_even_after_its_event_was_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("state.redb"));
        assert_eq!(
            store.inbox_accept(Some("d-1"), b"x", 10).unwrap(),
            Accepted::Queued(1)
        );
        assert_eq!(
            store.inbox_accept(Some("d-1"), b"x", 10).unwrap(),
            Accepted::Duplicate
        );
        store.inbox_done(&[1]).unwrap();
        assert_eq!(
            store.inbox_accept(Some("d-1"), b"x", 10).unwrap(),
            Accepted::Duplicate
        );
        assert_eq!(store.inbox_forget_old_deliveries().unwrap(), 0);
    }

    #[test]
    fn a_burst_is_accepted_in_one_commit_with_its_own_duplicates_and_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("state.redb"));
        store.inbox_accept(Some("d-0"), b"before", 10).unwrap();
        let burst: Vec<(Option<&str>, &[u8])> = vec![
            (Some("d-1"), b"one"),
            (Some("d-0"), b"again"),
            (Some("d-1"), b"one again"),
            (None, b"anonymous"),
            (Some("d-2"), b"past the bound"),
        ];
        let outcomes = store.inbox_accept_many(&burst, 3).unwrap();
        assert_eq!(
            outcomes,
            [
                Accepted::Queued(2),
                Accepted::Duplicate,
                Accepted::Duplicate,
                Accepted::Queued(3),
                Accepted::Full
            ]
        );
        let pending: Vec<Vec<u8>> = store
            .inbox_pending(10)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert_eq!(
            pending,
            [b"before".to_vec(), b"one".to_vec(), b"anonymous".to_vec()]
        );
        // A refused delivery id was not remembered: it is taken once there is room.
        store.inbox_done(&[1]).unwrap();
        assert_eq!(
            store.inbox_accept(Some("d-2"), b"later", 3).unwrap(),
            Accepted::Queued(4)
        );
    }

    #[test]
    fn a_full_inbox_refuses_without_losing_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("state.redb"));
        for i in 0..3 {
            assert!(matches!(
                store
                    .inbox_accept(Some(&format!("d-{i}")), b"x", 3)
                    .unwrap(),
                Accepted::Queued(_)
            ));
        }
        assert_eq!(
            store.inbox_accept(Some("d-9"), b"y", 3).unwrap(),
            Accepted::Full
        );
        assert_eq!(store.inbox_pending(10).unwrap().len(), 3);
        // Refused, so not remembered: the sender's retry is accepted once there is room.
        store.inbox_done(&[1]).unwrap();
        assert_eq!(
            store.inbox_accept(Some("d-9"), b"y", 3).unwrap(),
            Accepted::Queued(4)
        );
    }

    #[test]
    fn dead_letters_keep_the_event_and_its_error_until_retried() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("state.redb"));
        store.inbox_accept(Some("d-1"), b"event", 10).unwrap();
        store.inbox_accept(Some("d-2"), b"later", 10).unwrap();
        store
            .inbox_dead_letter(1, 5, "Port answered 422: bad relation")
            .unwrap();
        let letters = store.dead_letters().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].sequence, 1);
        assert_eq!(letters[0].attempts, 5);
        assert_eq!(letters[0].last_error, "Port answered 422: bad relation");
        assert_eq!(letters[0].event, b"event");
        assert_eq!(store.inbox_depth().unwrap(), (1, 1));
        assert_eq!(store.retry_dead_letters().unwrap(), 1);
        assert_eq!(store.dead_letters().unwrap(), Vec::new());
        assert_eq!(
            store.inbox_pending(10).unwrap(),
            vec![(1, b"event".to_vec()), (2, b"later".to_vec())]
        );
    }

    #[test]
    fn a_damaged_dead_letter_is_a_miss_not_a_panic() {
        assert_eq!(decode_dead_letter(1, &[1, 2, 3]), None);
        let letter = DeadLetter {
            sequence: 7,
            attempts: 2,
            first_failed_ms: 9,
            last_error: "é".into(),
            event: b"{}".to_vec(),
        };
        assert_eq!(
            decode_dead_letter(7, &encode_dead_letter(&letter)),
            Some(letter)
        );
    }
}
