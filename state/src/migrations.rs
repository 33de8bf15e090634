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

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 1,
        apply: v1_one_hash_per_entity_to_v2_one_per_contribution,
    },
    Migration {
        from: 2,
        apply: v2_to_v3_writes_in_doubt,
    },
    Migration {
        from: 3,
        apply: v3_to_v4_raw_blocks,
    },
];

/// Rewrites every entity record with `rewrite` (`None`: left as it is, so that reading it later
/// reports the file corrupt).
fn rewrite_records(
    txn: &redb::WriteTransaction,
    rewrite: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(ENTITIES)?;
    let mut rewritten = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        let (bp, id) = key.value();
        if let Some(bytes) = rewrite(value.value()) {
            rewritten.push(((bp.to_owned(), id.to_owned()), bytes));
        }
    }
    for ((bp, id), bytes) in rewritten {
        table.insert((bp.as_str(), id.as_str()), bytes.as_slice())?;
    }
    Ok(())
}

/// Schema 1 kept one hash per entity; schema 2 keeps one per contribution (several resources may
/// produce the same entity). A v1 record becomes a record with that single contribution.
fn v1_one_hash_per_entity_to_v2_one_per_contribution(
    txn: &redb::WriteTransaction,
) -> Result<(), redb::Error> {
    rewrite_records(txn, |bytes| decode_v1(bytes).map(|r| encode_v2(&r)))
}

/// Schema 3 records writes whose answer never arrived ("in doubt"). No v2 write was in doubt.
fn v2_to_v3_writes_in_doubt(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    rewrite_records(txn, |bytes| decode_v2(bytes).map(|r| r.encode()))
}

/// Schema 4 trusts a fetched batch's block of the raw-item cache while no record was written
/// since the run that confirmed it: every record write now removes the confirmation. Nothing to
/// convert; the version changes so that a schema-3 agent, which would write records and leave
/// the confirmation, refuses the file instead.
fn v3_to_v4_raw_blocks(_txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
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
        doubt: None,
    })
}

/// Schema 2's fixed part: hash, last seen run, written run, written at, resource, seen in run,
/// number of later hashes; then the later hashes and the kind.
const FIXED_V2: usize = 32 + 8 + 8 + 8 + 4 + 4 + 2;

fn decode_v2(bytes: &[u8]) -> Option<EntityRecord> {
    if bytes.len() < FIXED_V2 {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let later_count = usize::from(u16::from_le_bytes(
        bytes[64..66].try_into().expect("2 bytes"),
    ));
    let kind_at = FIXED_V2 + later_count * 32;
    if bytes.len() < kind_at {
        return None;
    }
    Some(EntityRecord {
        hash: bytes[..32].try_into().expect("32 bytes"),
        last_seen_run: u64_at(32),
        written_run: u64_at(40),
        written_at_ms: u64_at(48) as i64,
        resource: u32_at(56),
        seen_in_run: u32_at(60),
        later: bytes[FIXED_V2..kind_at]
            .chunks_exact(32)
            .map(|h| h.try_into().expect("32 bytes"))
            .collect(),
        kind: String::from_utf8(bytes[kind_at..].to_vec()).ok()?,
        doubt: None,
    })
}

fn encode_v2(record: &EntityRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_V2 + record.kind.len());
    out.extend_from_slice(&record.hash);
    out.extend_from_slice(&record.last_seen_run.to_le_bytes());
    out.extend_from_slice(&record.written_run.to_le_bytes());
    out.extend_from_slice(&record.written_at_ms.to_le_bytes());
    out.extend_from_slice(&record.resource.to_le_bytes());
    out.extend_from_slice(&record.seen_in_run.to_le_bytes());
    let later = u16::try_from(record.later.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&later.to_le_bytes());
    for hash in record.later.iter().take(usize::from(later)) {
        out.extend_from_slice(hash);
    }
    out.extend_from_slice(record.kind.as_bytes());
    out
}
