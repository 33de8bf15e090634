//! `port-agent port check`: can this configuration talk to Port?

use port_agent_core::text::redact_url;
use std::io::Write;
use std::path::Path;

use anyhow::anyhow;
use port_agent_core::port::PortClient;

use crate::Failure;
use crate::config;

pub async fn run(config_path: &Path) -> Result<(), Failure> {
    let loaded = config::load(config_path)?;
    let config = &loaded.config;
    let mut client_config = config.port_client_config();
    // A check answers quickly: a few attempts, not a resync's patience.
    client_config.retry.max_attempts = 3;
    let client = PortClient::new(client_config).map_err(|e| Failure::Config(e.into()))?;
    let base_url = redact_url(&config.port.base_url);
    let identifier = &config.integration.identifier;
    let wanted_type = &config.integration.integration_type;

    let organization = client.get_organization().await.map_err(|e| {
        Failure::Run(
            anyhow::Error::new(e).context(format!("Port at {base_url} did not accept this agent")),
        )
    })?;
    let integration = client.get_integration(identifier).await.map_err(|e| {
        Failure::Run(
            anyhow::Error::new(e).context(format!("cannot read integration '{identifier}'")),
        )
    })?;

    let integration_part = match integration {
        None => {
            format!("integration '{identifier}' does not exist yet (the first resync creates it)")
        }
        Some(found) => match found.installation_app_type.as_deref() {
            Some(actual) if actual != wanted_type => {
                return Err(Failure::Run(anyhow!(
                    "integration '{identifier}' exists in Port with type '{actual}', but the config says '{wanted_type}'; \
                     entity ownership would not match (set integration.type or OCEAN__INTEGRATION__TYPE)"
                )));
            }
            _ => format!("integration '{identifier}' of type '{wanted_type}' exists"),
        },
    };
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "ok: Port at {base_url} accepted client '{}' (organization {}); {integration_part}",
        config.port.client_id, organization.id
    )
    .map_err(|e| Failure::Run(e.into()))?;
    Ok(())
}
