//! The node's real [`Effects`]: the log destination, hook runners, signals through pidfds,
//! the PreStop gate's binary and sockets, termination messages, and containerd's API and
//! state directory.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::annotations::HookSpec;
use crate::config::Config;
use crate::containerd;
use crate::core::{EffectError, Effects, GateStatus, Inbox, TERMINATION_LOG};
use crate::gate::{self, GateParams, GateRecord, GateServers, RecordedGate, Recovered};
use crate::hooks;
use crate::lock;
use crate::logging::Logging;
use crate::model::{Adjustment, Container};
use crate::ns::pidfd::PidFd;
use crate::ops::{self, FailOpen, Ops};

// A stalled containerd call must end (and drop its connection) inside the budget the core
// gives `PostCreateContainer`, not be cut off by it.
const _: () =
    assert!(containerd::RPC_TIMEOUT.as_millis() < crate::core::POST_CREATE_BUDGET.as_millis());

/// What depends on the config (known only after the runtime's `Configure`).
struct Configured {
    runtime_dir: PathBuf,
    /// The extracted gate binary, or why it could not be written.
    gate_bin: Result<PathBuf, String>,
    servers: GateServers,
    location: containerd::Location,
    namespace: String,
    containerd: containerd::Client,
}

/// The real effects on this node.
pub struct Node {
    logging: Logging,
    /// Where the gate servers send stop requests: the core's input.
    inbox: Inbox,
    /// What the HTTP listener serves.
    ops: Arc<Ops>,
    configured: RwLock<Option<Arc<Configured>>>,
    /// The HTTP listener, when the config names an address.
    listener: Mutex<Option<(SocketAddr, JoinHandle<()>)>>,
}

impl Node {
    /// `logging` is redirected as each config says; gate stop requests go to `inbox`; the
    /// HTTP listener (when configured) serves `ops`.
    pub fn new(logging: Logging, inbox: Inbox, ops: Arc<Ops>) -> Node {
        Node {
            logging,
            inbox,
            ops,
            configured: RwLock::new(None),
            listener: Mutex::new(None),
        }
    }

    /// Starts, moves or stops the HTTP listener as `address` says.
    fn listen(&self, address: Option<SocketAddr>) {
        let mut current = lock::lock(&self.listener);
        if current.as_ref().map(|(a, _)| *a) == address {
            return;
        }
        if let Some((old, task)) = current.take() {
            task.abort();
            info!(address = %old, "http listener stopped");
        }
        let Some(address) = address else {
            return;
        };
        match ops::http::bind(address) {
            Ok(listener) => {
                let task = tokio::spawn(ops::http::serve(
                    listener,
                    Arc::clone(&self.ops),
                    self.inbox.clone(),
                ));
                info!(%address, "serving /metrics, /healthz and /readyz");
                *current = Some((address, task));
            }
            Err(e) => {
                warn!(%address, error = %e, "cannot listen for /metrics, /healthz and /readyz")
            }
        }
    }

    fn current(&self) -> Option<Arc<Configured>> {
        lock::read(&self.configured).clone()
    }
}

#[async_trait]
impl Effects for Node {
    fn configure(&self, config: &Config, runtime_pid: u32) {
        if let Err(e) = self.logging.apply(config) {
            // Keep logging where it was (buffered lines are not lost) and say so there.
            self.logging.sink.set_stderr();
            warn!(error = %e, path = ?config.log_file, "cannot open the configured log file");
        }
        self.listen(config.http_address);
        let location = containerd::discover(
            config.containerd_address.as_deref(),
            config.containerd_state_dir.as_deref(),
            Some(runtime_pid),
        );
        if let Some(cur) = self.current() {
            if cur.runtime_dir == config.runtime_dir
                && cur.location == location
                && cur.namespace == config.containerd_namespace
            {
                return;
            }
        }
        let gate_bin = gate::install_gate(&config.runtime_dir.join("gate").join("bin"))
            .map_err(|e| e.to_string());
        match &gate_bin {
            Ok(path) => info!(
                gate = %path.display(),
                containerd = %location.address.display(),
                state = %location.state.display(),
                "PreStop gate ready"
            ),
            Err(e) => {
                warn!(error = %e, "cannot write out the PreStop gate: PreStop hooks will run best-effort")
            }
        }
        let configured = Configured {
            runtime_dir: config.runtime_dir.clone(),
            gate_bin,
            servers: GateServers::new(
                config.runtime_dir.join("gate").join("containers"),
                self.inbox.clone(),
            ),
            containerd: containerd::Client::new(
                location.address.clone(),
                &config.containerd_namespace,
            ),
            namespace: config.containerd_namespace.clone(),
            location,
        };
        if let Some(old) = lock::write(&self.configured).replace(Arc::new(configured)) {
            old.servers.shutdown();
        }
    }

