//! The raw-item cache: what unchanged raw items produced, so a resync does not map them again.
//!
//! Two levels. An *item* entry (item fingerprint → the entities it produced, with hashes) is a
//! claim the caller checks against the records before trusting it. A *block* entry (a whole
//! fetched batch → its entities' key fingerprints) is trusted with one lookup, which is what
//! makes an unchanged resync of a million items cheap: it is valid only while the entity
//! records are exactly as a completed run left them. A run that completes cleanly confirms its
//! blocks; the next transaction that writes records, whatever writes it, removes the
//! confirmation in the same commit.
//!
//! Both are caches: never fsynced on their own, dropped when they grow, rebuilt by the next run.

use redb::{Durability, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::error::StateError;
use crate::record::EntityKey;
use crate::store::{META, StateStore, shield, sorted_positions};

/// Raw-item fingerprint → the entities that item produced.
pub(crate) const RAW_ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raw_items");
/// Block fingerprint → the run that wrote it, then its entities' key fingerprints.
pub(crate) const RAW_BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raw_blocks");
/// The run whose blocks hold; removed by the next record write.
const BLOCKS_CONFIRMED: &str = "raw_blocks_confirmed";

/// What one raw item produced: each entity's key and hash.
pub type Produced = Vec<(EntityKey, [u8; 32])>;

/// A fetched batch the cache may vouch for whole: its fingerprint, and the 64-bit fingerprints
/// of the keys of every entity its items produced.
pub type Block = ([u8; 32], Vec<u64>);

fn encode_produced(produced: &Produced) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + produced.len() * 64);
    out.extend_from_slice(&(produced.len() as u32).to_le_bytes());
    for ((bp, id), hash) in produced {
        out.extend_from_slice(hash);
        out.extend_from_slice(&(bp.len() as u32).to_le_bytes());
        out.extend_from_slice(bp.as_bytes());
        out.extend_from_slice(&(id.len() as u32).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
    }
    out
}

fn decode_produced(mut bytes: &[u8]) -> Option<Produced> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    let len = |bytes: &mut &[u8]| {
        take(bytes, 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let count = len(&mut bytes)?;
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let hash: [u8; 32] = take(&mut bytes, 32)?.try_into().ok()?;
        let n = len(&mut bytes)?;
        let bp = String::from_utf8(take(&mut bytes, n)?.to_vec()).ok()?;
        let n = len(&mut bytes)?;
        let id = String::from_utf8(take(&mut bytes, n)?.to_vec()).ok()?;
        out.push(((bp, id), hash));
    }
    Some(out)
}

fn encode_block(run: u64, keys: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + keys.len() * 8);
    out.extend_from_slice(&run.to_le_bytes());
    for key in keys {
        out.extend_from_slice(&key.to_le_bytes());
    }
    out
}

/// The run that wrote a block, and its key fingerprints.
fn decode_block(bytes: &[u8]) -> Option<(u64, Vec<u64>)> {
    if !bytes.len().is_multiple_of(8) || bytes.is_empty() {
        return None;
    }
    let mut words = bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
    let run = words.next()?;
    Some((run, words.collect()))
}

/// The run whose blocks hold, if no record was written since it confirmed them.
fn confirmed(meta: &impl ReadableTable<&'static str, &'static str>) -> Option<u64> {
    meta.get(BLOCKS_CONFIRMED).ok()??.value().parse().ok()
}

/// Ends the blocks' confirmation inside `txn`, which writes records.
pub(crate) fn unconfirm_blocks(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(META)?.remove(BLOCKS_CONFIRMED)?;
    Ok(())
}

