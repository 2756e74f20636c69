//! Hook runners: exec, httpGet, sleep and tcpSocket, with one entry point, [`run_hook`].
//!
//! The core decides *when* a hook runs and what happens after; this module runs it and says
//! how it went ([`Outcome`]). Every runner is cancellation-safe: dropping the future of
//! [`run_hook`] stops the hook (an exec hook's whole process tree is killed).

pub mod dns;
mod exec;
mod http;
mod net;
mod output;
pub mod reach;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::annotations::{Action, HookSpec};
use crate::model::ProcessSpec;
use crate::ns::pidfd::PidFd;
use crate::policy::Policy;

pub use output::OUTPUT_LIMIT;

/// Errors of the hook layer (turned into [`Outcome::Failed`] reasons).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {container}: {source}")]
    Ns {
        container: String,
        source: crate::ns::Error,
    },
    #[error("container {container}: reading hook output: {source}")]
    Output {
        container: String,
        source: std::io::Error,
    },
    #[error("host {host:?}: {reason}")]
    HostRefused { host: String, reason: String },
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
    #[error("no address known for pod of container {container}")]
    NoPodIp { container: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("http get {url}: {reason}")]
    Http { url: String, reason: String },
}

/// The container a hook runs for.
///
/// Processes are held as pidfds, never named by PID: a PID may be given to another process
/// as soon as its owner has exited, a pidfd never is.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub container_id: String,
    /// The container's init process, held since the plugin first saw it (`None` when unknown:
    /// exec hooks cannot run, httpGet/tcpSocket only with `pod_netns`). When it has exited,
    /// every hook ends as [`Outcome::ContainerGone`].
    pub init: Option<Arc<PidFd>>,
    /// The container's process spec as the runtime sent it.
    pub process: Option<ProcessSpec>,
    /// The container's OCI bundle directory (its `config.json` is the second source).
    pub bundle: Option<PathBuf>,
    /// The pod's IPs as the runtime sent them (empty: read from the pod's network namespace).
    pub pod_ips: Vec<IpAddr>,
    /// Path of the pod's network namespace, when the runtime sent it. Without it the
    /// namespace is `init`'s own, which every container of a pod shares with the pod's
    /// sandbox. (The sandbox's PID is not used: no pidfd of the sandbox is held, and one
    /// opened from its PID when a hook runs could name another process.)
    pub pod_netns: Option<PathBuf>,
    /// The pod's namespace, for the plugin's policy.
    pub pod_namespace: String,
}

/// Bounds and permissions of one hook run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Used when the hook has no `timeoutSeconds`.
    pub default_timeout: Duration,
    /// The plugin's policy: the addresses httpGet/tcpSocket may reach besides the pod's own
    /// and loopback (see [`reach`]).
    pub policy: Arc<Policy>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_timeout: Duration::from_secs(30),
            policy: Arc::new(Policy::default()),
        }
    }
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and succeeded. `output`: the exec hook's output or the HTTP body (bounded).
    Succeeded { output: String },
    /// It failed; `reason` is what the kubelet would put into the event / termination message.
    Failed { reason: String },
    /// It did not finish in time; everything it started has been stopped.
    TimedOut { output: String },
    /// The container exited before or during the hook: abandon quietly.
    ContainerGone,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded { .. })
    }
}

/// Runs one hook for `target`, bounded by the hook's timeout (else `limits.default_timeout`).
pub async fn run_hook(spec: &HookSpec, target: &Target, limits: &Limits) -> Outcome {
    let timeout = spec.timeout.unwrap_or(limits.default_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let init = target.init.as_deref();
    if init.is_some_and(|p| !p.is_alive()) {
        return Outcome::ContainerGone;
    }
    let run = async {
        match &spec.action {
            Action::Exec { command } => match init {
                Some(pidfd) => exec::run(command, target, pidfd, deadline).await,
                None => Outcome::Failed {
                    reason: format!(
                        "exec hook {}: no process known for container {}",
                        spec.key, target.container_id
                    ),
                },
            },
            other => {
                let work = async {
                    match other {
                        Action::HttpGet(get) => http::run(get, target, limits).await,
                        Action::TcpSocket { host, port } => {
                            net::tcp(host.as_deref(), *port, target, limits).await
                        }
                        Action::Sleep { seconds } => {
                            tokio::time::sleep(Duration::from_secs(*seconds)).await;
                            Outcome::Succeeded {
                                output: String::new(),
                            }
                        }
                        Action::Exec { .. } => unreachable_exec(),
                    }
                };
                match tokio::time::timeout_at(deadline, work).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::TimedOut {
                        output: String::new(),
                    },
                }
            }
        }
    };
    let outcome = match init {
        Some(pidfd) => {
            tokio::select! {
                outcome = run => outcome,
                _ = pidfd.exited() => Outcome::ContainerGone,
            }
        }
        None => run.await,
    };
    // A failure seen while the container was dying is the container's end, not the hook's.
    match (&outcome, init) {
        (Outcome::Failed { .. } | Outcome::TimedOut { .. }, Some(p)) if !p.is_alive() => {
            Outcome::ContainerGone
        }
        _ => outcome,
    }
}

fn unreachable_exec() -> Outcome {
    Outcome::Failed {
        reason: "internal: exec hook dispatched to the network runners".into(),
    }
}