    fn hold_init(&self, container: &Container) -> Result<Arc<PidFd>, EffectError> {
        if container.pid == 0 {
            return Err(EffectError::NoInit {
                id: container.id.clone(),
            });
        }
        PidFd::open(container.pid)
            .map(Arc::new)
            .map_err(|source| EffectError::Process {
                id: container.id.clone(),
                source,
            })
    }

    fn bundle(&self, container_id: &str) -> Option<PathBuf> {
        let cur = self.current()?;
        cur.location.bundle(&cur.namespace, container_id)
    }

    async fn run_hook(
        &self,
        spec: &HookSpec,
        target: &hooks::Target,
        limits: &hooks::Limits,
    ) -> hooks::Outcome {
        hooks::run_hook(spec, target, limits).await
    }

    fn signal(&self, container_id: &str, init: &PidFd, signal: i32) -> Result<(), EffectError> {
        init.send_signal(signal)
            .map_err(|source| EffectError::Process {
                id: container_id.to_string(),
                source,
            })
    }

    async fn exited(&self, init: &PidFd) {
        // An error here means we cannot watch the process; treat it as gone.
        let _ = init.exited().await;
    }

    fn write_termination_message(
        &self,
        container: &Container,
        message: &str,
    ) -> Result<(), EffectError> {
        let Some(mount) = container
            .mounts
            .iter()
            .find(|m| m.destination == TERMINATION_LOG)
        else {
            return Ok(());
        };
        write_termination_message(&mount.source, message).map_err(|source| {
            EffectError::TerminationMessage {
                id: container.id.clone(),
                path: mount.source.clone(),
                source,
            }
        })
    }

    fn gate_adjustment(
        &self,
        container: &Container,
        params: &GateParams,
    ) -> Result<Adjustment, EffectError> {
        let cur = self.current().ok_or(EffectError::NotConfigured)?;
        let gate_bin = cur
            .gate_bin
            .as_ref()
            .map_err(|reason| EffectError::NoGateBinary {
                reason: reason.clone(),
            })?;
        let dir = cur.servers.open(&container.id)?;
        Ok(gate::adjustment(gate_bin, &dir, container, params))
    }

