//! Running the plugin in external mode against a node, and recognising its registration.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::node::{registered, Node, PLUGIN_FILE};
use crate::sys;

/// Errors of starting an external plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot start plugin {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create plugin log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The name the plugin registers under in external mode.
pub const EXTERNAL_NAME: &str = "nri-lifecycle";
/// The index the plugin registers with in external mode.
pub const EXTERNAL_INDEX: &str = "10";

/// The command-line arguments that run the plugin in external mode against `socket`.
/// (One place to change if the plugin's flags change.)
pub fn external_args(socket: &Path) -> Vec<String> {
    vec![
        "run".into(),
        "--socket".into(),
        socket.to_string_lossy().into_owned(),
        "--name".into(),
        EXTERNAL_NAME.into(),
        "--index".into(),
        EXTERNAL_INDEX.into(),
    ]
}

/// An external plugin process; killed by PID on drop.
#[derive(Debug)]
pub struct ExternalPlugin {
    child: Option<Child>,
    /// Its stdout+stderr.
    pub log: PathBuf,
}

impl ExternalPlugin {
    /// Starts `binary` with [`external_args`] for the node's NRI socket, output to
    /// `logs/nri-lifecycle-external.log` in the node directory.
    /// The node's plugin config file, when it has one, is passed with `--config`.
    pub fn spawn(binary: &Path, node: &Node) -> Result<ExternalPlugin, PluginError> {
        let mut args = external_args(node.nri_socket());
        let config = node
            .paths()
            .plugin_config_dir
            .join(format!("{PLUGIN_FILE}.conf"));
        if config.exists() {
            args.push("--config".into());
            args.push(config.to_string_lossy().into_owned());
        }
        ExternalPlugin::spawn_with(binary, &args, node)
    }

    /// Starts `binary` with the given arguments.
    pub fn spawn_with(
        binary: &Path,
        args: &[String],
        node: &Node,
    ) -> Result<ExternalPlugin, PluginError> {
        let log = node.paths().logs.join("nri-lifecycle-external.log");
        let out = File::create(&log).map_err(|source| PluginError::Log {
            path: log.clone(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| PluginError::Log {
            path: log.clone(),
            source,
        })?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| PluginError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        Ok(ExternalPlugin {
            child: Some(child),
            log,
        })
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL at once (a crash, or the OOM killer); waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::kill(c.id() as i32, libc::SIGKILL);
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for it.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as i32;
            sys::kill(pid, libc::SIGTERM);
            let start = std::time::Instant::now();
            while matches!(c.try_wait(), Ok(None)) {
                if start.elapsed() > grace {
                    sys::kill(pid, libc::SIGKILL);
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for ExternalPlugin {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Waits until the plugin's registration shows in containerd's log, at most `limit`.
pub async fn wait_registered(node: &Node, name: &str, limit: Duration) -> bool {
    node.wait_containerd_log(limit, |s| registered(s, name))
        .await
        .is_some()
}
