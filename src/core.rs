//! The event core: the container table and what happens on each runtime event.
//!
//! The core never blocks the runtime: every [`Handler`] method only updates the table under a
//! short lock and returns; hooks run in their own tasks, bounded by a node-wide semaphore.
//! The only awaited work inside a runtime request is the gate's stored-spec rewrite at
//! `PostCreateContainer`, which must finish before the task is created and is itself bounded.
//!
//! Everything that touches the outside world (running a hook, signalling a process, the gate)
//! goes through [`Effects`], so the event logic is testable without root or a runtime.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::annotations::{self, HookSpec, Hooks};
use crate::config::Config;
use crate::gate::PreStopOutcome;
use crate::model::{Adjustment, Container, ContainerState, Event, EventKind, Pod, RuntimeInfo};
use crate::nri::Handler;

/// Where the kubelet mounts the termination-message file in a container.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Bound of the PostCreateContainer work (gate stored-spec rewrite), well under the runtime's
/// request timeout.
const POST_CREATE_BUDGET: Duration = Duration::from_millis(800);

/// Everything a hook runner needs to know about its container.
#[derive(Debug, Clone)]
pub struct Target {
    pub pod: Pod,
    pub container: Container,
    /// Addresses that hooks of this container may reach besides the pod's own and loopback.
    pub allowed_hosts: Vec<std::net::IpAddr>,
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookOutcome {
    Succeeded {
        output: String,
    },
    Failed {
        reason: String,
    },
    TimedOut {
        after: Duration,
        output: String,
    },
    /// The container exited before or while the hook ran.
    ContainerGone,
}

impl HookOutcome {
    fn failure(&self) -> Option<String> {
        match self {
            HookOutcome::Failed { reason } => Some(reason.clone()),
            HookOutcome::TimedOut { after, output } if output.is_empty() => {
                Some(format!("timed out after {}s", after.as_secs_f64()))
            }
            HookOutcome::TimedOut { after, output } => Some(format!(
                "timed out after {}s; output: {output}",
                after.as_secs_f64()
            )),
            _ => None,
        }
    }
}

/// Whether a container with a PreStop hook really has the gate as its PID 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateStatus {
    Gated,
    /// The gate could not be put in front of the entrypoint; PreStop runs best-effort.
    Ungated(String),
}

/// The outside world, as the core sees it.
#[async_trait]
pub trait Effects: Send + Sync + 'static {
    /// Runs a hook to its end, bounded by `timeout`. Dropping the future stops the hook.
    async fn run_hook(&self, spec: &HookSpec, target: &Target, timeout: Duration) -> HookOutcome;
    /// Sends `signal` to the container's init process.
    fn signal(&self, container: &Container, signal: i32) -> Result<(), String>;
    /// Resolves when the container's init process has exited (at once if it is already gone).
    async fn exited(&self, container: &Container);
    /// The container's init process is running (its PID is known).
    fn started(&self, container: &Container);
    /// The adjustment that puts the gate in front of a container's entrypoint; `bound` is how
    /// long its PreStop hook may take.
    fn gate_adjustment(
        &self,
        container: &Container,
        pre_stop: &HookSpec,
        bound: Duration,
    ) -> Result<Adjustment, String>;
    /// After the container was created: make sure the gate will be its PID 1.
    async fn gate_post_create(
        &self,
        container: &Container,
        pre_stop: &HookSpec,
        bound: Duration,
    ) -> GateStatus;
    /// Whether the container carries our "gated" marker (after a plugin restart).
    fn is_gated(&self, container: &Container) -> bool;
    /// After a plugin restart: re-creates the gate sockets of the gated containers among
    /// `containers` (all the runtime's containers) and drops stale ones.
    fn gate_resync(&self, containers: &[Container]);
    /// A container with hooks is gone: drop what we hold for it (process handle, gate socket).
    fn forget(&self, container_id: &str);
}

/// A container with at least one hook.
struct Hooked {
    pod: Pod,
    container: Container,
    hooks: Hooks,
    /// The gate was injected at create (it may still turn out ungated at post-create).
    gate_injected: bool,
    gated: bool,
    stopping: bool,
    pre_stop_ran: bool,
    post_start: Option<tokio::task::AbortHandle>,
}