    async fn gate_post_create(&self, container: &Container, params: &GateParams) -> GateStatus {
        if gate::args_are_gated(&container.process.args) {
            return GateStatus::Gated;
        }
        let Some(cur) = self.current() else {
            return GateStatus::Ungated("the runtime has not configured the plugin yet".into());
        };
        let started = Instant::now();
        match cur.containerd.gate_stored_spec(&container.id, params).await {
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

    fn gate_started(&self, container: &Container, init: &PidFd) {
        let Some(cur) = self.current() else {
            return;
        };
        if !cur.servers.is_open(&container.id) {
            // A gated container the plugin did not see created: its socket directory is
            // there only if it was made for it.
            let known = cur
                .servers
                .socket_dir(&container.id)
                .is_ok_and(|d| d.is_dir());
            if !known {
                return;
            }
            if let Err(e) = cur.servers.open(&container.id) {
                warn!(container = %container.id, error = %e, "cannot re-open the gate socket");
                return;
            }
        }
        // The namespaces are read through the PID; they belong to our process only if it is
        // still alive afterwards.
        let result = cur.servers.set_init_pid(&container.id, init.pid());
        match result {
            Ok(()) if init.is_alive() => {}
            Ok(()) => {
                debug!(container = %container.id, "container exited before its gate socket knew it")
            }
            Err(e) => {
                warn!(container = %container.id, error = %e, "gate socket cannot know its container")
            }
        }
    }

    fn is_gated(&self, container: &Container) -> bool {
        gate::is_gated(container)
    }

    fn init_runs_gate(&self, container: &Container) -> Option<bool> {
        if container.pid == 0 {
            return None;
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", container.pid)).ok()?;
        let first = cmdline.split(|b| *b == 0).next()?;
        Some(first == gate::protocol::GATE_PATH.as_bytes())
    }

    fn gate_resync(&self, containers: &[Container]) {
        if let Some(cur) = self.current() {
            for (id, e) in cur.servers.resync(containers) {
                warn!(container = %id, error = %e, "cannot re-open the gate socket");
            }
        }
    }

    fn forget(&self, container_id: &str) {
        if let Some(cur) = self.current() {
            cur.servers.remove(container_id);
        }
    }

    fn gate_save(&self, record: &GateRecord) {
        let Some(cur) = self.current() else {
            return;
        };
        if let Err(e) = cur.servers.save(record) {
            warn!(container = %record.id, error = %e, "cannot record the gated container: a restarted plugin will not serve its gate before the runtime synchronizes");
        }
    }

    fn gate_recover(&self) -> Vec<Recovered> {
        let Some(cur) = self.current() else {
            return Vec::new();
        };
        let bundle = |id: &str| cur.location.bundle(&cur.namespace, id);
        // A container that started just before the plugin stopped: its runtime wrote the
        // init's PID into its bundle.
        let init_pid = |id: &str| {
            let text = std::fs::read_to_string(bundle(id)?.join("init.pid")).ok()?;
            text.trim().parse::<u32>().ok().filter(|p| *p > 0)
        };
        let mut recovered = cur.servers.recover(&init_pid);
        for r in &mut recovered {
            // The gate was injected but not confirmed: the spec the container runs with says
            // whether it is in front of the entrypoint.
            if r.record.gate != RecordedGate::Injected || r.init.is_none() {
                continue;
            }
            let Some(gated) = bundle(&r.record.id).and_then(|b| bundle_is_gated(&b)) else {
                continue;
            };
            if gated {
                r.record.gate = RecordedGate::Gated;
            } else {
                r.record.gate = RecordedGate::Ungated;
                self.ops.fail_open(FailOpen::Ungated);
                warn!(
                    container = %r.record.id,
                    name = %format!("{}/{}/{}", r.record.pod_namespace, r.record.pod_name, r.record.name),
                    reason = "the plugin stopped before it put the gate in front of the entrypoint",
                    "PreStop cannot hold this container's stop: it will run best-effort when the runtime reports the stop"
                );
            }
            if let Err(e) = cur.servers.save(&r.record) {
                warn!(container = %r.record.id, error = %e, "cannot update the gate record");
            }
        }
        recovered
    }

    fn init_start_time(&self, init: &PidFd) -> Option<u64> {
        let start = gate::state::start_time(init.pid()).ok()?;
        // Read through the PID: it is the held process's only if that still lives.
        init.is_alive().then_some(start)
    }
}

/// Whether the OCI spec in `bundle` runs the gate as its process (`None`: unreadable).
fn bundle_is_gated(bundle: &std::path::Path) -> Option<bool> {
    let text = std::fs::read(bundle.join("config.json")).ok()?;
    let spec: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let args: Vec<String> = spec
        .get("process")?
        .get("args")?
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    Some(gate::args_are_gated(&args))
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some((_, task)) = lock::lock(&self.listener).take() {
            task.abort();
        }
    }
}

/// Writes the kubelet-style termination message into the container's termination-log file on
/// the host. Never follows a symlink and never creates the file.
fn write_termination_message(path: &str, message: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    // The kubelet reads at most 4 KiB of it.
    let bytes = message.as_bytes();
    f.write_all(&bytes[..bytes.len().min(4096)])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::Mount;

    fn configured_node(dir: &std::path::Path) -> Node {
        let (inbox, _inlet) = crate::core::channel();
        let node = Node::new(Logging::init("info"), inbox, Arc::new(Ops::new()));
        let config = Config {
            log_file: None,
            runtime_dir: dir.join("rt"),
            containerd_address: Some(dir.join("containerd.sock")),
            containerd_state_dir: Some(dir.join("state")),
            ..Config::default()
        };
        node.configure(&config, 0);
        node
    }

    /// containerd's API accepts connections and never answers: `PostCreateContainer` is still
    /// answered within its budget (the container runs ungated), and the stalled connection
    /// is dropped, so the next container's rewrite connects afresh.
    #[tokio::test]
    async fn post_create_answers_within_budget_when_containerd_never_answers() {
        use crate::core::{Core, POST_CREATE_BUDGET};
        use crate::model::{Event, EventKind, Pod, RuntimeInfo};
        use crate::nri::Handler;

        let dir = tempfile::tempdir().unwrap();
        let address = dir.path().join("containerd.sock");
        let listener = tokio::net::UnixListener::bind(&address).unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let stall = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        let (inbox, inlet) = crate::core::channel();
        let ops = Arc::new(Ops::new());
        let node = Arc::new(Node::new(
            Logging::init("info"),
            inbox.clone(),
            Arc::clone(&ops),
        ));
        let config = Config {
            log_file: None,
            runtime_dir: dir.path().join("rt"),
            containerd_address: Some(address),
            containerd_state_dir: Some(dir.path().join("state")),
            ..Config::default()
        };
        let core = Core::start(config, true, node, ops, (inbox, inlet));
        core.configure(RuntimeInfo {
            request_timeout_ms: 2000,
            ..RuntimeInfo::default()
        })
        .await;
        let pod = Pod {
            id: "p1".into(),
            name: "web".into(),
            namespace: "default".into(),
            annotations: [(
                "prestop.lifecycle.nri.io/pod".to_string(),
                r#"{"sleep":{"seconds":1}}"#.to_string(),
            )]
            .into(),
            ..Pod::default()
        };
        for (n, id) in ["c1", "c2"].into_iter().enumerate() {
            let mut c = Container {
                id: id.into(),
                pod_id: "p1".into(),
                name: "app".into(),
                ..Container::default()
            };
            c.process.args = vec!["/app".into()];
            let adj = core.create_container(pod.clone(), c.clone()).await.unwrap();
            assert!(adj.annotations.contains_key(gate::GATED_ANNOTATION));
            let started = Instant::now();
            core.event(Event {
                kind: EventKind::PostCreateContainer,
                pod: pod.clone(),
                container: c,
            })
            .await
            .unwrap();
            let took = started.elapsed();
            // The runtime gives up after 2 s; the budget keeps well inside it.
            assert!(
                took < POST_CREATE_BUDGET + Duration::from_millis(400),
                "PostCreateContainer of {id} took {took:?}"
            );
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::SeqCst),
                n + 1,
                "each rewrite connects afresh after a stalled one"
            );
        }
        assert_eq!(core.status().await.gated, 0, "both run ungated");
        stall.abort();
    }

