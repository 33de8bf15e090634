//! The systems port-agent syncs from: one module each, behind `port_agent_core::integration`.

pub mod json;
pub mod push;