/// One row of the container table.
struct Entry {
    pod_id: String,
    name: String,
    pid: u32,
    state: ContainerState,
    hooked: Option<Box<Hooked>>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(task) = self.hooked.as_ref().and_then(|h| h.post_start.as_ref()) {
            task.abort();
        }
    }
}

/// A summary row of the container table, for status output and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRow {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub pid: u32,
    pub state: ContainerState,
    pub post_start: Option<String>,
    pub pre_stop: Option<String>,
    pub gated: bool,
}

struct Inner {
    effects: Arc<dyn Effects>,
    config: RwLock<Arc<Config>>,
    runtime: RwLock<RuntimeInfo>,
    table: Mutex<HashMap<String, Entry>>,
    permits: Arc<Semaphore>,
}

/// The event core. Cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

/// A reference to the core that does not keep it alive (for callbacks the core's own
/// effects hold, such as the gate servers').
#[derive(Clone)]
pub struct WeakCore(std::sync::Weak<Inner>);

impl WeakCore {
    pub fn upgrade(&self) -> Option<Core> {
        self.0.upgrade().map(|inner| Core { inner })
    }
}

impl Core {
    pub fn new(config: Config, effects: Arc<dyn Effects>) -> Core {
        let permits = Arc::new(Semaphore::new(config.max_concurrent_hooks));
        Core {
            inner: Arc::new(Inner {
                effects,
                config: RwLock::new(Arc::new(config)),
                runtime: RwLock::new(RuntimeInfo::default()),
                table: Mutex::new(HashMap::new()),
                permits,
            }),
        }
    }

