//! The daemon: wires config, logging, the event core, the node's effects and the NRI edge
//! together, for both launch modes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use async_trait::async_trait;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::core::Core;
use crate::logging::Logging;
use crate::model::{Adjustment, Container, Event, EventKind, Pod, RuntimeInfo};
use crate::node::Node;
use crate::nri::{self, Handler, Registration};

/// The handler the NRI edge talks to: the core, plus what must follow a `Configure` (the
/// runtime's plugin config, the log destination, the node's runtime directory).
pub struct Daemon {
    core: Core,
    node: Arc<Node>,
    logging: Logging,
    /// Whether a `Configure` without config text keeps the config we started with
    /// (external mode with `--config`) or falls back to the defaults' log file (pre-installed).
    keep_config: bool,
}

impl Daemon {
    pub fn new(config: Config, logging: Logging, keep_config: bool) -> Arc<Daemon> {
        let node = Node::new();
        let core = Core::new(config, node.clone());
        node.attach(&core);
        Arc::new(Daemon {
            core,
            node,
            logging,
            keep_config,
        })
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    fn apply_config(&self, config: Config, runtime_pid: u32) {
        if let Err(e) = self
            .logging
            .apply(config.log_file.as_deref(), &config.log_level)
        {
            // Keep logging where it was (buffered lines are not lost) and say so there.
            self.logging.sink.set_stderr();
            warn!(error = %e, path = ?config.log_file, "cannot open the configured log file");
        }
        self.node.configure(&config, runtime_pid);
        self.core.set_config(config);
    }
}

#[async_trait]
impl Handler for Daemon {
    fn events(&self) -> Vec<EventKind> {
        self.core.events()
    }

    async fn configure(&self, info: RuntimeInfo) {
        if !info.config.trim().is_empty() {
            match Config::from_toml(&info.config) {
                Ok(config) => self.apply_config(config, info.runtime_pid),
                Err(e) => {
                    self.apply_config((*self.core.config()).clone(), info.runtime_pid);
                    warn!(error = %e, "the plugin config handed over by the runtime is invalid: using defaults");
                }
            }
        } else if !self.keep_config {
            self.apply_config(Config::default(), info.runtime_pid);
        } else {
            self.apply_config((*self.core.config()).clone(), info.runtime_pid);
        }
        self.core.configure(info).await;
    }

    async fn synchronize(&self, pods: Vec<Pod>, containers: Vec<Container>) {
        self.core.synchronize(pods, containers).await;
    }

    async fn create_container(&self, pod: Pod, container: Container) -> Result<Adjustment, String> {
        self.core.create_container(pod, container).await
    }

    async fn event(&self, event: Event) -> Result<(), String> {
        self.core.event(event).await
    }

    async fn shutdown(&self) {
        self.core.shutdown().await;
    }
}

/// Pre-installed mode: the runtime started us. Never exits before registering; exits cleanly
/// when the runtime closes the connection.
pub async fn run_preinstalled(logging: Logging) -> ExitCode {
    let daemon = Daemon::new(Config::default(), logging.clone(), false);
    let result = nri::run_preinstalled(daemon.clone()).await;
    match result {
        Ok(()) => {
            info!("runtime closed the connection: exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Make sure the reason reaches a file even if Configure never came.
            let _ = logging
                .sink
                .set_file(std::path::Path::new(crate::config::DEFAULT_LOG_FILE));
            error!(error = %e, "NRI connection failed");
            ExitCode::FAILURE
        }
    }
}

/// External mode: connect to the runtime's socket and stay connected (reconnecting with
/// backoff) until SIGINT or SIGTERM.
pub async fn run_external(
    socket: PathBuf,
    name: String,
    index: String,
    config: Config,
    logging: Logging,
) -> Result<(), nri::NriError> {
    let daemon = Daemon::new(config, logging, true);
    let reg = Registration { name, index };
    info!(socket = %socket.display(), name = %reg.name, index = %reg.index, "connecting to the runtime");
    nri::run_external(&socket, reg, daemon, shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still ends on SIGTERM/SIGINT by default.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}
