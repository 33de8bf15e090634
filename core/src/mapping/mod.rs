//! Ocean's mapping (`port-app-config`), evaluated with jaq so that it produces the entities
//! Ocean produces.

pub mod budget;
mod compiled;
pub mod config;
mod dates;
mod interpolation;
pub mod jq;
mod natives;
mod pool;
mod quotes;
mod regex;
pub mod value;

pub use compiled::{CompiledMapping, CompiledResource, FieldError, FieldWarning, ItemResult};
pub use config::PortAppConfig;
pub(crate) use pool::map_batch;
pub use pool::{BatchResult, EnvAccess, MappingPool, PendingBatch, PoolError, WarningCount};
