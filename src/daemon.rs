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
use std::time::Duration;

use tracing::{error, info, warn};

use crate::config::Config;
use crate::core::{self, Core};
use crate::launcher::Launcher;
use crate::logging::Logging;
use crate::node::Node;
use crate::nri::{self, Registration};
use crate::ops::Ops;
use crate::supervise::{self, DaemonLock};

/// Starts the core with the node's real effects. `keep_config`: a `Configure` without
/// config text keeps `config` (external mode with `--config`) instead of the defaults.
pub fn start(config: Config, logging: Logging, keep_config: bool) -> Core {
    let (inbox, inlet) = core::channel();
    let ops = Arc::new(Ops::new());
    let node = Arc::new(Node::new(logging, inbox.clone(), Arc::clone(&ops)));
    Core::start(config, keep_config, node, ops, (inbox, inlet))
}

/// Pre-installed mode: the runtime started us. We are the launcher (see [`crate::launcher`]):
/// never exits before registering; exits cleanly when the runtime closes the connection,
/// leaving the daemon it keeps to serve the runtime.
pub async fn run_preinstalled(logging: Logging) -> ExitCode {
    let env = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
    let reg = Registration {
        name: env(nri::plugin::ENV_NAME, "nri-lifecycle"),
        index: env(nri::plugin::ENV_INDEX, "10"),
    };
    let launcher = Launcher::new(logging.clone(), reg);
    let result = nri::run_preinstalled(Arc::new(launcher)).await;
    match result {
        Ok(()) => {
            info!("runtime closed the connection: the launcher exits");
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

/// How often a daemon waiting for another one's lock looks again.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// External mode (`run`, and the daemon a drop-in launcher keeps): take the runtime's lock
/// (waiting while another plugin serves the same runtime, so hooks never run twice), then
/// connect to the runtime's socket and stay connected (reconnecting with backoff) until
/// SIGINT or SIGTERM.
pub async fn run_external(
    socket: PathBuf,
    name: String,
    index: String,
    config: Config,
    logging: Logging,
) -> Result<(), nri::NriError> {
    let reg = Registration { name, index };
    reg.validate()?;
    let lock_path = supervise::lock_path(&config.runtime_dir, &socket);
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let lock = tokio::select! {
        lock = DaemonLock::acquire(&lock_path, LOCK_POLL, |pid| {
            warn!(
                lock = %lock_path.display(),
                holder = pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
                "another nri-lifecycle already serves this runtime (its PID holds the lock): \
                 waiting, so that hooks do not run twice; install the plugin one way only"
            )
        }) => lock,
        () = &mut shutdown => return Ok(()),
    };
    let _lock = match lock {
        Ok(lock) => Some(lock),
        Err(e) => {
            // Without a lock file we cannot know whether another instance runs; serving is
            // better than leaving the node without hooks.
            error!(lock = %lock_path.display(), error = %e, "cannot take the runtime's lock; serving anyway");
            None
        }
    };
    let core = start(config, logging, true);
    info!(socket = %socket.display(), name = %reg.name, index = %reg.index, "connecting to the runtime");
    nri::run_external(&socket, reg, Arc::new(core), shutdown).await
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
