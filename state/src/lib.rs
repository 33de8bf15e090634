//! port-agent's state: what the agent believes is in Port, in one redb file.
//!
//! This crate is the only code that touches redb. Each mapped entity has a record keyed by
//! (blueprint, identifier): the hash of what Port acknowledged (one per contribution, when several
//! resources produce the entity), the kind and resource that made
//! it, the run that last saw it and the run that last wrote it. Runs, per-kind checkpoints and
//! metadata (schema version, integration identity) live beside them.
//!
//! Durability: before a write leaves for Port, the entity is marked *in doubt*, durably; Port's
//! answer then settles it (acknowledged: the new hash; refused: as before). Answers and "seen in
//! this run" marks are committed without fsync: a crash that loses them leaves the entities in
//! doubt (sent again) or unseen (compared again), never claiming what Port may not hold.
//!
//! The inbox (`inbox`) holds live events accepted but not yet applied, durably, and the dead
//! letters of those that kept failing.
//!
//! The raw-item cache (`raw_cache`) lets a resync skip mapping items whose bytes are unchanged;
//! a whole batch's entry is trusted only while no record was written since the clean run that
//! confirmed it, which is why every record write goes through one function that says so.
//!
//! redb calls block; async callers run them on a blocking thread.

mod error;
mod inbox;
mod migrations;
mod raw_cache;
mod record;
mod store;
mod validators;

pub use error::StateError;
pub use inbox::{Accepted, DeadLetter};
pub use raw_cache::{Block, Produced};
pub use record::{
    Doubt, EntityKey, EntityRecord, Identity, Intent, RunCounters, RunRecord, RunStatus, Written,
};
pub use store::{
    LIVE_EVENT_TRIGGER, RUNS_KEPT, Refused, SCHEMA_VERSION, Sending, StateStore, TableUsage,
};
pub use validators::{MAX_VALIDATED_BODY, MAX_VALIDATORS, Validated};
