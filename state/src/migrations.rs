//! Schema migrations, applied in order when an older state file is opened.
//!
//! Each step takes a file from schema `from` to `from + 1`, inside the opening transaction, so a
//! crash mid-way leaves the old file as it was. Each is tested on a fixture written by the
//! previous version, kept in `migrations/fixtures/` (`tests/fixtures.rs`). A step reads the old
//! format with its own frozen decoder: later changes to [`EntityRecord`] must not change what an
//! old file means.

use redb::ReadableTable;

use crate::record::EntityRecord;
use crate::store::ENTITIES;

/// One step of the schema.
pub(crate) struct Migration {
    /// The schema it upgrades from.
    pub from: u32,
    pub apply: fn(&redb::WriteTransaction) -> Result<(), redb::Error>,
}

pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    from: 1,
    apply: v1_one_hash_per_entity_to_v2_one_per_contribution,
}];

/// Schema 1 kept one hash per entity; schema 2 keeps one per contribution (several resources may
/// produce the same entity). A v1 record becomes a record with that single contribution.
fn v1_one_hash_per_entity_to_v2_one_per_contribution(
    txn: &redb::WriteTransaction,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(ENTITIES)?;
    let mut rewritten = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (bp, id) = key.value();
        // An unreadable v1 record stays as it is: reading it later reports the file corrupt.
        if let Some(record) = decode_v1(value.value()) {
            rewritten.push(((bp.to_owned(), id.to_owned()), record.encode()));
        }
    }
    for ((bp, id), bytes) in rewritten {
        table.insert((bp.as_str(), id.as_str()), bytes.as_slice())?;
    }
    Ok(())
}

/// Schema 1's entity record: hash, last seen run, written run, written at, resource, kind.
fn decode_v1(bytes: &[u8]) -> Option<EntityRecord> {
    const FIXED_V1: usize = 32 + 8 + 8 + 8 + 4;
    if bytes.len() < FIXED_V1 {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Some(EntityRecord {
        hash: bytes[..32].try_into().expect("32 bytes"),
        later: Vec::new(),
        last_seen_run: u64_at(32),
        seen_in_run: 1,
        written_run: u64_at(40),
        written_at_ms: u64_at(48) as i64,
        resource: u32::from_le_bytes(bytes[56..60].try_into().expect("4 bytes")),
        kind: String::from_utf8(bytes[FIXED_V1..].to_vec()).ok()?,
    })
}
