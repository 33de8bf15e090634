//! `port-agent`: keeps Port in step with your tools, sending only what changed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use mimalloc::MiMalloc;
use port_agent::{Failure, commands};

/// Mapping allocates and frees many small values; mimalloc does that far faster than glibc.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Keeps Port (getport.io) in step with your tools. Reads Ocean's mapping files and settings,
/// remembers what it already sent, and sends Port only what changed.
#[derive(Debug, Parser)]
#[command(name = "port-agent", version, propagate_version = true)]
struct Cli {
    /// Log filter for stderr: error, warn, info, debug, trace, or a tracing directive list
    /// (default: info for `run`, a service whose lifecycle is worth a line; warn otherwise).
    #[arg(long, global = true, env = "PORT_AGENT_LOG")]
    log: Option<String>,
    /// How log lines are written: text (for people), json (one object a line, with the run's
    /// and the resource's fields, for log pipelines), or auto: for `run`, text on a terminal
    /// and to journald and json anywhere else (a container's log, a pipe, a file); text for
    /// the other commands.
    #[arg(
        long,
        global = true,
        env = "PORT_AGENT_LOG_FORMAT",
        default_value = "auto"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Auto,
    Text,
    Json,
}

impl LogFormat {
    /// Whether lines are JSON. `auto`: JSON for the service (`run`) when its stderr is neither
    /// a terminal nor the journal — a container's log, a collector; text for the other
    /// commands, whose output a person or a CI log reads.
    fn is_json(self, service: bool) -> bool {
        match self {
            Self::Json => true,
            Self::Text => false,
            Self::Auto => {
                service
                    && !std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && !stderr_is_the_journal()
            }
        }
    }
}

