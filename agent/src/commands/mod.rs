//! One module a command.

pub mod config_check;
pub mod config_show;
pub mod health;
pub mod integrations;
pub mod mapping;
pub mod new_integration;
pub mod port_check;
pub mod resync;
pub mod service;
pub mod state;
