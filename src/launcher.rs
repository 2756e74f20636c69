//! The drop-in plugin: a thin launcher that the runtime starts, and the daemon it keeps
//! running.
//!
//! A runtime drops a pre-installed plugin for good when it stalls past the request timeout,
//! crashes or is killed (it never starts it again), and containerd 1.7 does not even
//! synchronize it after its own restart. An external plugin has none of these limits: it
//! reconnects whenever it likes and is synchronized at every connection. So the process the
//! runtime starts does no hook work at all:
//!
//! - it registers on the socket it was handed at once, subscribes to one cheap event (a mask
//!   of 0 would mean every event) and answers everything immediately, so it never times out;
//! - it finds the runtime's NRI socket (the config's `nri_socket`, else the runtime's own
//!   config file) and keeps one **daemon** — this binary, `daemon` subcommand, in a session
//!   of its own so that it outlives a runtime restart as the shims do — connected there as
//!   an external plugin, with the runtime's plugin config handed over in a file;
//! - it restarts the daemon within a second when it dies (backing off up to a second on
//!   repeated crashes), and, started again by a restarted runtime, watches the daemon it
//!   finds alive (through the PID in the daemon's lock file) instead of starting a second —
//!   unless that daemon runs another build of the plugin (an upgrade) or was started with
//!   another plugin config, which it replaces;
//! - when the runtime takes no external plugins (`disable_connections`), it serves NRI itself
//!   as a plain pre-installed plugin, and says loudly that nothing will heal it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::core::{Core, Error};
use crate::logging::Logging;
use crate::model::{Adjustment, Container, Event, EventKind, Pod, RuntimeInfo};
use crate::nri::{Handler, Registration};
use crate::supervise::{self, Backoff};

/// The internal subcommand that runs the daemon.
pub const DAEMON_SUBCOMMAND: &str = "daemon";
/// First wait before restarting a daemon that died.
pub const RESTART_INITIAL: Duration = Duration::from_millis(100);
/// Longest wait between restarts of a daemon that keeps dying.
pub const RESTART_MAX: Duration = Duration::from_secs(1);
/// A daemon that ran this long was not crash-looping: the next restart is quick again.
const STABLE_RUN: Duration = Duration::from_secs(10);

/// What the launcher does on this connection, decided at `Configure`.
enum Mode {
    /// Before `Configure`.
    Unconfigured,
    /// A daemon serves the runtime; this process only keeps it alive.
    Supervising,
    /// The runtime takes no external plugins: this process serves NRI itself.
    Serving(Arc<Core>),
}

/// The pre-installed process's [`Handler`].
pub struct Launcher {
    logging: Logging,
    reg: Registration,
    mode: std::sync::Mutex<Mode>,
}

impl Launcher {
    /// A launcher that will register as `reg`.
    pub fn new(logging: Logging, reg: Registration) -> Launcher {
        Launcher {
            logging,
            reg,
            mode: std::sync::Mutex::new(Mode::Unconfigured),
        }
    }

    fn core(&self) -> Option<Arc<Core>> {
        match &*crate::lock::lock(&self.mode) {
            Mode::Serving(core) => Some(Arc::clone(core)),
            _ => None,
        }
    }
}

/// Everything the daemon is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonSpec {
    /// The runtime's NRI socket.
    pub socket: PathBuf,
    /// The daemon's lock file (see [`supervise::lock_path`]).
    pub lock: PathBuf,
    /// The runtime's plugin config, handed over.
    pub config_file: PathBuf,
    pub reg: Registration,
}

impl DaemonSpec {
    /// The daemon's command-line arguments (after the program name).
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        vec![
            DAEMON_SUBCOMMAND.into(),
            "--socket".into(),
            self.socket.clone().into_os_string(),
            "--name".into(),
            self.reg.name.clone().into(),
            "--index".into(),
            self.reg.index.clone().into(),
            "--config".into(),
            self.config_file.clone().into_os_string(),
        ]
    }
}

/// The plugin config handed over by the runtime (`text`), or the defaults when it is empty or
/// invalid (the daemon says why when it reads the same text).
fn launcher_config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_default()
}

