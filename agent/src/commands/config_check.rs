//! `port-agent config validate`: everything a run would trip over, found before it runs and
//! reported at once: the agent config, the mapping (every expression compiled), the blueprints
//! file, the integration's settings, and mapping kinds the integration cannot fetch.

use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use port_agent_core::mapping::{CompiledMapping, PortAppConfig};

use crate::Failure;
use crate::commands::resync::{blueprints, default_mapping, integration, integration_dependencies};
use crate::config;

pub fn validate(config_path: &Path) -> Result<(), Failure> {
    // The config's own problems are all reported by `load`; nothing else can be checked without it.
    let loaded = config::load(config_path)?;
    let settings = &loaded.config;
    let mut problems: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let mapping = match loaded.mapping_path() {
        None => {
            notes.push("mapping: port: read from the integration in Port at each run; not checked here (`port check` tests the connection)".to_owned());
            None
        }
        Some(_) if let Some(built_in) = default_mapping(&loaded) => {
            notes.push(format!(
                "no mapping file: the {} integration's default mapping is used",
                built_in.name
            ));
            PortAppConfig::from_yaml(built_in.mapping).ok()
        }
        Some(path) => match PortAppConfig::from_file(&path) {
            Ok(mapping) => {
                let compiled = CompiledMapping::compile(&mapping, settings.jq_env_access().value());
                problems.extend(
                    compiled
                        .errors()
                        .map(|e| format!("{}: {e}", path.display())),
                );
                Some(mapping)
            }
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        },
    };

    let blueprint_count = match blueprints(&loaded) {
        Ok(found) => {
            for (i, blueprint) in found.iter().enumerate() {
                if blueprint
                    .get("identifier")
                    .and_then(|v| v.as_str())
                    .is_none()
                {
                    problems.push(format!(
                        "{}: blueprint [{i}] has no \"identifier\"",
                        loaded
                            .resolve(&settings.resources_path)
                            .join("blueprints.json")
                            .display()
                    ));
                }
            }
            found.len()
        }
        Err(failure) => {
            problems.push(format!("{:#}", failure.error()));
            0
        }
    };

    let mut kinds = Vec::new();
    match integration(&loaded) {
        Ok(integration) => {
            // When the integration cannot be made, its own errors say what is missing.
            problems.extend(
                integration_dependencies(&loaded)
                    .into_iter()
                    .map(|p| format!("{}: {p}", loaded.path.display())),
            );
            problems.extend(
                integration
                    .check()
                    .into_iter()
                    .map(|p| format!("{}: {p}", loaded.path.display())),
            );
            kinds = integration.kinds();
            if let Some(mapping) = &mapping {
                for (i, resource) in mapping.resources.iter().enumerate() {
                    problems.extend(integration.check_resource(resource).into_iter().map(|p| {
                        format!(
                            "resources[{i}] ({}): {p}",
                            settings.integration.integration_type
                        )
                    }));
                }
            }
        }
        Err(failure) => problems.push(format!("{:#}", failure.error())),
    }

    let mut stderr = std::io::stderr();
    for note in &notes {
        let _ = writeln!(stderr, "note: {note}");
    }
    if problems.is_empty() {
        let mut out = std::io::stdout();
        return writeln!(
            out,
            "ok: {}: {} resources, {} kinds, {} blueprints",
            loaded.path.display(),
            mapping.map_or(0, |m| m.resources.len()),
            kinds.len(),
            blueprint_count
        )
        .map_err(|e| Failure::Run(e.into()));
    }
    for problem in &problems {
        let _ = writeln!(stderr, "{problem}");
    }
    Err(Failure::Config(anyhow!(
        "{}: {} problem{}",
        loaded.path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    )))
}
