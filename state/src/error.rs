use std::path::PathBuf;

/// Why the state cannot be used. Every message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state file {path} is locked by another process (another port-agent is running on it); stop it, or give this one its own state.path"
    )]
    Locked { path: PathBuf },

    #[error(
        "state file {path} is corrupt or not a port-agent state file ({detail}); it was left untouched: move it aside and run again (the first resync then sends every entity once)"
    )]
    Corrupt { path: PathBuf, detail: String },

    #[error(
        "state file {path} belongs to integration '{found}', not '{expected}'; give each integration its own state.path"
    )]
    OtherIntegration {
        path: PathBuf,
        found: String,
        expected: String,
    },

    #[error(
        "state file {path} was written by a newer port-agent (schema {found}, this one knows up to {supported}); upgrade port-agent"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// Only a read was asked for, and an older layout cannot be read before it is migrated.
    #[error(
        "state file {path} was written by an older port-agent (schema {found}; this one writes {supported}); `port-agent run`, `resync` or `state compact` of this version migrates it when it opens it, and until then only the older port-agent reads it. It was left untouched"
    )]
    OlderSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error(
        "state file {path} is open read-only here; this needs the agent stopped (or no agent on it)"
    )]
    ReadOnly { path: PathBuf },

    // The cause is in the message and not a `source`: a report of the chain would say it twice.
    #[error("state file {path}: {cause}")]
    Storage { path: PathBuf, cause: redb::Error },
}
