//! The node's real [`Effects`]: hook runners, signals through pidfds, the PreStop gate's
//! sockets and binary, and containerd's API for the stored-spec rewrite.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::annotations::HookSpec;
use crate::config::Config;
use crate::containerd;
use crate::core::{Core, Effects, GateStatus, HookOutcome, Target, WeakCore};
use crate::gate::{self, GateParams, GateServers, PreStopCallback, PreStopOutcome};
use crate::model::{Adjustment, Container};

/// What depends on the config (known only after the runtime's `Configure`).
struct Configured {
    runtime_dir: PathBuf,
    /// The extracted gate binary, or why it could not be written.
    gate_bin: Result<PathBuf, String>,
    servers: Arc<GateServers>,
    containerd: Arc<containerd::Client>,
}

/// The real effects on this node.
pub struct Node {
    core: OnceLock<WeakCore>,
    configured: RwLock<Option<Arc<Configured>>>,
    /// Init processes of started containers, held as pidfds so a recycled PID is never signalled.
    pidfds: Mutex<HashMap<String, Arc<OwnedFd>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    pub fn new(_config: &Config) -> Arc<Node> {
        Arc::new(Node {
            core: OnceLock::new(),
            configured: RwLock::new(None),
            pidfds: Mutex::new(HashMap::new()),
        })
    }

    /// Connects the node to its core (the gate servers call back into it).
    pub fn attach(&self, core: &Core) {
        let _ = self.core.set(core.downgrade());
    }

    fn current(&self) -> Option<Arc<Configured>> {
        match self.configured.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Applies a (new) config: writes out the gate binary and sets up the socket servers under
    /// the runtime directory. Kept as is when the runtime directory did not change.
    pub fn configure(&self, config: &Config) {
        let address = containerd::discover_address(config.containerd_address.as_deref());
        if let Some(cur) = self.current() {
            if cur.runtime_dir == config.runtime_dir
                && cur.containerd.address() == address.as_path()
            {
                return;
            }
        }
        let gate_bin = gate::install_gate(&config.runtime_dir.join("gate").join("bin"))
            .map_err(|e| e.to_string());
        match &gate_bin {
            Ok(path) => {
                info!(gate = %path.display(), containerd = %address.display(), "PreStop gate ready")
            }
            Err(e) => {
                warn!(error = %e, "cannot write out the PreStop gate: PreStop hooks will run best-effort")
            }
        }
        let weak = self.core.get().cloned();
        let callback: PreStopCallback = Arc::new(move |req: gate::PreStopRequest| {
            let core = weak.as_ref().and_then(WeakCore::upgrade);
            Box::pin(async move {
                match core {
                    Some(core) => core.pre_stop(&req.container_id).await,
                    None => PreStopOutcome::Failed("plugin is shutting down".into()),
                }
            })
        });
        let servers = Arc::new(GateServers::new(
            config.runtime_dir.join("gate").join("containers"),
            callback,
        ));
        let configured = Configured {
            runtime_dir: config.runtime_dir.clone(),
            gate_bin,
            servers,
            containerd: Arc::new(containerd::Client::new(
                address,
                &config.containerd_namespace,
            )),
        };
        let mut guard = match self.configured.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(old) = guard.replace(Arc::new(configured)) {
            old.servers.shutdown();
        }
    }

    fn pidfd(&self, container: &Container) -> Result<Arc<OwnedFd>, String> {
        if let Some(fd) = lock(&self.pidfds).get(&container.id) {
            return Ok(fd.clone());
        }
        if container.pid == 0 {
            return Err(format!(
                "container {} has no known init process",
                container.id
            ));
        }
        let fd = Arc::new(
            pidfd_open(container.pid).map_err(|e| format!("pidfd_open({}): {e}", container.pid))?,
        );
        lock(&self.pidfds).insert(container.id.clone(), fd.clone());
        Ok(fd)
    }
}

/// Opens a pidfd for `pid`.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_send_signal(fd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: the fd is a valid pidfd we own; a null siginfo asks for default kill() semantics.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[async_trait]
impl Effects for Node {
    async fn run_hook(&self, spec: &HookSpec, target: &Target, timeout: Duration) -> HookOutcome {
        crate::hooks::run(spec, target, timeout).await
    }

    fn signal(&self, container: &Container, signal: i32) -> Result<(), String> {
        let fd = self.pidfd(container)?;
        pidfd_send_signal(&fd, signal)
            .map_err(|e| format!("signal {signal} to container {}: {e}", container.id))
    }

    async fn exited(&self, container: &Container) {
        let Ok(fd) = self.pidfd(container) else {
            return;
        };
        // A pidfd becomes readable when its process exits.
        let Ok(dup) = fd.try_clone() else {
            return;
        };
        // SAFETY: `dup` is an OwnedFd moved into the AsyncFd, so the fd stays open and the same
        // for the AsyncFd's whole life.
        let Ok(async_fd) =
            (unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) })
        else {
            return;
        };
        if let Ok(mut guard) = async_fd.readable().await {
            guard.retain_ready();
        }
    }

    fn started(&self, container: &Container) {
        if container.pid == 0 {
            return;
        }
        lock(&self.pidfds).remove(&container.id);
        if let Err(e) = self.pidfd(container) {
            warn!(container = %container.id, error = %e, "cannot hold the container's init process");
        }
        if let Some(cur) = self.current() {
            if cur.servers.is_open(&container.id) {
                if let Err(e) = cur.servers.set_init_pid(&container.id, container.pid) {
                    warn!(container = %container.id, error = %e, "gate socket cannot know its container");
                }
            }
        }
    }

    fn gate_adjustment(
        &self,
        container: &Container,
        pre_stop: &HookSpec,
        bound: Duration,
    ) -> Result<Adjustment, String> {
        let cur = self
            .current()
            .ok_or("the runtime has not configured the plugin yet")?;
        let gate_bin = cur.gate_bin.as_ref().map_err(Clone::clone)?;
        let dir = cur.servers.open(&container.id).map_err(|e| e.to_string())?;
        let params = GateParams::new(bound, pre_stop.stop_signal);
        Ok(gate::adjustment(gate_bin, &dir, container, &params))
    }

    async fn gate_post_create(
        &self,
        container: &Container,
        pre_stop: &HookSpec,
        bound: Duration,
    ) -> GateStatus {
        if gate::args_are_gated(&container.process.args) {
            return GateStatus::Gated;
        }
        let Some(cur) = self.current() else {
            return GateStatus::Ungated("the runtime has not configured the plugin yet".into());
        };
        let params = GateParams::new(bound, pre_stop.stop_signal);
        match cur.containerd.gate_stored_spec(&container.id, &params).await {
            Ok(_) => GateStatus::Gated,
            Err(e) => GateStatus::Ungated(format!(
                "the runtime ignored the args adjustment and containerd's API at {} could not rewrite the spec: {e}",
                cur.containerd.address().display()
            )),
        }
    }

    fn is_gated(&self, container: &Container) -> bool {
        gate::is_gated(container)
    }

    fn gate_resync(&self, containers: &[Container]) {
        if let Some(cur) = self.current() {
            for (id, e) in cur.servers.resync(containers) {
                warn!(container = %id, error = %e, "cannot re-open the gate socket");
            }
        }
    }

    fn forget(&self, container_id: &str) {
        lock(&self.pidfds).remove(container_id);
        if let Some(cur) = self.current() {
            cur.servers.remove(container_id);
        }
    }
}
