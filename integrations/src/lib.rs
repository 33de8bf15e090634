//! The systems port-agent syncs from: one module each, behind `port_agent_core::integration`,
//! each with Ocean's `.port/` folder (`spec.yaml`, default `resources/`) beside its code.

pub mod custom;
pub mod github;
pub mod json;
pub mod signature;
// port-agent new: modules above this line

pub use json::push;

use std::path::Path;

use port_agent_core::integration::Integration;
use serde_json::{Map, Value};

/// Makes an integration from its `integration.config` (already checked against its spec and
/// completed with its defaults) and the config file's folder (relative paths start there).
pub type Make = fn(&Map<String, Value>, &Path) -> Result<Box<dyn Integration>, String>;

fn boxed<I: Integration + 'static>(
    made: Result<I, String>,
) -> Result<Box<dyn Integration>, String> {
    made.map(|i| Box::new(i) as Box<dyn Integration>)
}

/// A built-in integration: what `port-agent integrations list` shows and what the agent
/// enforces on `integration.config`.
#[derive(Clone, Copy)]
pub struct BuiltIn {
    /// `integration.type`.
    pub name: &'static str,
    /// Its `.port/spec.yaml`.
    pub spec: &'static str,
    /// Its `.port/resources/blueprints.json`, used when the user gives none.
    pub blueprints: &'static str,
    /// Its `.port/resources/port-app-config.yml`, used when the user gives none.
    pub mapping: &'static str,
    /// The kinds it fetches, in words.
    pub kinds: &'static str,
    pub make: Make,
}

impl std::fmt::Debug for BuiltIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltIn")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Every built-in integration.
pub const BUILT_IN: &[BuiltIn] = &[
    BuiltIn {
        name: "custom",
        spec: include_str!("custom/.port/spec.yaml"),
        blueprints: include_str!("custom/.port/resources/blueprints.json"),
        mapping: include_str!("custom/.port/resources/port-app-config.yml"),
        kinds: "any endpoint path of the API (e.g. /api/v1/users)",
        make: |config, _| boxed(custom::CustomIntegration::from_config(config)),
    },
    BuiltIn {
        name: "github",
        spec: include_str!("github/.port/spec.yaml"),
        blueprints: include_str!("github/.port/resources/blueprints.json"),
        mapping: include_str!("github/.port/resources/port-app-config.yml"),
        kinds: "organization, repository, pull-request, issue, release, tag, branch, workflow, collaborator",
        make: |config, _| boxed(github::GitHubIntegration::from_config(config)),
    },
    BuiltIn {
        name: "json",
        spec: include_str!("json/.port/spec.yaml"),
        blueprints: include_str!("json/.port/resources/blueprints.json"),
        mapping: include_str!("json/.port/resources/port-app-config.yml"),
        kinds: "any kind named under integration.config.kinds",
        make: |config, base_dir| boxed(json::JsonIntegration::from_config(config, base_dir)),
    },
    // port-agent new: entries above this line
];

/// The built-in integration of type `name`.
pub fn built_in(name: &str) -> Option<&'static BuiltIn> {
    BUILT_IN.iter().find(|b| b.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_ships_a_spec_and_default_resources_that_read() {
        for built_in in BUILT_IN {
            let spec = port_agent_core::spec::IntegrationSpec::from_yaml(built_in.spec)
                .unwrap_or_else(|e| panic!("{}: {e}", built_in.name));
            assert!(!spec.configurations.is_empty(), "{}", built_in.name);
            let blueprints: serde_json::Value = serde_json::from_str(built_in.blueprints).unwrap();
            assert!(blueprints.is_array(), "{}", built_in.name);
            port_agent_core::mapping::PortAppConfig::from_yaml(built_in.mapping)
                .unwrap_or_else(|e| panic!("{}: {e}", built_in.name));
        }
    }
}
