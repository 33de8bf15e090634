//! Ocean's mapping (`port-app-config`), evaluated with jaq so that it produces the entities
//! Ocean produces.

mod interpolation;
pub mod jq;
mod natives;
mod quotes;
mod regex;
pub mod value;