/// Writes the runtime's plugin config where the daemon reads it (whole or not at all).
fn hand_over(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("conf.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[async_trait]
impl Handler for Launcher {
    fn events(&self) -> Vec<EventKind> {
        match self.core() {
            Some(core) => core.events(),
            // The runtime sends every event for an empty mask: subscribe to one it sends
            // rarely and that we answer at once.
            None => vec![EventKind::RemovePodSandbox],
        }
    }

    async fn configure(&self, info: RuntimeInfo) {
        if !matches!(*crate::lock::lock(&self.mode), Mode::Unconfigured) {
            // Once per connection, and a launcher has one: nothing to start twice.
            warn!("configured again by the runtime: ignored");
            return;
        }
        let config = launcher_config(&info.config);
        if let Err(e) = self.logging.apply(&config) {
            warn!(error = %e, "cannot open the log file");
        }
        let runtime_pid = Some(info.runtime_pid).filter(|&p| p != 0);
        let endpoint = crate::containerd::discover_nri(config.nri_socket.as_deref(), runtime_pid);
        if !endpoint.connections {
            error!(
                socket = %endpoint.socket.display(),
                "the runtime takes no external NRI plugins (disable_connections = true): serving \
                 NRI from the process the runtime started, which CANNOT RECOVER: if it stalls \
                 past the runtime's request timeout or dies, the runtime drops it and no hook \
                 runs on this node until the runtime restarts; allow external connections to \
                 let the plugin heal itself"
            );
            let core = Arc::new(crate::daemon::start(
                Config::default(),
                self.logging.clone(),
                false,
            ));
            core.configure(info).await;
            *crate::lock::lock(&self.mode) = Mode::Serving(core);
            return;
        }
        let lock = supervise::lock_path(&config.runtime_dir, &endpoint.socket);
        let spec = DaemonSpec {
            socket: endpoint.socket,
            config_file: lock.with_extension("conf"),
            lock,
            reg: self.reg.clone(),
        };
        // A daemon still running from before a runtime restart read the file at its start:
        // if the config changed since, it is replaced, as after an upgrade.
        let config_changed =
            std::fs::read_to_string(&spec.config_file).is_ok_and(|old| old != info.config);
        if let Err(e) = hand_over(&spec.config_file, &info.config) {
            error!(path = %spec.config_file.display(), error = %e, "cannot hand the plugin config to the daemon; it starts with the defaults");
        }
        info!(
            socket = %spec.socket.display(),
            lock = %spec.lock.display(),
            "launcher registered; keeping the daemon connected to the runtime's NRI socket"
        );
        *crate::lock::lock(&self.mode) = Mode::Supervising;
        tokio::spawn(supervise_daemon(spec, config_changed));
    }

    async fn synchronize(&self, pods: Vec<Pod>, containers: Vec<Container>) {
        if let Some(core) = self.core() {
            core.synchronize(pods, containers).await;
        }
    }

    async fn create_container(&self, pod: Pod, container: Container) -> Result<Adjustment, Error> {
        match self.core() {
            Some(core) => core.create_container(pod, container).await,
            None => Ok(Adjustment::default()),
        }
    }

    async fn event(&self, event: Event) -> Result<(), Error> {
        match self.core() {
            Some(core) => core.event(event).await,
            None => Ok(()),
        }
    }

    async fn shutdown(&self) {
        // A supervised daemon stays: it serves the runtime on its own connection.
        if let Some(core) = self.core() {
            core.shutdown().await;
        }
    }
}

/// Keeps one daemon alive for as long as the launcher lives. `config_changed`: the plugin
/// config differs from the one a daemon found running was started with.
async fn supervise_daemon(spec: DaemonSpec, mut config_changed: bool) {
    let mut backoff = Backoff::new(RESTART_INITIAL, RESTART_MAX);
    loop {
        if let Some(pid) = supervise::holder(&spec.lock) {
            // A daemon from before the runtime restarted, or another install's: watch it.
            let stale = match launchers_daemon(pid) {
                Some(same_build) => !same_build || std::mem::take(&mut config_changed),
                None => false,
            };
            match crate::ns::pidfd::PidFd::open(pid) {
                Ok(fd) if stale => {
                    // Started by a launcher of another build (the plugin was upgraded and
                    // the runtime restarted) or with another config: replace it, or the old
                    // code or config would serve on.
                    warn!(
                        pid,
                        "the running daemon is another build of the plugin or has another config: replacing it"
                    );
                    let _ = fd.send_signal(libc::SIGTERM);
                    if tokio::time::timeout(REPLACE_GRACE, fd.exited())
                        .await
                        .is_err()
                    {
                        let _ = fd.send_signal(libc::SIGKILL);
                        let _ = fd.exited().await;
                    }
                    continue;
                }
                Ok(fd) => {
                    info!(pid, "a daemon already serves the runtime; watching it");
                    let _ = fd.exited().await;
                    warn!(pid, "the daemon exited; starting a new one");
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(RESTART_INITIAL).await;
                    continue;
                }
            }
        }
        let started = Instant::now();
        match spawn_daemon(&spec) {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                info!(pid, "daemon started");
                let status = child.wait().await;
                let ran = started.elapsed();
                match status {
                    Ok(status) => warn!(pid, %status, ?ran, "the daemon exited; restarting it"),
                    Err(e) => warn!(pid, error = %e, "lost track of the daemon; restarting it"),
                }
                if ran >= STABLE_RUN {
                    backoff.reset();
                }
            }
            Err(e) => error!(error = %e, "cannot start the daemon"),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// How long an old daemon being replaced gets to end its connection.
const REPLACE_GRACE: Duration = Duration::from_secs(5);

/// Whether `pid` is a daemon started by a launcher (its first argument is the daemon
/// subcommand): `Some(true)` when it runs our executable file, `Some(false)` when another
/// one (another build). `None` for anything else: a plugin installed another way (`run`) is
/// never taken for one.
fn launchers_daemon(pid: u32) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first_arg = cmdline.split(|b| *b == 0).nth(1)?;
    if first_arg != DAEMON_SUBCOMMAND.as_bytes() {
        return None;
    }
    let id = |path: String| std::fs::metadata(path).map(|m| (m.dev(), m.ino()));
    match (
        id(format!("/proc/{pid}/exe")),
        id("/proc/self/exe".to_string()),
    ) {
        (Ok(theirs), Ok(ours)) => Some(theirs == ours),
        _ => None,
    }
}

/// Starts the daemon: this very executable (as the kernel has it, whatever its path), named
/// like the launcher, in a new session, with nothing inherited but what its arguments say.
fn spawn_daemon(spec: &DaemonSpec) -> std::io::Result<tokio::process::Child> {
    use std::os::unix::process::CommandExt;
    let arg0 = std::env::args_os()
        .next()
        .unwrap_or_else(|| "nri-lifecycle".into());
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg0(arg0)
        .args(spec.args())
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory; it runs in the child between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    // The daemon outlives the launcher.
    cmd.kill_on_drop(false);
    cmd.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_arguments_name_socket_identity_and_config() {
        let spec = DaemonSpec {
            socket: PathBuf::from("/run/nri/nri.sock"),
            lock: PathBuf::from("/run/x/daemon-run_nri_nri.sock.lock"),
            config_file: PathBuf::from("/run/x/daemon-run_nri_nri.sock.conf"),
            reg: Registration {
                name: "nri-lifecycle".into(),
                index: "10".into(),
            },
        };
        let args: Vec<String> = spec
            .args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "daemon",
                "--socket",
                "/run/nri/nri.sock",
                "--name",
                "nri-lifecycle",
                "--index",
                "10",
                "--config",
                "/run/x/daemon-run_nri_nri.sock.conf"
            ]
        );
    }

    #[test]
    fn only_a_launchers_daemon_of_another_build_is_replaced() {
        // Another executable file: a shell, run with a script named like the subcommand.
        let dir = tempfile::tempdir().unwrap();
        let sh = dir.path().join("nri-lifecycle");
        std::fs::copy("/bin/sh", &sh).unwrap();
        std::fs::write(dir.path().join(DAEMON_SUBCOMMAND), "sleep 30\n").unwrap();
        let spawn = |args: &[&str]| {
            std::process::Command::new(&sh)
                .args(args)
                .current_dir(dir.path())
                .spawn()
                .unwrap()
        };
        let mut daemon = spawn(&[DAEMON_SUBCOMMAND]);
        let mut other = spawn(&["-c", "sleep 30; true"]);
        let seen = |pid: u32| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                if exe == sh {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };
        assert!(seen(daemon.id()) && seen(other.id()));
        assert_eq!(launchers_daemon(daemon.id()), Some(false), "another build");
        assert_eq!(
            launchers_daemon(other.id()),
            None,
            "not started as a daemon"
        );
        assert_eq!(launchers_daemon(std::process::id()), None, "ourselves");
        for c in [&mut daemon, &mut other] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    #[test]
    fn an_invalid_handed_config_still_gives_a_launcher_config() {
        assert_eq!(launcher_config("nonsense = 1"), Config::default());
        let c = launcher_config("runtime_dir = \"/run/elsewhere\"\n");
        assert_eq!(c.runtime_dir, PathBuf::from("/run/elsewhere"));
    }

    #[test]
    fn the_config_is_handed_over_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("daemon-x.conf");
        hand_over(&path, "log_level = \"debug\"\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "log_level = \"debug\"\n"
        );
        hand_over(&path, "").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