impl StateStore {
    /// What each raw-item fingerprint produced last time, where known. A claim: check it
    /// against the records before trusting it.
    pub fn raw_lookup(
        &self,
        fingerprints: &[[u8; 32]],
    ) -> Result<Vec<Option<Produced>>, StateError> {
        shield(self.path(), || {
            let txn = self.read()?;
            let Some(table) = self.optional_table(&txn, RAW_ITEMS)? else {
                return Ok(vec![None; fingerprints.len()]);
            };
            // In key order: neighbours share the b-tree's branch pages, which stay cached.
            let mut found = vec![None; fingerprints.len()];
            for at in sorted_positions(fingerprints) {
                found[at] = table
                    .get(fingerprints[at].as_slice())
                    .map_err(|e| self.storage(e))?
                    .and_then(|v| decode_produced(v.value()));
            }
            Ok(found)
        })
    }

    /// The key fingerprints of the entities block `fingerprint` produced, if the run that
    /// wrote it confirmed it and no record was written since. Trusted as it is.
    pub fn raw_block(&self, fingerprint: &[u8; 32]) -> Result<Option<Vec<u64>>, StateError> {
        shield(self.path(), || {
            let txn = self.read()?;
            let meta = txn.open_table(META).map_err(|e| self.storage(e))?;
            let Some(run) = confirmed(&meta) else {
                return Ok(None);
            };
            let Some(table) = self.optional_table(&txn, RAW_BLOCKS)? else {
                return Ok(None);
            };
            let found = table
                .get(fingerprint.as_slice())
                .map_err(|e| self.storage(e))?
                .and_then(|v| decode_block(v.value()));
            Ok(found.and_then(|(written_by, keys)| (written_by == run).then_some(keys)))
        })
    }

    /// Remembers what raw items and whole batches produced in `run`. Items: call only once
    /// their entities are recorded (the claim is checked on use). Blocks: any time in the run;
    /// they vouch only once [`StateStore::confirm_blocks`] confirms the run.
    pub fn raw_remember(
        &self,
        run: u64,
        items: &[([u8; 32], Produced)],
        blocks: &[Block],
    ) -> Result<(), StateError> {
        shield(self.path(), || {
            if items.is_empty() && blocks.is_empty() {
                return Ok(());
            }
            let mut txn = self.write()?;
            txn.set_durability(Durability::None)
                .map_err(|e| self.storage(e))?;
            {
                let mut table = txn.open_table(RAW_ITEMS).map_err(|e| self.storage(e))?;
                for (fingerprint, produced) in items {
                    table
                        .insert(fingerprint.as_slice(), encode_produced(produced).as_slice())
                        .map_err(|e| self.storage(e))?;
                }
                let mut table = txn.open_table(RAW_BLOCKS).map_err(|e| self.storage(e))?;
                for (fingerprint, keys) in blocks {
                    table
                        .insert(fingerprint.as_slice(), encode_block(run, keys).as_slice())
                        .map_err(|e| self.storage(e))?;
                }
            }
            txn.commit().map_err(|e| self.storage(e))
        })
    }

    /// `run` completed cleanly: every entity its blocks name is recorded as Port acknowledged
    /// it. Its blocks vouch from now until the next record write.
    pub fn confirm_blocks(&self, run: u64) -> Result<(), StateError> {
        shield(self.path(), || {
            let mut txn = self.write()?;
            txn.set_durability(Durability::None)
                .map_err(|e| self.storage(e))?;
            {
                let mut meta = txn.open_table(META).map_err(|e| self.storage(e))?;
                meta.insert(BLOCKS_CONFIRMED, run.to_string().as_str())
                    .map_err(|e| self.storage(e))?;
            }
            txn.commit().map_err(|e| self.storage(e))?;
            self.blocks_confirmed
                .store(true, std::sync::atomic::Ordering::Release);
            Ok(())
        })
    }