/// Whether stderr is systemd's journal stream: `JOURNAL_STREAM` names its device and inode
/// (a child whose stderr was redirected inherits the variable but not the stream). The
/// journal stamps and indexes each line itself, so text reads best there.
fn stderr_is_the_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|stderr| device.parse() == Ok(stderr.dev()) && inode.parse() == Ok(stderr.ino()))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Talk to Port's API.
    #[command(subcommand)]
    Port(PortCommand),
    /// One resync: fetch, map, compare with the state, send Port only what changed, then exit.
    ///
    /// Exit code 0 only when the run completed; 1 when it failed or was aborted; 2 when the
    /// configuration is wrong.
    Resync {
        #[command(flatten)]
        config: ConfigArg,
        /// Only these kinds (repeatable); only their entities can be deleted.
        #[arg(long)]
        kind: Vec<String>,
        /// Write nothing to Port or the state; print what would be upserted and deleted, and why.
        #[arg(long)]
        dry_run: bool,
        /// Print the summary as one JSON object (run_id, status, kinds, totals, duration_ms).
        #[arg(long)]
        json: bool,
    },
    /// Run as a service: resync at start, when a resync is requested in Port (POLLING, every
    /// event_listener.interval seconds) and every scheduled_resync_interval minutes. With
    /// event_listener ONCE: one resync, then exit. SIGTERM stops it cleanly (exit 0).
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// What the agent believes is in Port.
    #[command(subcommand)]
    State(StateCommand),
    /// Try a mapping (port-app-config) on raw items, without Port.
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// Check the agent config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The integrations built into this port-agent.
    #[command(subcommand)]
    Integrations(IntegrationsCommand),
    /// Whether a running agent is ready (`GET /health/ready`): exit 0 when it is, 1 otherwise.
    /// For a container's HEALTHCHECK.
    Health {
        /// The agent's `http.listen` address.
        #[arg(long, default_value = "127.0.0.1:8000")]
        address: String,
    },
    /// Make a new integration in the port-agent workspace: its module, its `.port/` (spec and
    /// default resources) and a test against a local HTTP server, registered and ready to build.
    New {
        /// Lower-case letters, digits and _ (it becomes `integration.type`).
        name: String,
        /// The port-agent workspace (the folder with `integrations/`).
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum IntegrationsCommand {
    /// Each built-in integration: its version, the kinds it fetches and its settings (type,
    /// required, sensitive, default), from its `.port/spec.yaml`.
    List,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Everything a run would trip over, reported at once: the config, every mapping expression,
    /// the blueprints file, the integration's settings and files, and mapping kinds the
    /// integration cannot fetch. Exit 0 when all is well, 2 otherwise. Does not contact Port.
    Validate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The configuration in effect: each value with where it came from (the file, an
    /// environment variable, a default), secrets redacted.
    Show {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Each entity the agent believes is in Port (hash, kind, last seen, last written), the run
    /// history and the checkpoints. No secrets.
    Inspect {
        /// The agent's config (its state.path is inspected).
        #[arg(long, short = 'c', env = "PORT_AGENT_CONFIG", conflicts_with = "state")]
        config: Option<PathBuf>,
        /// A state file, directly.
        #[arg(long)]
        state: Option<PathBuf>,
        #[arg(long)]
        blueprint: Option<String>,
        #[arg(long)]
        identifier: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Counts by blueprint and kind, runs, file size.
    Stats {
        #[command(flatten)]
        target: StateTarget,
        #[arg(long)]
        json: bool,
    },
    /// Every entity record as JSON lines.
    Export {
        #[command(flatten)]
        target: StateTarget,
        /// JSON lines (the only format).
        #[arg(long, default_value_t = true)]
        jsonl: bool,
    },
    /// Build the state from what Port holds for this integration (after switching from Ocean):
    /// entities Port holds as mapped are not sent again. Sends nothing to Port.
    Rebuild {
        #[command(flatten)]
        config: ConfigArg,
        /// Read Port (the only source there is; Ocean's flag name).
        #[arg(long, required = true)]
        from_port: bool,
        /// Replace an existing state file.
        #[arg(long)]
        yes: bool,
    },
    /// Compare the state with Port (entities deleted or edited there by hand, or unknown to the
    /// state). Exit 0 when nothing drifted, 1 when something did.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// Fix the drift: re-send what Port lost or changed, delete what the data no longer has.
        #[arg(long)]
        repair: bool,
    },
    /// Give the file's free pages back to the filesystem (the file keeps them for reuse
    /// otherwise). Needs the file to itself: stop the agent first.
    Compact {
        #[command(flatten)]
        target: StateTarget,
    },
    /// Put the live events that kept failing (see `state inspect`) back in the inbox, to be
    /// applied again (by the running agent, which it asks, or by the next `port-agent run`).
    RetryDeadLetters {
        #[command(flatten)]
        target: StateTarget,
    },
    /// Forget everything: the next resync sends every entity once. Asks first.
    Reset {
        #[command(flatten)]
        target: StateTarget,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// Which state file: the config's, or one named directly.
#[derive(Debug, Args)]
struct StateTarget {
    /// The agent's config (its state.path).
    #[arg(long, short = 'c', env = "PORT_AGENT_CONFIG", conflicts_with = "state")]
    config: Option<PathBuf>,
    /// A state file, directly.
    #[arg(long)]
    state: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum MappingCommand {
    /// Map raw items and print each entity as one JSON line.
    ///
    /// Warnings and errors, with their field paths, go to stderr. Exit code 0 when every item
    /// mapped, 1 when any item failed, 2 when the mapping itself is wrong.
    Test {
        /// The port-app-config file (YAML or JSON).
        #[arg(long)]
        mapping: PathBuf,
        /// The kind the items are of.
        #[arg(long)]
        kind: String,
        /// Raw items: a JSON array or JSON lines; `-` reads stdin.
        #[arg(long)]
        input: PathBuf,
        /// Only this resource (its index in `resources`).
        #[arg(long)]
        resource: Option<usize>,
    },
    /// Compile every expression of a mapping and list every error at once.
    Validate {
        /// The port-app-config file (YAML or JSON).
        #[arg(long)]
        mapping: PathBuf,
    },
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
    let json_logs = cli
        .log_format
        .is_json(matches!(cli.command, Command::Run { .. }));
    let default_level = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or(default_level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        logs.json()
            .with_current_span(false)
            .with_span_list(true)
            .init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        // State calls run on blocking threads; a few suffice (redb serializes writers), and
        // every extra thread keeps its own allocator heap.
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return report(
                Failure::Run(anyhow::Error::new(e).context("cannot start the async runtime")),
                json_logs,
            );
        }
    };
    let outcome = match cli.command {
        Command::Port(PortCommand::Check(args)) => {
            runtime.block_on(commands::port_check::run(&args.config))
        }
        Command::Mapping(MappingCommand::Test {
            mapping,
            kind,
            input,
            resource,
        }) => commands::mapping::test(&commands::mapping::TestArgs {
            mapping,
            kind,
            input,
            resource,
        }),
        Command::Mapping(MappingCommand::Validate { mapping }) => {
            commands::mapping::validate(&mapping)
        }
        Command::Resync {
            config,
            kind,
            dry_run,
            json,
        } => runtime.block_on(commands::resync::run(&commands::resync::ResyncArgs {
            config: config.config,
            kind,
            dry_run,
            json,
        })),
        Command::State(StateCommand::Inspect {
            config,
            state,
            blueprint,
            identifier,
            kind,
            json,
        }) => runtime.block_on(commands::state::inspect(&commands::state::InspectArgs {
            config,
            state,
            blueprint,
            identifier,
            kind,
            json,
        })),
        Command::State(StateCommand::Stats { target, json }) => {
            commands::state::stats(&target.config, &target.state, json)
        }
        Command::State(StateCommand::Export { target, .. }) => {
            commands::state::export(&target.config, &target.state)
        }
        Command::Integrations(IntegrationsCommand::List) => commands::integrations::list(),
        Command::Health { address } => runtime.block_on(commands::health::check(&address)),
        Command::New { name, workspace } => {
            commands::new_integration::new_integration(&name, &workspace)
        }
        Command::Config(ConfigCommand::Show { config }) => {
            commands::config_show::show(&config.config)
        }
        Command::Config(ConfigCommand::Validate { config }) => {
            commands::config_check::validate(&config.config)
        }
        Command::Run { config } => runtime.block_on(commands::service::serve(&config.config)),
        Command::State(StateCommand::Compact { target }) => {
            commands::state::compact(&target.config, &target.state)
        }
        Command::State(StateCommand::RetryDeadLetters { target }) => runtime.block_on(
            commands::state::retry_dead_letters(&target.config, &target.state),
        ),
        Command::State(StateCommand::Reset { target, yes }) => {
            commands::state::reset(&target.config, &target.state, yes)
        }
        Command::State(StateCommand::Rebuild { config, yes, .. }) => {
            runtime.block_on(commands::resync::rebuild(&config.config, yes))
        }
        Command::State(StateCommand::Verify { config, repair }) => {
            runtime.block_on(commands::resync::verify(&config.config, repair))
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(failure, json_logs),
    }
}

/// The failure on stderr: a line for people, or a JSON log line when logs are JSON.
fn report(failure: Failure, json_logs: bool) -> ExitCode {
    if json_logs {
        tracing::error!(exit_code = failure.exit_code(), "{:#}", failure.error());
    } else {
        let _ = writeln!(std::io::stderr(), "error: {:#}", failure.error());
    }
    ExitCode::from(failure.exit_code())
}
