//! The node's real [`Effects`]: hook runners, signals through pidfds, the PreStop gate's
//! sockets and binary, and containerd's API for the stored-spec rewrite.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tracing::{debug, info, warn};

use crate::annotations::{Action, HookSpec};
use crate::config::Config;
use crate::containerd;
use crate::core::{Core, Effects, GateStatus, HookOutcome, Target, WeakCore};
use crate::gate::{self, GateParams, GateServers, PreStopCallback, PreStopOutcome};
use crate::hooks;
use crate::model::{Adjustment, Container};
use crate::ns::pidfd::PidFd;

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
    pidfds: Mutex<HashMap<String, Arc<PidFd>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    pub fn new() -> Arc<Node> {
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
    /// `runtime_pid` is the runtime at the other end of the NRI socket (0 when unknown): its
    /// command line and config say where containerd's API is.
    pub fn configure(&self, config: &Config, runtime_pid: u32) {
        let address =
            containerd::discover_address(config.containerd_address.as_deref(), Some(runtime_pid));
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

    fn pidfd(&self, container: &Container) -> Result<Arc<PidFd>, String> {
        if let Some(fd) = lock(&self.pidfds).get(&container.id) {
            return Ok(fd.clone());
        }
        if container.pid == 0 {
            return Err(format!(
                "container {} has no known init process",
                container.id
            ));
        }
        let fd = Arc::new(PidFd::open(container.pid).map_err(|e| e.to_string())?);
        lock(&self.pidfds).insert(container.id.clone(), fd.clone());
        Ok(fd)
    }
}

#[async_trait]
impl Effects for Node {
    async fn run_hook(&self, spec: &HookSpec, target: &Target, timeout: Duration) -> HookOutcome {
        let mut spec = spec.clone();
        spec.timeout = Some(timeout);
        let runner_target = hooks::Target {
            container_id: target.container.id.clone(),
            pid: target.container.pid,
            process: Some(target.container.process.clone()),
            bundle: None,
            pod_ips: target.pod.ips.clone(),
            pod_netns: target.pod.netns_path().map(PathBuf::from),
            pod_pid: target.pod.pid,
        };
        let limits = hooks::Limits {
            default_timeout: timeout,
            allow_other_hosts: hook_host(&spec)
                .is_some_and(|ip| target.allowed_hosts.contains(&ip)),
        };
        match hooks::run_hook(&spec, &runner_target, &limits).await {
            hooks::Outcome::Succeeded { output } => HookOutcome::Succeeded { output },
            hooks::Outcome::Failed { reason } => HookOutcome::Failed { reason },
            hooks::Outcome::TimedOut { output } => HookOutcome::TimedOut {
                after: timeout,
                output,
            },
            hooks::Outcome::ContainerGone => HookOutcome::ContainerGone,
        }
    }

    fn signal(&self, container: &Container, signal: i32) -> Result<(), String> {
        let fd = self.pidfd(container)?;
        fd.send_signal(signal)
            .map_err(|e| format!("signal {signal} to container {}: {e}", container.id))
    }

    async fn exited(&self, container: &Container) {
        if let Ok(fd) = self.pidfd(container) {
            // An error here means we cannot watch the process; treat it as gone.
            let _ = fd.exited().await;
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
        let params = GateParams::new(bound, pre_stop.stop_signal, container);
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
        let params = GateParams::new(bound, pre_stop.stop_signal, container);
        let started = std::time::Instant::now();
        match cur.containerd.gate_stored_spec(&container.id, &params).await {
            Ok(rewrite) => {
                debug!(
                    container = %container.id,
                    ?rewrite,
                    took_ms = crate::core::ms(started.elapsed()),
                    "gate put in front of the entrypoint through containerd's API"
                );
                GateStatus::Gated
            }
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

/// The explicit `host` of an httpGet/tcpSocket hook, when it is an IP address.
fn hook_host(spec: &HookSpec) -> Option<std::net::IpAddr> {
    let host = match &spec.action {
        Action::HttpGet(get) => get.host.as_deref(),
        Action::TcpSocket { host, .. } => host.as_deref(),
        _ => None,
    }?;
    host.parse().ok()
}
