//! Schema migrations, applied in order when an older state file is opened.
//!
//! Each step takes a file from schema `from` to `from + 1`, inside the opening transaction. Each
//! is tested on a fixture written by the previous version, kept in `migrations/fixtures/`.
//! Schema 1 is the first: no step exists yet; `tests/fixtures.rs` holds the v1 file to the
//! format this build reads.

/// One step of the schema.
pub(crate) struct Migration {
    /// The schema it upgrades from.
    pub from: u32,
    pub apply: fn(&redb::WriteTransaction) -> Result<(), redb::Error>,
}

pub(crate) const MIGRATIONS: &[Migration] = &[];
