//! `port-emulator`: Port's REST API in memory, for scripts, benchmarks and the quickstart.

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use port_emulator::EmulatorConfig;
use tokio::net::TcpListener;

/// An in-memory stand-in for Port's REST API (https://api.getport.io/v1), with test controls
/// under /_emulator/ (stats, entities, reset, faults).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the address is printed).
    #[arg(long, default_value = "127.0.0.1:5555")]
    listen: String,
    /// The client id that gets a token.
    #[arg(long, default_value = "emulator-client")]
    client_id: String,
    /// The client secret that gets a token.
    #[arg(long, default_value = "emulator-secret")]
    client_secret: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_ttl: u64,
    /// Requests per second before answering 429 with Retry-After, like Port's quota.
    #[arg(long)]
    rate_limit: Option<u32>,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, default_value_t = 1024 * 1024 + 1024)]
    max_body_bytes: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = EmulatorConfig {
        client_id: args.client_id,
        client_secret: args.client_secret,
        token_ttl: Duration::from_secs(args.token_ttl),
        rate_limit: args.rate_limit,
        max_body_bytes: args.max_body_bytes,
        ..EmulatorConfig::default()
    };
    let listener = TcpListener::bind(&args.listen).await?;
    let addr = listener.local_addr()?;
    // Scripts read this line to learn the address when --listen asked for port 0.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "port-emulator listening on http://{addr}")?;
    stdout.flush()?;
    port_emulator::serve(listener, config, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
