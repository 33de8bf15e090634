use thiserror::Error;

/// Why a call to Port failed. Each variant names the call, so a log line alone says what broke.
#[derive(Debug, Error)]
pub enum PortError {
    /// Port answered with an error status, after any retries.
    #[error(
        "{call}: Port answered HTTP {status}{}: {message} (after {attempts} attempt{}){}",
        error.as_deref().map(|e| format!(" {e}")).unwrap_or_default(),
        if *attempts == 1 { "" } else { "s" },
        trace_id.as_deref().map(|t| format!(" [x-trace-id {t}]")).unwrap_or_default()
    )]
    Api {
        call: String,
        status: u16,
        /// Port's machine-readable `error` code, e.g. `not_found`.
        error: Option<String>,
        /// Port's `message`, or the start of the body when it sent no JSON.
        message: String,
        trace_id: Option<String>,
        attempts: u32,
    },

    /// No usable answer: connection refused or dropped, timeout, broken body.
    /// The cause is in the message, with its own causes, and not a `source`: a report of the
    /// chain would say it twice.
    #[error("{call}: no answer from Port (after {attempts} attempt{}): {}", if *attempts == 1 { "" } else { "s" }, crate::text::error_chain(cause))]
    Network {
        call: String,
        attempts: u32,
        cause: reqwest::Error,
    },

    /// Port refused the client id and secret.
    #[error(
        "Port rejected the credentials of client id '{client_id}' (HTTP {status}: {message}); check port.client_id and port.client_secret{}",
        trace_id.as_deref().map(|t| format!(" [x-trace-id {t}]")).unwrap_or_default()
    )]
    Credentials {
        client_id: String,
        status: u16,
        message: String,
        trace_id: Option<String>,
    },

    /// Port answered 2xx with a body we could not read.
    #[error("{call}: unexpected answer from Port: {reason}")]
    Decode { call: String, reason: String },

    /// The client was built with a setting that cannot work.
    #[error("invalid Port client setting `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
}

impl PortError {
    /// The HTTP status Port answered with, when it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            PortError::Api { status, .. } | PortError::Credentials { status, .. } => Some(*status),
            _ => None,
        }
    }
}
