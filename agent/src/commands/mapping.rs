//! `port-agent mapping test` and `mapping validate`: try a mapping without touching Port.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use port_agent_core::mapping::budget::{EVALUATION_STACK_BYTES, Limits};
use port_agent_core::mapping::{CompiledMapping, PortAppConfig};
use port_agent_core::raw_items::RawItemReader;

use crate::Failure;
use port_agent_core::text::printable;

fn load(mapping: &Path) -> Result<(PortAppConfig, CompiledMapping), Failure> {
    let config = PortAppConfig::from_file(mapping).map_err(|e| Failure::Config(e.into()))?;
    let env = crate::config::jq_env_access_from_environment().value();
    let compiled = CompiledMapping::compile(&config, env);
    Ok((config, compiled))
}

/// Compiles every expression and lists every error; exit 2 when there is any.
pub fn validate(mapping: &Path) -> Result<(), Failure> {
    let (config, compiled) = load(mapping)?;
    let errors: Vec<String> = compiled.errors().map(ToString::to_string).collect();
    let mut stdout = std::io::stdout();
    if errors.is_empty() {
        writeln!(
            stdout,
            "ok: {} compiles ({} resources)",
            mapping.display(),
            config.resources.len()
        )
        .map_err(|e| Failure::Run(e.into()))?;
        return Ok(());
    }
    let mut stderr = std::io::stderr();
    for error in &errors {
        let _ = writeln!(stderr, "{}: {error}", mapping.display());
    }
    Err(Failure::Config(anyhow!(
        "{}: {} expression{} do not compile",
        mapping.display(),
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    )))
}

/// What to map: the input file (or `-`), the kind, optionally one resource.
#[derive(Debug)]
pub struct TestArgs {
    pub mapping: PathBuf,
    pub kind: String,
    pub input: PathBuf,
    pub resource: Option<usize>,
}

/// Maps every input item; entities as JSON lines on stdout, problems on stderr.
/// Exit 0 when every item mapped, 1 when any item failed, 2 on a mapping error.
pub fn test(args: &TestArgs) -> Result<(), Failure> {
    let (config, compiled) = load(&args.mapping)?;
    let selected: Vec<usize> = match args.resource {
        Some(index) => match config.resources.get(index) {
            Some(r) if r.kind == args.kind => vec![index],
            Some(r) => {
                return Err(Failure::Config(anyhow!(
                    "resources[{index}] maps kind '{}', not '{}'",
                    r.kind,
                    args.kind
                )));
            }
            None => {
                return Err(Failure::Config(anyhow!(
                    "--resource {index}: the mapping has {} resources",
                    config.resources.len()
                )));
            }
        },
        None => compiled.resources_of_kind(&args.kind, &config).collect(),
    };
    if selected.is_empty() {
        return Err(Failure::Config(anyhow!(
            "{}: no resource maps kind '{}'",
            args.mapping.display(),
            args.kind
        )));
    }
    let broken: Vec<String> = selected
        .iter()
        .filter_map(|&i| compiled.resources[i].as_ref().err())
        .flatten()
        .map(ToString::to_string)
        .collect();
    if !broken.is_empty() {
        return Err(Failure::Config(anyhow!(
            "{}:\n  {}",
            args.mapping.display(),
            broken.join("\n  ")
        )));
    }

    let input: Box<dyn std::io::BufRead + Send> = if args.input.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let file = std::fs::File::open(&args.input)
            .with_context(|| format!("cannot read {}", args.input.display()))
            .map_err(Failure::Run)?;
        Box::new(std::io::BufReader::new(file))
    };
    let input_name = args.input.display().to_string();
    // Items are read and mapped one at a time (memory stays flat at any size), on a thread with
    // the stack mappings are evaluated with, each within the default limits.
    std::thread::Builder::new()
        .name("mapping-test".to_owned())
        .stack_size(EVALUATION_STACK_BYTES)
        .spawn(move || {
            // jq values are not Send: the mapping is compiled where it runs.
            let env = crate::config::jq_env_access_from_environment().value();
            let compiled = CompiledMapping::compile(&config, env);
            map_each(&compiled, &selected, input, &input_name)
        })
        .map_err(|e| Failure::Run(e.into()))?
        .join()
        .unwrap_or_else(|_| Err(Failure::Run(anyhow!("mapping the items failed"))))
}

/// Maps each item of `input` with the `selected` resources, printing entities and problems.
fn map_each(
    compiled: &CompiledMapping,
    selected: &[usize],
    input: Box<dyn std::io::BufRead + Send>,
    input_name: &str,
) -> Result<(), Failure> {
    let limits = Limits::default();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut stderr = std::io::stderr();
    let (mut items, mut failed_items) = (0usize, 0usize);
    for (number, item) in RawItemReader::new(input).enumerate() {
        let item = item
            .with_context(|| format!("{input_name} is neither a JSON array nor JSON lines"))
            .map_err(Failure::Run)?;
        items += 1;
        let mut item_failed = false;
        for &index in selected {
            let resource = compiled.resources[index]
                .as_ref()
                .expect("checked above: every selected resource compiled");
            let result = compiled.map_raw(resource, item.get().as_bytes(), &limits);
            for entity in &result.entities {
                serde_json::to_writer(&mut out, entity).map_err(|e| Failure::Run(e.into()))?;
                out.write_all(b"\n").map_err(|e| Failure::Run(e.into()))?;
            }
            for reason in &result.skipped {
                let _ = writeln!(stderr, "item {number}: warning: {reason}");
            }
            for warning in &result.warnings {
                let _ = writeln!(
                    stderr,
                    "item {number}: warning: {}: {} (the field is null)",
                    warning.field,
                    printable(&warning.message)
                );
            }
            for error in &result.errors {
                let _ = writeln!(stderr, "item {number}: error: {}", printable(error));
                item_failed = true;
            }
        }
        failed_items += usize::from(item_failed);
    }
    out.flush().map_err(|e| Failure::Run(e.into()))?;
    if failed_items > 0 {
        return Err(Failure::Run(anyhow!(
            "{failed_items} of {items} items failed to map"
        )));
    }
    Ok(())
}
