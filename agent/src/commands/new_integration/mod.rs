//! `port-agent new NAME`: a new integration in this workspace, ready to grow — its module, its
//! `.port/` (spec and default resources) and a test against a local HTTP server, registered in
//! `integrations/src/lib.rs`. As generated it builds and its test passes (CI checks it:
//! `scripts/check-new-integration.sh`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

use crate::Failure;

const MODULE: &str = include_str!("mod.rs.template");
const SPEC: &str = include_str!("spec.yaml.template");
const BLUEPRINTS: &str = include_str!("blueprints.json.template");
const MAPPING: &str = include_str!("port-app-config.yml.template");
const TEST: &str = include_str!("test.rs.template");

/// Where `integrations/src/lib.rs` takes new modules and new registry entries.
const MODULES_MARKER: &str = "// port-agent new: modules above this line";
const ENTRIES_MARKER: &str = "    // port-agent new: entries above this line";

fn config_error(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Config(e.into())
}

/// `demo_api` → `DemoApi`.
fn camel_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn fill(template: &str, name: &str) -> String {
    template
        .replace("__Name__", &camel_case(name))
        .replace("__name__", name)
        .replace("__title__", &camel_case(name))
}

/// A name that is a Rust module, a kind prefix and an `integration.type` at once.
fn check_name(name: &str) -> Result<(), Failure> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid
        || matches!(
            name,
            "json" | "custom" | "push" | "mod" | "self" | "crate" | "super"
        )
    {
        return Err(config_error(anyhow!(
            "'{name}': an integration's name is lower-case letters, digits and _, starting with a letter, and not one that exists"
        )));
    }
    Ok(())
}

pub fn new_integration(name: &str, workspace: &Path) -> Result<(), Failure> {
    check_name(name)?;
    let lib = workspace.join("integrations/src/lib.rs");
    let registry = std::fs::read_to_string(&lib)
        .with_context(|| {
            format!(
                "{} (run in the port-agent workspace, or give --workspace)",
                lib.display()
            )
        })
        .map_err(config_error)?;
    let folder = workspace.join("integrations/src").join(name);
    if folder.exists() || registry.contains(&format!("pub mod {name};")) {
        return Err(config_error(anyhow!(
            "integration '{name}' exists already ({})",
            folder.display()
        )));
    }
    if !registry.contains(MODULES_MARKER) || !registry.contains(ENTRIES_MARKER) {
        return Err(config_error(anyhow!(
            "{}: the markers `port-agent new` writes at are gone",
            lib.display()
        )));
    }
    let files: [(PathBuf, &str); 5] = [
        (folder.join("mod.rs"), MODULE),
        (folder.join(".port/spec.yaml"), SPEC),
        (folder.join(".port/resources/blueprints.json"), BLUEPRINTS),
        (folder.join(".port/resources/port-app-config.yml"), MAPPING),
        (
            workspace.join(format!("integrations/tests/{name}.rs")),
            TEST,
        ),
    ];
    let entry = format!(
        "    BuiltIn {{\n        name: \"{name}\",\n        spec: include_str!(\"{name}/.port/spec.yaml\"),\n        blueprints: include_str!(\"{name}/.port/resources/blueprints.json\"),\n        mapping: include_str!(\"{name}/.port/resources/port-app-config.yml\"),\n        kinds: \"{name}-example-kind\",\n        make: |config, _| boxed({name}::{}Integration::from_config(config)),\n    }},\n",
        camel_case(name)
    );
    let registry = registry
        .replacen(
            MODULES_MARKER,
            &format!("pub mod {name};\n{MODULES_MARKER}"),
            1,
        )
        .replacen(ENTRIES_MARKER, &format!("{entry}{ENTRIES_MARKER}"), 1);
    for (path, template) in &files {
        let parent = path.parent().expect("a file in a folder");
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(path, fill(template, name)))
            .with_context(|| format!("cannot write {}", path.display()))
            .map_err(Failure::Run)?;
    }
    std::fs::write(&lib, registry)
        .with_context(|| format!("cannot write {}", lib.display()))
        .map_err(Failure::Run)?;
    // Laid out as `cargo fmt` would (the templates' lines depend on the name's length); without
    // rustfmt the files are still valid, only not formatted.
    let formatted = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(&lib)
        .arg(&files[0].0)
        .arg(&files[4].0)
        .status();
    if !formatted.is_ok_and(|s| s.success()) {
        tracing::warn!("rustfmt did not run: format the new files with `cargo fmt`");
    }
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "integration '{name}' made:\n  {}\n  integrations/tests/{name}.rs\n  registered in integrations/src/lib.rs (integration.type: {name})\nnext: cargo test -p port-agent-integrations --test {name}",
        folder.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_modules_and_types() {
        assert_eq!(camel_case("demo"), "Demo");
        assert_eq!(camel_case("my_api2"), "MyApi2");
        assert!(check_name("demo").is_ok());
        for bad in ["Demo", "1demo", "de-mo", "json", ""] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_are_filled_everywhere() {
        for template in [MODULE, SPEC, BLUEPRINTS, MAPPING, TEST] {
            let filled = fill(template, "demo_api");
            assert!(
                !filled.contains("__name__")
                    && !filled.contains("__Name__")
                    && !filled.contains("__title__")
            );
        }
    }
}