    pub fn downgrade(&self) -> WeakCore {
        WeakCore(Arc::downgrade(&self.inner))
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        match self.inner.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the config (e.g. with the one the runtime handed over).
    pub fn set_config(&self, config: Config) {
        let mut guard = match self.inner.config.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        self.resize_permits(guard.max_concurrent_hooks, config.max_concurrent_hooks);
        *guard = Arc::new(config);
    }

    /// Makes the hook semaphore hold `new` permits instead of `old` (a pre-installed plugin
    /// learns its `max_concurrent_hooks` only from the runtime's config). Permits held by
    /// running hooks are taken back as those hooks end.
    fn resize_permits(&self, old: usize, new: usize) {
        let permits = &self.inner.permits;
        if new > old {
            permits.add_permits(new - old);
            return;
        }
        let extra = old - new;
        let rest = extra - permits.forget_permits(extra);
        if rest == 0 {
            return;
        }
        let (Ok(handle), Ok(n)) = (tokio::runtime::Handle::try_current(), u32::try_from(rest))
        else {
            return;
        };
        let permits = Arc::clone(permits);
        handle.spawn(async move {
            if let Ok(taken) = permits.acquire_many_owned(n).await {
                taken.forget();
            }
        });
    }

    /// What the runtime told us about itself.
    pub fn runtime_info(&self) -> RuntimeInfo {
        match self.inner.runtime.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a consistent map (no multi-step updates).
        match self.inner.table.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The container table, sorted by id.
    pub fn containers(&self) -> Vec<ContainerRow> {
        let mut rows: Vec<ContainerRow> = self
            .table()
            .iter()
            .map(|(id, e)| ContainerRow {
                id: id.clone(),
                pod_id: e.pod_id.clone(),
                name: e.name.clone(),
                pid: e.pid,
                state: e.state,
                post_start: e
                    .hooked
                    .as_ref()
                    .and_then(|h| h.hooks.post_start.as_ref())
                    .map(|s| s.action.kind().to_string()),
                pre_stop: e
                    .hooked
                    .as_ref()
                    .and_then(|h| h.hooks.pre_stop.as_ref())
                    .map(|s| s.action.kind().to_string()),
                gated: e.hooked.as_ref().is_some_and(|h| h.gated),
            })
            .collect();
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }

    fn insert(
        &self,
        pod: Pod,
        container: Container,
        hooks: Hooks,
        gate_injected: bool,
        gated: bool,
    ) {
        let hooked = (!hooks.is_empty()).then(|| {
            Box::new(Hooked {
                pod,
                container: container.clone(),
                hooks,
                gate_injected,
                gated,
                stopping: false,
                pre_stop_ran: false,
                post_start: None,
            })
        });
        let entry = Entry {
            pod_id: container.pod_id.clone(),
            name: container.name.clone(),
            pid: container.pid,
            state: container.state,
            hooked,
        };
        self.table().insert(container.id, entry);
    }

    fn do_create(&self, pod: Pod, container: Container) -> Result<Adjustment, String> {
        let hooks =
            annotations::hooks_for(&container.name, &pod.annotations, &container.annotations)
                .map_err(|e| e.to_string())?;
        let mut adjustment = Adjustment::default();
        let mut gate_injected = false;
        if let Some(pre_stop) = &hooks.pre_stop {
            let bound = self.pre_stop_bound(pre_stop, &container);
            match self
                .inner
                .effects
                .gate_adjustment(&container, pre_stop, bound)
            {
                Ok(adj) => {
                    adjustment = adj;
                    gate_injected = true;
                }
                Err(reason) => warn!(
                    container = %container.id,
                    pod = %pod.name,
                    name = %container.name,
                    %reason,
                    "cannot inject the PreStop gate: this container's PreStop cannot hold its stop and runs best-effort"
                ),
            }
        }
        if !hooks.is_empty() {
            info!(
                container = %container.id,
                pod = %format!("{}/{}", pod.namespace, pod.name),
                name = %container.name,
                post_start = hooks.post_start.as_ref().map(|s| s.action.kind()),
                pre_stop = hooks.pre_stop.as_ref().map(|s| s.action.kind()),
                gate = gate_injected,
                "container has lifecycle hooks"
            );
        }
        self.insert(pod, container, hooks, gate_injected, false);
        Ok(adjustment)
    }

    async fn do_post_create(&self, event: Event) {
        let needs_gate = {
            let mut table = self.table();
            let Some(entry) = table.get_mut(&event.container.id) else {
                return;
            };
            entry.state = ContainerState::Created;
            match entry.hooked.as_mut() {
                Some(h) if h.gate_injected => {
                    h.container = event.container.clone();
                    h.pod = event.pod.clone();
                    h.hooks.pre_stop.clone()
                }
                _ => None,
            }
        };
        let Some(spec) = needs_gate else {
            return;
        };
        let bound = self.pre_stop_bound(&spec, &event.container);
        let status = match tokio::time::timeout(
            POST_CREATE_BUDGET,
            self.inner.effects.gate_post_create(&event.container, &spec, bound),
        )
        .await
        {
            Ok(status) => status,
            Err(_) => GateStatus::Ungated(format!(
                "putting the gate in front of the entrypoint took longer than {POST_CREATE_BUDGET:?}"
            )),
        };
        let gated = match status {
            GateStatus::Gated => true,
            GateStatus::Ungated(reason) => {
                warn!(
                    container = %event.container.id,
                    pod = %event.pod.name,
                    name = %event.container.name,
                    %reason,
                    "PreStop cannot hold this container's stop: it will run best-effort when the runtime reports the stop"
                );
                false
            }
        };
        if let Some(h) = self
            .table()
            .get_mut(&event.container.id)
            .and_then(|e| e.hooked.as_mut())
        {
            h.gated = gated;
        }
    }

    fn do_post_start(&self, event: Event) {
        let mut table = self.table();
        let Some(entry) = table.get_mut(&event.container.id) else {
            return;
        };
        entry.state = ContainerState::Running;
        if event.container.pid != 0 {
            entry.pid = event.container.pid;
        }
        let Some(hooked) = entry.hooked.as_mut() else {
            return;
        };
        hooked.pod = event.pod;
        let pid = hooked.container.pid.max(event.container.pid);
        hooked.container = Container {
            pid,
            ..event.container
        };
        self.inner.effects.started(&hooked.container);
        let Some(spec) = hooked.hooks.post_start.clone() else {
            return;
        };
        let target = self.target(hooked);
        let core = self.clone();
        let task = tokio::spawn(async move { core.post_start(spec, target).await });
        hooked.post_start = Some(task.abort_handle());
    }

    fn target(&self, hooked: &Hooked) -> Target {
        Target {
            pod: hooked.pod.clone(),
            container: hooked.container.clone(),
            allowed_hosts: self.config().allowed_hosts.clone(),
        }
    }

    fn grace_period(&self, container: &Container) -> Duration {
        annotations::grace_period(&container.annotations)
            .unwrap_or(self.config().default_grace_period)
    }

    /// Runs a container's PostStart hook and, when it fails, stops the container the way the
    /// kubelet would.
    async fn post_start(&self, spec: HookSpec, target: Target) {
        let id = target.container.id.clone();
        let timeout = spec.timeout.unwrap_or(self.config().default_hook_timeout);
        let started = Instant::now();
        let Ok(_permit) = self.inner.permits.clone().acquire_owned().await else {
            return;
        };
        let outcome = self.inner.effects.run_hook(&spec, &target, timeout).await;
        let took = started.elapsed();
        let pod = format!("{}/{}", target.pod.namespace, target.pod.name);
        let Some(reason) = outcome.failure() else {
            match outcome {
                HookOutcome::Succeeded { output } => info!(
                    container = %id, %pod, name = %target.container.name, hook = "postStart",
                    handler = spec.action.kind(), took_ms = ms(took),
                    output = %output.trim_end(), "hook succeeded"
                ),
                _ => {
                    debug!(container = %id, hook = "postStart", "container exited: hook abandoned")
                }
            }
            self.finish_post_start(&id);
            return;
        };
        let stopping = self
            .table()
            .get(&id)
            .and_then(|e| e.hooked.as_ref())
            .is_none_or(|h| h.stopping);
        if stopping {
            debug!(container = %id, hook = "postStart", %reason, "container is stopping: hook failure ignored");
            self.finish_post_start(&id);
            return;
        }
        warn!(
            container = %id, %pod, name = %target.container.name, hook = "postStart",
            handler = spec.action.kind(), %reason, "hook failed: stopping the container"
        );
        self.finish_post_start(&id);
        self.kill_container(&target, &format!("PostStart hook failed: {reason}"))
            .await;
    }

    fn finish_post_start(&self, id: &str) {
        if let Some(h) = self.table().get_mut(id).and_then(|e| e.hooked.as_mut()) {
            h.post_start = None;
        }
    }

    /// Writes the termination message, sends the stop signal, and SIGKILL after the grace period.
    async fn kill_container(&self, target: &Target, message: &str) {
        let c = &target.container;
        if let Some(mount) = c.mounts.iter().find(|m| m.destination == TERMINATION_LOG) {
            if let Err(e) = write_termination_message(&mount.source, message) {
                warn!(container = %c.id, path = %mount.source, error = %e, "cannot write the termination message");
            }
        }
        let grace = self.grace_period(c);
        if let Err(e) = self.inner.effects.signal(c, libc::SIGTERM) {
            debug!(container = %c.id, error = %e, "stop signal not delivered");
            return;
        }
        if tokio::time::timeout(grace, self.inner.effects.exited(c))
            .await
            .is_err()
        {
            warn!(container = %c.id, grace_s = grace.as_secs(), "container outlived its grace period: SIGKILL");
            if let Err(e) = self.inner.effects.signal(c, libc::SIGKILL) {
                debug!(container = %c.id, error = %e, "SIGKILL not delivered");
            }
        }
    }

    /// Runs a container's PreStop hook on the gate's request; at most once per stop.
    pub async fn pre_stop(&self, container_id: &str) -> PreStopOutcome {
        let (spec, target) = {
            let mut table = self.table();
            let Some(hooked) = table.get_mut(container_id).and_then(|e| e.hooked.as_mut()) else {
                return PreStopOutcome::Done;
            };
            let Some(spec) = hooked.hooks.pre_stop.clone() else {
                return PreStopOutcome::Done;
            };
            if hooked.pre_stop_ran {
                return PreStopOutcome::Done;
            }
            hooked.pre_stop_ran = true;
            hooked.stopping = true;
            (spec, self.target(hooked))
        };
        info!(
            container = %container_id, name = %target.container.name, hook = "preStop",
            handler = spec.action.kind(), "running PreStop before the stop signal"
        );
        self.run_pre_stop(spec, target).await
    }

    /// How long a PreStop hook may run: Kubernetes bounds it by the grace period only;
    /// `timeoutSeconds` may shorten that.
    fn pre_stop_bound(&self, spec: &HookSpec, container: &Container) -> Duration {
        let grace = self.grace_period(container);
        spec.timeout.map_or(grace, |t| t.min(grace))
    }

    async fn run_pre_stop(&self, spec: HookSpec, target: Target) -> PreStopOutcome {
        let timeout = self.pre_stop_bound(&spec, &target.container);
        let started = Instant::now();
        let Ok(_permit) = self.inner.permits.clone().acquire_owned().await else {
            return PreStopOutcome::Failed("plugin is shutting down".into());
        };
        let outcome = self.inner.effects.run_hook(&spec, &target, timeout).await;
        let id = &target.container.id;
        let took_ms = ms(started.elapsed());
        match outcome {
            HookOutcome::Succeeded { output } => {
                info!(container = %id, name = %target.container.name, hook = "preStop",
                      handler = spec.action.kind(), took_ms, output = %output.trim_end(), "hook succeeded");
                PreStopOutcome::Done
            }
            HookOutcome::ContainerGone => PreStopOutcome::Done,
            HookOutcome::TimedOut { .. } => {
                warn!(container = %id, name = %target.container.name, hook = "preStop", took_ms, "hook timed out");
                PreStopOutcome::TimedOut
            }
            HookOutcome::Failed { reason } => {
                warn!(container = %id, name = %target.container.name, hook = "preStop", %reason, "hook failed");
                PreStopOutcome::Failed(reason)
            }
        }
    }

    fn do_stop(&self, event: &Event) {
        let best_effort = {
            let mut table = self.table();
            let Some(entry) = table.get_mut(&event.container.id) else {
                return;
            };
            entry.state = ContainerState::Stopped;
            let Some(h) = entry.hooked.as_mut() else {
                return;
            };
            h.stopping = true;
            if let Some(task) = h.post_start.take() {
                task.abort();
            }
            match &h.hooks.pre_stop {
                Some(spec) if !h.gated && !h.pre_stop_ran => {
                    h.pre_stop_ran = true;
                    Some((spec.clone(), self.target(h)))
                }
                _ => None,
            }
        };
        if let Some((spec, target)) = best_effort {
            let core = self.clone();
            tokio::spawn(async move {
                core.run_pre_stop(spec, target).await;
            });
        }
    }

    fn do_remove(&self, id: &str) {
        let removed = self.table().remove(id);
        if removed.as_ref().is_some_and(|e| e.hooked.is_some()) {
            self.inner.effects.forget(id);
        }
    }

    fn do_remove_pod(&self, pod_id: &str) {
        let ids: Vec<String> = self
            .table()
            .iter()
            .filter(|(_, e)| e.pod_id == pod_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.do_remove(&id);
        }
    }

    fn do_synchronize(&self, pods: Vec<Pod>, containers: Vec<Container>) {
        let pods: HashMap<&str, &Pod> = pods.iter().map(|p| (p.id.as_str(), p)).collect();
        let live: std::collections::HashSet<&str> =
            containers.iter().map(|c| c.id.as_str()).collect();
        let stale: Vec<String> = self
            .table()
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            self.do_remove(&id);
        }
        for container in &containers {
            let pod = pods
                .get(container.pod_id.as_str())
                .map(|p| (*p).clone())
                .unwrap_or_default();
            let hooks = match annotations::hooks_for(
                &container.name,
                &pod.annotations,
                &container.annotations,
            ) {
                Ok(h) => h,
                Err(e) => {
                    warn!(container = %container.id, error = %e, "existing container has an invalid hook annotation: its hooks are ignored");
                    Hooks::default()
                }
            };
            let gated = hooks.pre_stop.is_some() && self.inner.effects.is_gated(container);
            let already = self.table().contains_key(&container.id);
            if !already {
                self.insert(pod, container.clone(), hooks, gated, gated);
            }
        }
        self.inner.effects.gate_resync(&containers);
        debug!(containers = containers.len(), "container table rebuilt");
    }
}

/// Milliseconds with two decimals, for logs.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
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

#[async_trait]
impl Handler for Core {
    fn events(&self) -> Vec<EventKind> {
        vec![
            EventKind::CreateContainer,
            EventKind::PostCreateContainer,
            EventKind::PostStartContainer,
            EventKind::StopContainer,
            EventKind::RemoveContainer,
            EventKind::RemovePodSandbox,
        ]
    }