    #[tokio::test]
    async fn hooks_get_the_bundle_of_their_container() {
        let dir = tempfile::tempdir().unwrap();
        let node = configured_node(dir.path());
        assert_eq!(
            node.bundle("c1"),
            Some(
                dir.path()
                    .join("state/io.containerd.runtime.v2.task/k8s.io/c1")
            )
        );
        assert_eq!(node.bundle("../c1"), None);
    }

    #[tokio::test]
    async fn termination_message_goes_to_the_mounted_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let node = configured_node(dir.path());
        let log = dir.path().join("termination-log");
        std::fs::write(&log, "old").unwrap();
        let mut c = Container {
            id: "c1".into(),
            ..Container::default()
        };
        // Without the mount nothing is written anywhere.
        node.write_termination_message(&c, "boom").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "old");
        c.mounts.push(Mount {
            destination: TERMINATION_LOG.into(),
            source: log.display().to_string(),
            ..Mount::default()
        });
        node.write_termination_message(&c, &"x".repeat(5000))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap().len(), 4096);
        // Never created, never through a symlink.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        c.mounts[0].source = link.display().to_string();
        assert!(node.write_termination_message(&c, "no").is_err());
        c.mounts[0].source = dir.path().join("absent").display().to_string();
        assert!(node.write_termination_message(&c, "no").is_err());
        assert!(!dir.path().join("absent").exists());
    }
}
