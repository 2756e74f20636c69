//! The outside world, as the core sees it: one trait, handed to the core once.
//!
//! The core decides; an [`Effects`] implementation acts (runs hooks, signals processes, puts
//! the gate in front of an entrypoint, writes files). The node's real one is
//! [`crate::node::Node`]; the core's unit tests use a recording fake.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::error::EffectError;
use crate::annotations::HookSpec;
use crate::config::Config;
use crate::gate::{GateParams, GateRecord, Recovered};
use crate::hooks;
use crate::model::{Adjustment, Container};
use crate::ns::pidfd::PidFd;

/// Whether a container with a PreStop hook really has the gate as its PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateStatus {
    Gated,
    /// The gate could not be put in front of the entrypoint; PreStop runs best-effort.
    Ungated(String),
}

/// The outside world. Every method but the `async` ones returns at once.
#[async_trait]
pub trait Effects: Send + Sync + 'static {
    /// Applies a (new) config: log destination, gate binary and sockets, containerd's API.
    /// `runtime_pid` is the runtime at the other end of the NRI socket (0 when unknown).
    fn configure(&self, config: &Config, runtime_pid: u32);

    /// Opens a handle on the container's init process, at the first sight of its PID. From
    /// then on every signal and every hook of this container goes through this handle.
    fn hold_init(&self, container: &Container) -> Result<Arc<PidFd>, EffectError>;

    /// The container's OCI bundle directory (its `config.json`), where it can be known.
    fn bundle(&self, container_id: &str) -> Option<PathBuf>;

    /// Runs a hook to its end, bounded by `limits.default_timeout` (the core puts the bound it
    /// chose there). Dropping the future stops the hook.
    async fn run_hook(
        &self,
        spec: &HookSpec,
        target: &hooks::Target,
        limits: &hooks::Limits,
    ) -> hooks::Outcome;

    /// Sends `signal` to the container's init process.
    fn signal(&self, container_id: &str, init: &PidFd, signal: i32) -> Result<(), EffectError>;

    /// Resolves when the container's init process has exited (at once if it is already gone).
    async fn exited(&self, init: &PidFd);

    /// Writes the kubelet-style termination message into the container's termination-message
    /// file, when it has one (never creates it, never follows a symlink).
    fn write_termination_message(
        &self,
        container: &Container,
        message: &str,
    ) -> Result<(), EffectError>;

    /// The `CreateContainer` adjustment that puts the gate in front of the entrypoint.
    fn gate_adjustment(
        &self,
        container: &Container,
        params: &GateParams,
    ) -> Result<Adjustment, EffectError>;

    /// After the container was created: make sure the gate will be its PID 1 (on runtimes
    /// that ignore the args adjustment, through containerd's API). The core bounds the wait.
    async fn gate_post_create(&self, container: &Container, params: &GateParams) -> GateStatus;

    /// The gated container's init process is known: its gate socket serves only processes of
    /// this container from now on.
    fn gate_started(&self, container: &Container, init: &PidFd);

    /// Whether the container carries our "gated" marker (seen again after a plugin restart).
    fn is_gated(&self, container: &Container) -> bool;

    /// Whether the running container's init process is the gate, read from the process
    /// itself (`None`: not running, or it cannot be told). What the runtime reports as the
    /// args can differ from what runs: on containerd 1.7 a plugin that dies while it rewrites
    /// the stored spec can leave the rewrite landing after the task was started from the old
    /// spec.
    fn init_runs_gate(&self, container: &Container) -> Option<bool>;

    /// After a (re)connection: re-creates the gate sockets of the gated containers among
    /// `containers` (all the runtime's containers) and drops stale ones.
    fn gate_resync(&self, containers: &[Container]);

    /// A container with hooks is gone: drop what is held for it (its gate socket and record).
    fn forget(&self, container_id: &str);

    /// Writes the record a restarted plugin serves the container's gate from (a small file
    /// written atomically; failures are logged).
    fn gate_save(&self, _record: &GateRecord) {}

    /// After (re)configuration: the gated containers of the records, their sockets open
    /// again; records of containers that are gone are removed.
    fn gate_recover(&self) -> Vec<Recovered> {
        Vec::new()
    }

    /// The start time of the held init process (see [`crate::gate::state::start_time`]),
    /// when it can be read while the process lives.
    fn init_start_time(&self, _init: &PidFd) -> Option<u64> {
        None
    }
}
