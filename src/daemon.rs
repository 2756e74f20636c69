//! The daemon: wires config, logging, the event core, the node's effects and the NRI edge
//! together, for both launch modes.
//!
//! The wiring is one line of dependencies, each handed down once: the core's input channel
//! and the metrics first, the node (which sends the gate's stop requests into that input and
//! serves the metrics), then the core on the channel's other end, then the NRI edge that
//! calls the core.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tracing::{error, info};

use crate::config::Config;
use crate::core::{self, Core};
use crate::logging::Logging;
use crate::node::Node;
use crate::nri::{self, Registration};
use crate::ops::Ops;

/// Starts the core with the node's real effects. `keep_config`: a `Configure` without
/// config text keeps `config` (external mode with `--config`) instead of the defaults.
pub fn start(config: Config, logging: Logging, keep_config: bool) -> Core {
    let (inbox, inlet) = core::channel();
    let ops = Arc::new(Ops::new());
    let node = Arc::new(Node::new(logging, inbox.clone(), Arc::clone(&ops)));
    Core::start(config, keep_config, node, ops, (inbox, inlet))
}

/// Pre-installed mode: the runtime started us. Never exits before registering; exits cleanly
/// when the runtime closes the connection.
pub async fn run_preinstalled(logging: Logging) -> ExitCode {
    let core = start(Config::default(), logging.clone(), false);
    let result = nri::run_preinstalled(Arc::new(core)).await;
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
    let core = start(config, logging, true);
    let reg = Registration { name, index };
    info!(socket = %socket.display(), name = %reg.name, index = %reg.index, "connecting to the runtime");
    nri::run_external(&socket, reg, Arc::new(core), shutdown_signal()).await
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
