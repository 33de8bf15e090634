//! `port-agent`: keeps Port in step with your tools, sending only what changed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use port_agent::{Failure, commands};

/// Keeps Port (getport.io) in step with your tools. Reads Ocean's mapping files and settings,
/// remembers what it already sent, and sends Port only what changed.
#[derive(Debug, Parser)]
#[command(name = "port-agent", version, propagate_version = true)]
struct Cli {
    /// Log filter for stderr: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, global = true, default_value = "warn", env = "PORT_AGENT_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Talk to Port's API.
    #[command(subcommand)]
    Port(PortCommand),
}

#[derive(Debug, Subcommand)]
enum PortCommand {
    /// Authenticate, read the organization and this integration, and print a one-line verdict.
    ///
    /// Exit code 0 when Port accepts the credentials, 1 when it does not (or cannot be
    /// reached), 2 when the configuration itself is wrong.
    Check(ConfigArg),
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The agent's YAML config; OCEAN__* environment variables override its keys.
    #[arg(long, short = 'c', env = "PORT_AGENT_CONFIG")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            return report(Failure::Run(
                anyhow::Error::new(e).context("cannot start the async runtime"),
            ));
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Port(PortCommand::Check(args)) => {
                commands::port_check::run(&args.config).await
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure),
    }
}

fn report(failure: Failure) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {:#}", failure.error());
    ExitCode::from(failure.exit_code())
}
