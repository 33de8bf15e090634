//! port-agent's state: what the agent believes is in Port, in one redb file.
//!
//! This crate is the only code that touches redb. Each mapped entity has a record keyed by
//! (blueprint, identifier): the hash of what Port acknowledged (one per contribution, when several
//! resources produce the entity), the kind and resource that made
//! it, the run that last saw it and the run that last wrote it. Runs, per-kind checkpoints and
//! metadata (schema version, integration identity) live beside them.
//!
//! Durability: a record of a write is committed durably, and only after Port acknowledged the
//! write, so a crash never makes the agent forget what Port has. "Seen in this run" marks are
//! committed without fsync: losing them in a crash costs a re-comparison, never a resend.
//!
//! redb calls block; async callers run them on a blocking thread.

mod error;
mod migrations;
mod record;
mod store;

pub use error::StateError;
pub use record::{EntityKey, EntityRecord, Identity, RunCounters, RunRecord, RunStatus, Written};
pub use store::{Produced, RUNS_KEPT, SCHEMA_VERSION, StateStore, TableUsage};
