//! The domain of port-agent: everything between an integration's raw items and Port's API.
//!
//! No CLI and no HTTP server live here; the `port-agent` binary wires these parts together.

pub mod entity_hash;
pub mod integration;
pub mod live;
pub mod mapping;
pub mod port;
pub mod raw_items;
pub mod rebuild;
pub mod resync;
pub mod retry;
pub mod secret;
pub mod spec;
pub mod text;
pub mod vendor_http;
pub mod verify;
pub mod webhook;
pub mod write;

pub use secret::Secret;
