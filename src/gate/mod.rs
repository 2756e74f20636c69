//! Plugin side of the PreStop gate.
//!
//! The gate (`gate/main.rs`, embedded in the plugin binary) becomes PID 1 of every container
//! that has a PreStop hook and asks the plugin, over a per-container unix socket, to run the hook
//! before it forwards a stop signal. This module:
//!
//! - [`binary`]: writes the embedded gate out under the runtime directory, named by version and
//!   content hash;
//! - [`inject`]: the `CreateContainer` adjustment (mounts, annotation, args) and the checks the
//!   core needs in `PostCreateContainer`;
//! - [`server`]: one socket server per gated container, with the peer check; its stop
//!   requests go to the core's one input;
//! - [`state`]: the per-container record a restarted plugin serves the gate from;
//! - [`protocol`]: the wire protocol, shared verbatim with the gate.

pub mod binary;
pub mod inject;
pub mod protocol;
pub mod server;
pub mod state;

pub use binary::{embedded_gate, gate_file_name, install_gate};
pub use inject::{adjustment, args_are_gated, gate_args, is_gated, GateParams, GATED_ANNOTATION};
pub use server::{GateServers, Recovered};
pub use state::{GateRecord, RecordedGate, RecordedPreStop};

use std::path::PathBuf;

/// Errors of the gate's plugin side.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the gate binary to {path}: {source}")]
    WriteBinary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container id {id:?} cannot name a directory")]
    BadContainerId { id: String },
    #[error("cannot create the gate socket {path} of container {id}: {source}")]
    Socket {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the namespaces of process {pid} of container {id}: {source}")]
    InitNamespaces {
        id: String,
        pid: u32,
        source: std::io::Error,
    },
    #[error("container {id} has no gate socket")]
    NotOpen { id: String },
    #[error(transparent)]
    State(state::StateError),
}
