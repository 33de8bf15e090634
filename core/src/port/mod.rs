//! A client of Port's REST API that speaks it as Ocean does: same calls, same User-Agent (so the
//! same entity ownership), same batching, and retries decided in one place (`retry`).

mod auth;
mod client;
mod entities;
mod error;
mod model;
mod rate_limit;
mod resources;
pub use crate::retry;

pub use client::{BulkLimits, ClientStats, IntegrationIdentity, PortClient, PortClientConfig};
pub use error::PortError;
pub use model::{
    DeleteReport, Entity, EntityError, Integration, KafkaCredentials, NewIntegration, Organization,
    OwnedEntitiesPage, ResyncRequest, ResyncState, ResyncStatus, UpsertOptions, UpsertOutcome,
};
pub use rate_limit::RateLimiter;
pub use retry::RetryPolicy;
