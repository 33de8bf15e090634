//! The `port-agent` binary's parts: configuration loading and the commands.
//! `main.rs` only parses the command line and maps failures to exit codes.

pub mod commands;
pub mod config;
pub mod http;
pub mod live;
pub mod notify;

/// How a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The configuration is unusable: exit 2.
    Config(anyhow::Error),
    /// The work failed: exit 1.
    Run(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Config(_) => 2,
            Failure::Run(_) => 1,
        }
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Config(e) | Failure::Run(e) => e,
        }
    }
}

impl From<config::ConfigError> for Failure {
    fn from(error: config::ConfigError) -> Self {
        Failure::Config(error.into())
    }
}