    /// Old versions pile up: past twice the entities (plus slack) the item cache is dropped
    /// whole, past one block per 64 entities (a batch holds hundreds) the block cache; the next
    /// run rebuilds them.
    pub fn raw_prune(&self) -> Result<bool, StateError> {
        shield(self.path(), || {
            let entities = self.entity_count()?;
            let txn = self.write()?;
            let mut pruned = false;
            for (table, limit) in [
                (RAW_ITEMS, 2 * entities + 1000),
                (RAW_BLOCKS, entities / 64 + 1000),
            ] {
                let len = match txn.open_table(table) {
                    Ok(opened) => opened.len().map_err(|e| self.storage(e))?,
                    Err(e) => return Err(self.storage(e)),
                };
                if len > limit {
                    txn.delete_table(table).map_err(|e| self.storage(e))?;
                    pruned = true;
                }
            }
            txn.commit().map_err(|e| self.storage(e))?;
            Ok(pruned)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Identity, Written};

    fn store(dir: &tempfile::TempDir) -> StateStore {
        let identity = Identity {
            integration_type: "json".into(),
            integration_identifier: "svc".into(),
            port_base_url: "http://port".into(),
        };
        StateStore::open(&dir.path().join("state.redb"), &identity).unwrap()
    }

    #[test]
    fn raw_item_fingerprints_round_trip_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        assert_eq!(store.raw_lookup(&[[1; 32]]).unwrap(), vec![None]);
        let produced: Produced = vec![
            (("service".into(), "a/b é".into()), [9; 32]),
            (("team".into(), "t".into()), [8; 32]),
        ];
        store
            .raw_remember(
                1,
                &[([1; 32], produced.clone()), ([2; 32], Vec::new())],
                &[],
            )
            .unwrap();
        assert_eq!(
            store.raw_lookup(&[[1; 32], [2; 32], [3; 32]]).unwrap(),
            vec![Some(produced), Some(Vec::new()), None]
        );
        assert!(!store.raw_prune().unwrap());
        let many: Vec<([u8; 32], Produced)> = (0..1100u32)
            .map(|i| {
                let mut f = [0; 32];
                f[..4].copy_from_slice(&i.to_le_bytes());
                (f, Vec::new())
            })
            .collect();
        store.raw_remember(1, &many, &[]).unwrap();
        assert!(store.raw_prune().unwrap());
        assert_eq!(store.raw_lookup(&[[1; 32]]).unwrap(), vec![None]);
    }

    fn written(id: &str) -> Written {
        Written {
            key: ("service".into(), id.into()),
            hash: [7; 32],
            kind: "service".into(),
            resource: 0,
        }
    }

    #[test]
    fn a_block_vouches_only_once_its_run_is_confirmed_and_until_a_record_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let run = store.start_run("test").unwrap().id;
        store.record_written(run, &[written("a")]).unwrap();
        store
            .raw_remember(run, &[], &[([5; 32], vec![11, 12])])
            .unwrap();
        assert_eq!(
            store.raw_block(&[5; 32]).unwrap(),
            None,
            "not confirmed yet"
        );
        store.confirm_blocks(run).unwrap();
        assert_eq!(store.raw_block(&[5; 32]).unwrap(), Some(vec![11, 12]));
        assert_eq!(store.raw_block(&[6; 32]).unwrap(), None);
        // Writing the block again in the next run unconfirms it until that run is confirmed.
        let next = store.start_run("test").unwrap().id;
        store
            .raw_remember(next, &[], &[([5; 32], vec![11, 12])])
            .unwrap();
        assert_eq!(store.raw_block(&[5; 32]).unwrap(), None);
        store.confirm_blocks(next).unwrap();
        assert_eq!(store.raw_block(&[5; 32]).unwrap(), Some(vec![11, 12]));
        // Any record write, even of another entity, ends every block's word.
        store.record_written(next, &[written("b")]).unwrap();
        assert_eq!(store.raw_block(&[5; 32]).unwrap(), None);
        store.confirm_blocks(next).unwrap();
        assert_eq!(store.raw_block(&[5; 32]).unwrap(), Some(vec![11, 12]));
        store.remove(&[("service".into(), "a".into())]).unwrap();
        assert_eq!(store.raw_block(&[5; 32]).unwrap(), None);
    }

    #[test]
    fn a_damaged_block_is_a_miss() {
        assert_eq!(decode_block(&[1, 2, 3]), None);
        assert_eq!(decode_block(&[]), None);
        assert_eq!(
            decode_block(&encode_block(4, &[9, 10])),
            Some((4, vec![9, 10]))
        );
    }
}
