//! `port-agent integrations list`: the built-in integrations, their kinds and their settings
//! (from each one's `.port/spec.yaml`).

use std::io::Write;

use anyhow::anyhow;
use port_agent_core::spec::{Configuration, IntegrationSpec};
use port_agent_core::text::value_text;

use crate::Failure;

/// One setting's line: name, type, then what applies (required, sensitive, default, values).
fn setting_line(setting: &Configuration) -> String {
    let mut notes = Vec::new();
    if setting.required {
        notes.push("required".to_owned());
    }
    for dependency in setting.dependencies.iter().filter(|d| d.then.required) {
        let when = match (&dependency.when.equals, &dependency.when.one_of) {
            (Some(value), _) => value_text(value),
            (None, Some(values)) => values.iter().map(value_text).collect::<Vec<_>>().join("|"),
            (None, None) => continue,
        };
        notes.push(format!("required when {} is {when}", dependency.on));
    }
    if setting.sensitive {
        notes.push("sensitive".to_owned());
    }
    if let Some(default) = &setting.default {
        notes.push(format!("default {}", value_text(default)));
    }
    if let Some(allowed) = &setting.allowed {
        let values: Vec<String> = allowed.iter().map(value_text).collect();
        notes.push(format!("one of {}", values.join(", ")));
    }
    format!(
        "    {:<26} {:<8} {}",
        setting.name,
        setting.value_type.as_str(),
        notes.join("; ")
    )
    .trim_end()
    .to_owned()
}

pub fn list() -> Result<(), Failure> {
    let mut out = std::io::stdout();
    for built_in in port_agent_integrations::BUILT_IN {
        let spec = IntegrationSpec::from_yaml(built_in.spec)
            .map_err(|e| Failure::Run(anyhow!("{}: {e}", built_in.name)))?;
        let title = spec.title.as_deref().unwrap_or(built_in.name);
        let mut text = format!(
            "{} {} — {title}\n  kinds: {}\n  settings (integration.config):\n",
            built_in.name,
            env!("CARGO_PKG_VERSION"),
            built_in.kinds
        );
        for setting in &spec.configurations {
            text.push_str(&setting_line(setting));
            text.push('\n');
        }
        writeln!(out, "{text}").map_err(|e| Failure::Run(e.into()))?;
    }
    Ok(())
}