    async fn configure(&self, info: RuntimeInfo) {
        let mut guard = match self.inner.runtime.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = info;
    }

    async fn synchronize(&self, pods: Vec<Pod>, containers: Vec<Container>) {
        self.do_synchronize(pods, containers);
    }

    async fn create_container(&self, pod: Pod, container: Container) -> Result<Adjustment, String> {
        self.do_create(pod, container)
    }

    async fn event(&self, event: Event) -> Result<(), String> {
        match event.kind {
            EventKind::PostCreateContainer => self.do_post_create(event).await,
            EventKind::PostStartContainer => self.do_post_start(event),
            EventKind::StartContainer => {
                if let Some(e) = self.table().get_mut(&event.container.id) {
                    e.state = ContainerState::Running;
                }
            }
            EventKind::StopContainer => self.do_stop(&event),
            EventKind::RemoveContainer => self.do_remove(&event.container.id),
            EventKind::RemovePodSandbox => self.do_remove_pod(&event.pod.id),
            _ => {}
        }
        Ok(())
    }

    async fn shutdown(&self) {
        info!("runtime connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mount;
    use std::collections::BTreeMap;
    use tokio::sync::{mpsc, Notify};

    /// Records what the core asks of the world; hook outcomes are scripted per handler kind.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
        outcome: Mutex<Option<HookOutcome>>,
        exited: Notify,
        hook_done: Option<mpsc::UnboundedSender<String>>,
        ungated: bool,
    }

    impl Fake {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn record(&self, s: String) {
            self.calls.lock().unwrap().push(s);
        }
    }

    #[async_trait]
    impl Effects for Fake {
        async fn run_hook(
            &self,
            spec: &HookSpec,
            target: &Target,
            timeout: Duration,
        ) -> HookOutcome {
            self.record(format!(
                "run {} {} {}s",
                spec.phase.as_str(),
                target.container.id,
                timeout.as_secs()
            ));
            let outcome = self
                .outcome
                .lock()
                .unwrap()
                .clone()
                .unwrap_or(HookOutcome::Succeeded {
                    output: String::new(),
                });
            if let Some(tx) = &self.hook_done {
                let _ = tx.send(target.container.id.clone());
            }
            outcome
        }
        fn signal(&self, container: &Container, signal: i32) -> Result<(), String> {
            self.record(format!("signal {} {signal}", container.id));
            Ok(())
        }
        async fn exited(&self, _container: &Container) {
            self.exited.notified().await
        }
        fn started(&self, container: &Container) {
            self.record(format!("started {}", container.id));
        }
        fn gate_adjustment(
            &self,
            container: &Container,
            _: &HookSpec,
            bound: Duration,
        ) -> Result<Adjustment, String> {
            assert!(bound <= Duration::from_secs(7));
            self.record(format!("inject {}", container.id));
            let mut adj = Adjustment::default();
            adj.annotations.insert("gated".into(), "1".into());
            Ok(adj)
        }
        async fn gate_post_create(
            &self,
            container: &Container,
            _: &HookSpec,
            _: Duration,
        ) -> GateStatus {
            self.record(format!("post-create {}", container.id));
            if self.ungated {
                GateStatus::Ungated("no API".into())
            } else {
                GateStatus::Gated
            }
        }
        fn is_gated(&self, c: &Container) -> bool {
            c.annotations.contains_key("gated")
        }
        fn gate_resync(&self, containers: &[Container]) {
            for c in containers.iter().filter(|c| self.is_gated(c)) {
                self.record(format!("resync {}", c.id));
            }
        }
        fn forget(&self, id: &str) {
            self.record(format!("forget {id}"));
        }
    }

    fn pod(annotations: &[(&str, &str)]) -> Pod {
        Pod {
            id: "pod1".into(),
            name: "web".into(),
            namespace: "default".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Pod::default()
        }
    }

    fn container(id: &str, name: &str) -> Container {
        Container {
            id: id.into(),
            pod_id: "pod1".into(),
            name: name.into(),
            pid: 4242,
            annotations: BTreeMap::from([(
                annotations::GRACE_PERIOD_KEY.to_string(),
                "7".to_string(),
            )]),
            ..Container::default()
        }
    }

    fn event(kind: EventKind, pod: &Pod, c: &Container) -> Event {
        Event {
            kind,
            pod: pod.clone(),
            container: c.clone(),
        }
    }

    fn core(fake: Arc<Fake>) -> Core {
        Core::new(Config::default(), fake)
    }

    #[tokio::test]
    async fn hook_concurrency_follows_the_config() {
        let core = core(Arc::new(Fake::default()));
        assert_eq!(core.inner.permits.available_permits(), 64);
        core.set_config(Config {
            max_concurrent_hooks: 2,
            ..Config::default()
        });
        assert_eq!(core.inner.permits.available_permits(), 2);
        // Shrinking while hooks hold permits takes them back as the hooks end.
        let held = core
            .inner
            .permits
            .clone()
            .acquire_many_owned(2)
            .await
            .unwrap();
        core.set_config(Config {
            max_concurrent_hooks: 1,
            ..Config::default()
        });
        drop(held);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(core.inner.permits.available_permits(), 1);
        core.set_config(Config {
            max_concurrent_hooks: 8,
            ..Config::default()
        });
        assert_eq!(core.inner.permits.available_permits(), 8);
    }

    #[tokio::test]
    async fn container_without_hooks_is_not_touched() {
        let fake = Arc::new(Fake::default());
        let core = core(fake.clone());
        let p = pod(&[]);
        let c = container("c1", "app");
        assert!(core
            .create_container(p.clone(), c.clone())
            .await
            .unwrap()
            .is_empty());
        core.event(event(EventKind::PostCreateContainer, &p, &c))
            .await
            .unwrap();
        core.event(event(EventKind::PostStartContainer, &p, &c))
            .await
            .unwrap();
        core.event(event(EventKind::StopContainer, &p, &c))
            .await
            .unwrap();
        core.event(event(EventKind::RemoveContainer, &p, &c))
            .await
            .unwrap();
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
        assert!(core.containers().is_empty());
    }

    #[tokio::test]
    async fn invalid_annotation_refuses_create_with_key() {
        let core = core(Arc::new(Fake::default()));
        let p = pod(&[("poststart.lifecycle.nri.io/container.app", "{bad")]);
        let err = core
            .create_container(p, container("c1", "app"))
            .await
            .unwrap_err();
        assert!(
            err.starts_with(
                "annotation \"poststart.lifecycle.nri.io/container.app\": invalid JSON"
            ),
            "{err}"
        );
        assert!(core.containers().is_empty());
    }

    #[tokio::test]
    async fn post_start_runs_after_start_and_success_keeps_container() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            hook_done: Some(tx),
            ..Fake::default()
        });
        let core = core(fake.clone());
        let p = pod(&[(
            "poststart.lifecycle.nri.io/pod",
            r#"{"exec":{"command":["true"]},"timeoutSeconds":3}"#,
        )]);
        let c = container("c1", "app");
        assert!(core
            .create_container(p.clone(), c.clone())
            .await
            .unwrap()
            .is_empty());
        core.event(event(EventKind::PostCreateContainer, &p, &c))
            .await
            .unwrap();
        assert!(fake.calls().is_empty(), "no gate without a PreStop hook");
        core.event(event(EventKind::PostStartContainer, &p, &c))
            .await
            .unwrap();
        assert_eq!(rx.recv().await.as_deref(), Some("c1"));
        tokio::task::yield_now().await;
        assert_eq!(fake.calls(), vec!["started c1", "run postStart c1 3s"]);
        assert_eq!(core.containers()[0].state, ContainerState::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_post_start_writes_message_signals_and_kills_after_grace() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("termination-log");
        std::fs::write(&log, "").unwrap();
        let fake = Arc::new(Fake {
            outcome: Mutex::new(Some(HookOutcome::Failed {
                reason: "exit status 3: boom".into(),
            })),
            ..Fake::default()
        });
        let core = core(fake.clone());
        let p = pod(&[(
            "poststart.lifecycle.nri.io/container.app",
            r#"{"exec":{"command":["false"]}}"#,
        )]);
        let mut c = container("c1", "app");
        c.mounts.push(Mount {
            destination: TERMINATION_LOG.into(),
            source: log.display().to_string(),
            ..Mount::default()
        });
        core.create_container(p.clone(), c.clone()).await.unwrap();
        core.event(event(EventKind::PostStartContainer, &p, &c))
            .await
            .unwrap();
        // The container never exits by itself: SIGTERM, then SIGKILL after the 7 s grace period.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if fake.calls().len() >= 4 {
                break;
            }
        }
        assert_eq!(
            fake.calls(),
            vec![
                "started c1",
                "run postStart c1 30s",
                "signal c1 15",
                "signal c1 9"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "PostStart hook failed: exit status 3: boom"
        );
    }

    #[tokio::test]
    async fn post_start_abandoned_when_the_container_is_gone() {
        let fake = Arc::new(Fake {
            outcome: Mutex::new(Some(HookOutcome::ContainerGone)),
            ..Fake::default()
        });
        let core = core(fake.clone());
        let p = pod(&[(
            "poststart.lifecycle.nri.io/pod",
            r#"{"sleep":{"seconds":5}}"#,
        )]);
        let c = container("c1", "app");
        core.create_container(p.clone(), c.clone()).await.unwrap();
        core.event(event(EventKind::PostStartContainer, &p, &c))
            .await
            .unwrap();
        core.event(event(EventKind::StopContainer, &p, &c))
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert!(
            !fake.calls().iter().any(|c| c.starts_with("signal")),
            "{:?}",
            fake.calls()
        );
    }

    #[tokio::test]
    async fn pre_stop_gate_injected_and_runs_once_bounded_by_grace() {
        let fake = Arc::new(Fake::default());
        let core = core(fake.clone());
        let p = pod(&[(
            "prestop.lifecycle.nri.io/container.app",
            r#"{"sleep":{"seconds":2},"timeoutSeconds":60}"#,
        )]);
        let c = container("c1", "app");
        let adj = core.create_container(p.clone(), c.clone()).await.unwrap();
        assert_eq!(adj.annotations.get("gated").map(String::as_str), Some("1"));
        core.event(event(EventKind::PostCreateContainer, &p, &c))
            .await
            .unwrap();
        assert!(core.containers()[0].gated);
        assert_eq!(core.pre_stop("c1").await, PreStopOutcome::Done);
        assert_eq!(core.pre_stop("c1").await, PreStopOutcome::Done);
        assert_eq!(core.pre_stop("unknown").await, PreStopOutcome::Done);
        core.event(event(EventKind::StopContainer, &p, &c))
            .await
            .unwrap();
        core.event(event(EventKind::RemoveContainer, &p, &c))
            .await
            .unwrap();
        // timeoutSeconds 60 is cut to the 7 s grace period; the hook ran once.
        assert_eq!(
            fake.calls(),
            vec![
                "inject c1",
                "post-create c1",
                "run preStop c1 7s",
                "forget c1"
            ]
        );
    }

    #[tokio::test]
    async fn ungated_pre_stop_runs_best_effort_at_stop() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            ungated: true,
            hook_done: Some(tx),
            ..Fake::default()
        });
        let core = core(fake.clone());
        let p = pod(&[("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":0}}"#)]);
        let c = container("c1", "app");
        core.create_container(p.clone(), c.clone()).await.unwrap();
        core.event(event(EventKind::PostCreateContainer, &p, &c))
            .await
            .unwrap();
        assert!(!core.containers()[0].gated);
        core.event(event(EventKind::StopContainer, &p, &c))
            .await
            .unwrap();
        assert_eq!(rx.recv().await.as_deref(), Some("c1"));
        assert!(fake.calls().contains(&"run preStop c1 7s".to_string()));
    }

    #[tokio::test]
    async fn synchronize_rebuilds_and_forgets_and_churn_does_not_grow() {
        let fake = Arc::new(Fake::default());
        let core = core(fake.clone());
        let p = pod(&[("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":1}}"#)]);
        let mut gated = container("g1", "app");
        gated.state = ContainerState::Running;
        gated.annotations.insert("gated".into(), "1".into());
        let plain = container("p1", "side");
        core.create_container(p.clone(), container("old", "x"))
            .await
            .unwrap();
        core.synchronize(vec![p.clone()], vec![gated.clone(), plain.clone()])
            .await;
        let rows = core.containers();
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["g1", "p1"]
        );
        assert!(rows[0].gated);
        assert!(fake.calls().contains(&"resync g1".to_string()));
        for i in 0..1000 {
            let c = container(&format!("churn{i}"), "app");
            core.create_container(p.clone(), c.clone()).await.unwrap();
            core.event(event(EventKind::RemoveContainer, &p, &c))
                .await
                .unwrap();
        }
        core.event(Event {
            kind: EventKind::RemovePodSandbox,
            pod: p.clone(),
            container: Container::default(),
        })
        .await
        .unwrap();
        assert!(core.containers().is_empty());
    }
}
