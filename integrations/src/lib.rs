//! The systems port-agent syncs from: one module each, behind `port_agent_core::integration`.

pub mod custom;
pub mod json;
pub mod push;

use port_agent_core::Secret;
use port_agent_core::webhook::WebhookProcessor;

/// The live-event processors of integration `integration_type`: the `json` integration's push
/// endpoint (signed with `secret`; unsigned events only with `allow_unsigned`).
pub fn webhook_processors(
    integration_type: &str,
    secret: Option<Secret>,
    allow_unsigned: bool,
) -> Vec<Box<dyn WebhookProcessor>> {
    match integration_type {
        "json" => vec![Box::new(push::PushProcessor {
            secret,
            allow_unsigned,
        })],
        _ => Vec::new(),
    }
}
