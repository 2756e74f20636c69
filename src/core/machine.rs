//! The per-container state machine and the one place where every input is handled.
//!
//! A container with at least one hook is [`Tracked`]; its [`Phase`] moves only forward:
//!
//! ```text
//!   Created ──PostStart──▶ Running ──gate STOP / StopContainer──▶ Stopping ──hook ended──▶ Stopped
//!      └──────────────────────┴──────────StopContainer (PreStop held or absent)─────────────▶ Stopped
//! ```
//!
//! "One PreStop per stop" is the `Stopping` phase itself: the first stop request runs the
//! hook and waits in it, later ones (a retry, a second gate connection, the runtime's own
//! `StopContainer`) join the waiters or, once `Stopped`, get the same outcome at once.
//!
//! [`Machine::handle`] runs on the core's one task and never waits: work that takes time
//! (hooks, the gate check, killing a container) runs in tasks of its own that report back
//! through the same input.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::effects::{Effects, GateStatus};
use super::{ms, Inbox, Index, Input, PreStopOutcome, SharedPolicy, Status};
use crate::annotations::{self, HookSpec, Hooks, Phase as HookPhase};
use crate::config::Config;
use crate::gate::{self, GateParams, GateRecord, RecordedGate, RecordedPreStop, Recovered};
use crate::hooks;
use crate::lock;
use crate::model::{Adjustment, Container, ContainerState, Event, EventKind, Pod, RuntimeInfo};
use crate::ns::pidfd::PidFd;
use crate::ops::{FailOpen, HookResult, Ops};

/// Bound of the `PostCreateContainer` work (the gate's stored-spec rewrite), well under the
/// runtime's request timeout.
pub const POST_CREATE_BUDGET: Duration = Duration::from_millis(800);

/// Time the app keeps for itself after its PreStop hook, out of the grace period: the
/// kubelet's own minimum grace period after a PreStop hook.
pub const APP_RESERVE: Duration = Duration::from_secs(2);

/// How long a PreStop hook may run so that the app still gets its stop signal with
/// [`APP_RESERVE`] left of the grace period (half the period when it is shorter than that).
/// `timeoutSeconds` may shorten it, never lengthen it.
pub fn pre_stop_bound(timeout: Option<Duration>, grace: Duration) -> Duration {
    let room = if grace > APP_RESERVE {
        grace - APP_RESERVE
    } else {
        grace / 2
    };
    timeout.map_or(room, |t| t.min(room))
}

/// Where a tracked container is in its life.
#[derive(Debug)]
pub(super) enum Phase {
    /// Created, not started yet.
    Created,
    /// Started; its PostStart hook may be running.
    Running { post_start: Option<AbortHandle> },
    /// Its PreStop hook runs; the stop requests waiting for it.
    Stopping {
        waiters: Vec<oneshot::Sender<PreStopOutcome>>,
    },
    /// Stopped; how its PreStop ended, when it ran.
    Stopped { pre_stop: Option<PreStopOutcome> },
}

/// Whether the gate holds the container's stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// No PreStop hook, or the gate could not be injected.
    Absent,
    /// Injected at create; confirmed at post-create.
    Injected,
    Gated,
    /// Injected, but the runtime runs the original entrypoint: PreStop is best-effort.
    Ungated,
}

/// A container with at least one hook.
#[derive(Debug)]
pub(super) struct Tracked {
    pub pod: Pod,
    pub container: Container,
    pub hooks: Hooks,
    pub gate: Gate,
    /// The init process, held from the first sight of its PID to the container's removal.
    pub init: Option<Arc<PidFd>>,
    pub phase: Phase,
    /// What a restarted plugin needs (gated containers only), written at every change.
    pub record: Option<GateRecord>,
    /// Rebuilt from its record after a restart; the runtime's `Synchronize` has not
    /// confirmed it yet.
    pub recovered: bool,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Phase::Running {
            post_start: Some(task),
        } = &self.phase
        {
            task.abort();
        }
    }
}

/// The core's state: owned by its one task.
pub(super) struct Machine {
    effects: Arc<dyn Effects>,
    ops: Arc<Ops>,
    inbox: Inbox,
    config: Arc<Config>,
    /// Whether a `Configure` without config text keeps the config we started with
    /// (external mode with `--config`) or falls back to the defaults (pre-installed).
    keep_config: bool,
    permits: Arc<Semaphore>,
    table: HashMap<String, Tracked>,
    /// The table's ids, for the edge (see `Index`): changed only with the table.
    index: Index,
    /// The policy in force, for the edge's validation: changed only with the config.
    policy: SharedPolicy,
}

impl Machine {
    pub fn new(
        config: Config,
        keep_config: bool,
        effects: Arc<dyn Effects>,
        ops: Arc<Ops>,
        inbox: Inbox,
        index: Index,
        policy: SharedPolicy,
    ) -> Machine {
        *lock::write(&policy) = Arc::clone(&config.policy);
        Machine {
            index,
            policy,
            ops,
            permits: Arc::new(Semaphore::new(config.max_concurrent_hooks)),
            effects,
            inbox,
            config: Arc::new(config),
            keep_config,
            table: HashMap::new(),
        }
    }

    /// Every input, in the order it arrived.
    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Configure { info, done } => {
                self.configure(info);
                let _ = done.send(());
            }
            Input::Synchronize {
                pods,
                containers,
                done,
            } => {
                self.synchronize(pods, containers);
                let _ = done.send(());
            }
            Input::Create { created, reply } => {
                let (pod, container, hooks) = *created;
                let _ = reply.send(Ok(self.create(pod, container, hooks)));
            }
            Input::Event { event, done } => self.event(*event, done),
            Input::GateChecked {
                container_id,
                status,
                done,
            } => {
                self.gate_checked(&container_id, status);
                let _ = done.send(());
            }
            Input::StopRequested {
                container_id,
                signal,
                reply,
            } => self.stop_requested(&container_id, signal, reply),
            Input::HookEnded {
                container_id,
                spec,
                outcome,
                took,
            } => self.hook_ended(&container_id, &spec, outcome, took),
            Input::Status { reply } => {
                let _ = reply.send(Status {
                    tracked: self.table.len(),
                    gated: self
                        .table
                        .values()
                        .filter(|t| t.gate == Gate::Gated)
                        .count(),
                });
            }
        }
    }

    fn configure(&mut self, info: RuntimeInfo) {
        let (config, problem) = if !info.config.trim().is_empty() {
            match Config::from_toml(&info.config) {
                Ok(config) => (config, None),
                Err(e) => ((*self.config).clone(), Some(e)),
            }
        } else if self.keep_config {
            ((*self.config).clone(), None)
        } else {
            (Config::default(), None)
        };
        self.effects.configure(&config, info.runtime_pid);
        self.recover();
        if let Some(e) = problem {
            warn!(error = %e, "the plugin config handed over by the runtime is invalid: keeping the current one");
        }
        for warning in &config.warnings {
            warn!("{warning}");
        }
        *lock::write(&self.policy) = Arc::clone(&config.policy);
        self.resize_permits(
            self.config.max_concurrent_hooks,
            config.max_concurrent_hooks,
        );
        self.config = Arc::new(config);
        info!(
            runtime = %info.runtime_name,
            version = %info.runtime_version,
            request_timeout_ms = info.request_timeout_ms,
            "configured by the runtime"
        );
    }

    /// Makes the hook semaphore hold `new` permits instead of `old`. Permits held by running
    /// hooks are taken back as those hooks end.
    fn resize_permits(&self, old: usize, new: usize) {
        let permits = &self.permits;
        if new > old {
            permits.add_permits(new - old);
            return;
        }
        let extra = old - new;
        let rest = extra - permits.forget_permits(extra);
        let Ok(n) = u32::try_from(rest) else {
            return;
        };
        if n == 0 {
            return;
        }
        let permits = Arc::clone(permits);
        tokio::spawn(async move {
            if let Ok(taken) = permits.acquire_many_owned(n).await {
                taken.forget();
            }
        });
    }

    #[cfg(test)]
    pub fn free_permits(&self) -> usize {
        self.permits.available_permits()
    }

    #[cfg(test)]
    pub async fn take_permits(&self, n: u32) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(&self.permits)
            .acquire_many_owned(n)
            .await
            .expect("semaphore open")
    }

    fn grace_period(&self, container: &Container) -> Duration {
        annotations::grace_period(&container.annotations)
            .unwrap_or(self.config.default_grace_period)
    }

    fn gate_params(&self, spec: &HookSpec, container: &Container) -> GateParams {
        GateParams::new(
            pre_stop_bound(spec.timeout, self.grace_period(container)),
            spec.stop_signal,
            container,
        )
    }

    /// A container with hooks is created (already validated by the edge).
    fn create(&mut self, pod: Pod, container: Container, hooks: Hooks) -> Adjustment {
        let mut adjustment = Adjustment::default();
        let mut gate = Gate::Absent;
        let mut record = None;
        if let Some(pre_stop) = &hooks.pre_stop {
            let params = self.gate_params(pre_stop, &container);
            match self.effects.gate_adjustment(&container, &params) {
                Ok(adj) => {
                    adjustment = adj;
                    gate = Gate::Injected;
                    // Written before the runtime hears of the gate: a plugin restarted from
                    // here on finds the container.
                    let new = GateRecord::new(&pod, &container);
                    self.effects.gate_save(&new);
                    record = Some(new);
                }
                Err(reason) => {
                    self.ops.fail_open(FailOpen::NotInjected);
                    warn!(
                        container = %container.id, pod = %pod.name, name = %container.name, %reason,
                        "cannot inject the PreStop gate: this container's PreStop cannot hold its stop and runs best-effort"
                    )
                }
            }
        }
        info!(
            container = %container.id,
            pod = %format!("{}/{}", pod.namespace, pod.name),
            name = %container.name,
            post_start = hooks.post_start.as_ref().map(|s| s.action.kind()),
            pre_stop = hooks.pre_stop.as_ref().map(|s| s.action.kind()),
            gate = gate == Gate::Injected,
            "container has lifecycle hooks"
        );
        self.track(Tracked {
            pod,
            container,
            hooks,
            gate,
            init: None,
            phase: Phase::Created,
            record,
            recovered: false,
        });
        adjustment
    }

    /// Adds a container to the table and its index.
    fn track(&mut self, tracked: Tracked) {
        lock::write(&self.index).insert(tracked.container.id.clone());
        self.table.insert(tracked.container.id.clone(), tracked);
    }

    fn event(&mut self, event: Event, done: oneshot::Sender<()>) {
        match event.kind {
            EventKind::PostCreateContainer => return self.post_create(event, done),
            EventKind::PostStartContainer => self.post_start(event),
            EventKind::StopContainer => self.stopped(&event.container.id),
            EventKind::RemoveContainer => self.remove(&event.container.id),
            EventKind::RemovePodSandbox => {
                let ids: Vec<String> = self
                    .table
                    .iter()
                    .filter(|(_, t)| t.container.pod_id == event.pod.id)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ids {
                    self.remove(&id);
                }
            }
            _ => {}
        }
        let _ = done.send(());
    }

    /// Post-create: confirm the gate (the runtime waits; the check runs in its own task and
    /// answers the runtime through [`Input::GateChecked`]).
    fn post_create(&mut self, event: Event, done: oneshot::Sender<()>) {
        let Some(t) = self.table.get_mut(&event.container.id) else {
            let _ = done.send(());
            return;
        };
        t.container = event.container;
        t.pod = event.pod;
        let spec = match (&t.gate, &t.hooks.pre_stop) {
            (Gate::Injected, Some(spec)) => spec.clone(),
            _ => {
                let _ = done.send(());
                return;
            }
        };
        let container = t.container.clone();
        let params = self.gate_params(&spec, &container);
        let effects = Arc::clone(&self.effects);
        let inbox = self.inbox.clone();
        tokio::spawn(async move {
            let status = match tokio::time::timeout(
                POST_CREATE_BUDGET,
                effects.gate_post_create(&container, &params),
            )
            .await
            {
                Ok(status) => status,
                Err(_) => GateStatus::Ungated(format!(
                    "putting the gate in front of the entrypoint took longer than {POST_CREATE_BUDGET:?}"
                )),
            };
            inbox
                .send(Input::GateChecked {
                    container_id: container.id,
                    status,
                    done,
                })
                .await;
        });
    }

    fn gate_checked(&mut self, id: &str, status: GateStatus) {
        self.checked_gate(id, status);
        self.count_gated();
    }

    /// Keeps the gated-containers gauge in step with the table.
    fn count_gated(&self) {
        self.ops.set_gated(
            self.table
                .values()
                .filter(|t| t.gate == Gate::Gated)
                .count(),
        );
    }

    fn checked_gate(&mut self, id: &str, status: GateStatus) {
        let Some(t) = self.table.get_mut(id) else {
            return;
        };
        t.gate = match status {
            GateStatus::Gated => Gate::Gated,
            GateStatus::Ungated(reason) => {
                self.ops.fail_open(FailOpen::Ungated);
                warn!(
                    container = %id, pod = %t.pod.name, name = %t.container.name, %reason,
                    "PreStop cannot hold this container's stop: it will run best-effort when the runtime reports the stop"
                );
                Gate::Ungated
            }
        };
        let gate = t.gate;
        let (pod, container) = (t.pod.clone(), t.container.clone());
        self.update_record(id, |r| {
            r.update(&pod, &container);
            r.gate = if gate == Gate::Gated {
                RecordedGate::Gated
            } else {
                RecordedGate::Ungated
            };
        });
    }

    /// Changes a container's record, when it has one, and writes it.
    fn update_record(&mut self, id: &str, change: impl FnOnce(&mut GateRecord)) {
        let Some(record) = self.table.get_mut(id).and_then(|t| t.record.as_mut()) else {
            return;
        };
        change(record);
        self.effects.gate_save(record);
    }

    /// The container runs: hold its init process and start its PostStart hook.
    fn post_start(&mut self, event: Event) {
        let id = event.container.id.clone();
        if !self.table.contains_key(&id) {
            // Created while no plugin served the runtime, and missing from its
            // `Synchronize` (the create finished after it): the edge passed it on because it
            // has hooks. Tracked from here, as just created, so its PostStart runs; one with a
            // PreStop hook is named as having no gate.
            let created = Container {
                state: ContainerState::Created,
                ..event.container.clone()
            };
            if !self.adopt(event.pod.clone(), &created, None) {
                return;
            }
            self.count_gated();
        }
        let Some(t) = self.table.get_mut(&id) else {
            return;
        };
        let pid = if event.container.pid != 0 {
            event.container.pid
        } else {
            t.container.pid
        };
        t.pod = event.pod;
        t.container = Container {
            pid,
            ..event.container
        };
        if t.init.is_none() {
            match self.effects.hold_init(&t.container) {
                Ok(init) => t.init = Some(init),
                Err(e) => {
                    warn!(container = %t.container.id, error = %e, "cannot hold the container's init process")
                }
            }
        }
        if let (Gate::Gated | Gate::Injected, Some(init)) = (t.gate, &t.init) {
            self.effects.gate_started(&t.container, init);
        }
        let started = t
            .init
            .as_ref()
            .filter(|init| t.record.as_ref().is_some_and(|r| r.pid != init.pid()))
            .and_then(|init| Some((init.pid(), self.effects.init_start_time(init)?)));
        if t.record.is_some() {
            let (pod, container) = (t.pod.clone(), t.container.clone());
            self.update_record(&id, |r| {
                r.update(&pod, &container);
                if let Some((pid, start_time)) = started {
                    r.pid = pid;
                    r.start_time = start_time;
                }
            });
        }
        let Some(t) = self.table.get_mut(&id) else {
            return;
        };
        if !matches!(t.phase, Phase::Created) {
            return;
        }
        let hook = t.hooks.post_start.clone().map(|spec| {
            let timeout = spec.timeout.unwrap_or(self.config.default_hook_timeout);
            (spec, timeout, event_target(self.effects.as_ref(), t))
        });
        let post_start =
            hook.map(|(spec, timeout, target)| self.spawn_hook(&target, spec, timeout));
        if let Some(t) = self.table.get_mut(&id) {
            t.phase = Phase::Running { post_start };
        }
    }

    /// The gate holds a stop signal: run the PreStop hook, once per stop.
    fn stop_requested(&mut self, id: &str, signal: i32, reply: oneshot::Sender<PreStopOutcome>) {
        let Some(t) = self.table.get_mut(id) else {
            let _ = reply.send(PreStopOutcome::Done);
            return;
        };
        match &mut t.phase {
            Phase::Stopping { waiters } => waiters.push(reply),
            Phase::Stopped { pre_stop } => {
                let _ = reply.send(pre_stop.clone().unwrap_or(PreStopOutcome::Done));
            }
            Phase::Created | Phase::Running { .. } => {
                let Some(spec) = t.hooks.pre_stop.clone() else {
                    let _ = reply.send(PreStopOutcome::Done);
                    return;
                };
                info!(
                    container = %id, name = %t.container.name, hook = "preStop", signal,
                    handler = spec.action.kind(), "gate holds the stop signal: running PreStop"
                );
                self.begin_pre_stop(id, spec, vec![reply]);
            }
        }
    }

    /// Moves a container into `Stopping` and starts its PreStop hook.
    fn begin_pre_stop(
        &mut self,
        id: &str,
        spec: HookSpec,
        waiters: Vec<oneshot::Sender<PreStopOutcome>>,
    ) {
        let Some(t) = self.table.get(id) else {
            return;
        };
        let bound = pre_stop_bound(spec.timeout, self.grace_period(&t.container));
        let target = event_target(self.effects.as_ref(), t);
        // Recorded before it starts: a restarted plugin never runs it a second time.
        self.update_record(id, |r| r.pre_stop = Some(RecordedPreStop::Running));
        self.spawn_hook(&target, spec, bound);
        if let Some(t) = self.table.get_mut(id) {
            // Replacing `Running` drops its PostStart handle: abort it first.
            if let Phase::Running {
                post_start: Some(task),
            } = &t.phase
            {
                task.abort();
            }
            t.phase = Phase::Stopping { waiters };
        }
    }

    /// The runtime reports the container stopped (after it sent the stop signal).
    fn stopped(&mut self, id: &str) {
        let Some(t) = self.table.get_mut(id) else {
            return;
        };
        match &t.phase {
            Phase::Stopping { .. } | Phase::Stopped { .. } => {}
            Phase::Created | Phase::Running { .. } => {
                let best_effort = match (&t.hooks.pre_stop, t.gate) {
                    (Some(spec), Gate::Absent | Gate::Ungated) => Some(spec.clone()),
                    _ => None,
                };
                match best_effort {
                    Some(spec) => {
                        info!(container = %id, hook = "preStop", "no gate: running PreStop best-effort after the stop");
                        self.begin_pre_stop(id, spec, Vec::new());
                    }
                    None => {
                        if let Phase::Running {
                            post_start: Some(task),
                        } = &t.phase
                        {
                            task.abort();
                        }
                        t.phase = Phase::Stopped { pre_stop: None };
                    }
                }
            }
        }
    }

    fn remove(&mut self, id: &str) {
        lock::write(&self.index).remove(id);
        if let Some(t) = self.table.remove(id) {
            if let Phase::Stopping { waiters } = &t.phase {
                debug!(container = %id, waiting = waiters.len(), "container removed while its PreStop ran");
            }
            self.effects.forget(id);
            if t.gate == Gate::Gated {
                self.count_gated();
            }
        }
    }

    fn hook_ended(&mut self, id: &str, spec: &HookSpec, outcome: hooks::Outcome, took: Duration) {
        let result = match &outcome {
            hooks::Outcome::Succeeded { .. } => HookResult::Succeeded,
            hooks::Outcome::Failed { .. } => HookResult::Failed,
            hooks::Outcome::TimedOut { .. } => HookResult::TimedOut,
            hooks::Outcome::ContainerGone => HookResult::ContainerGone,
        };
        self.ops
            .hook(spec.phase.as_str(), spec.action.kind(), result, took);
        let Some(t) = self.table.get_mut(id) else {
            debug!(container = %id, hook = spec.phase.as_str(), "hook ended after its container was removed");
            return;
        };
        let pod = format!("{}/{}", t.pod.namespace, t.pod.name);
        let name = t.container.name.clone();
        let handler = spec.action.kind();
        let hook = spec.phase.as_str();
        let took_ms = ms(took);
        match spec.phase {
            HookPhase::PreStop => {
                let result = match &outcome {
                    hooks::Outcome::Succeeded { output } => {
                        info!(container = %id, %pod, %name, hook, handler, took_ms, output = %output.trim_end(), "hook succeeded");
                        PreStopOutcome::Done
                    }
                    hooks::Outcome::ContainerGone => PreStopOutcome::Done,
                    hooks::Outcome::TimedOut { .. } => {
                        self.ops.fail_open(FailOpen::HookTimedOut);
                        warn!(container = %id, %pod, %name, hook, handler, took_ms, "hook timed out: the stop signal goes on");
                        PreStopOutcome::TimedOut
                    }
                    hooks::Outcome::Failed { reason } => {
                        warn!(container = %id, %pod, %name, hook, handler, %reason, "hook failed");
                        PreStopOutcome::Failed(reason.clone())
                    }
                };
                let previous = std::mem::replace(
                    &mut t.phase,
                    Phase::Stopped {
                        pre_stop: Some(result.clone()),
                    },
                );
                if let Phase::Stopping { waiters } = previous {
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
                self.update_record(id, |r| r.pre_stop = Some(recorded_outcome(&result)));
            }
            HookPhase::PostStart => {
                let running = matches!(t.phase, Phase::Running { .. });
                if running {
                    t.phase = Phase::Running { post_start: None };
                }
                let Some(reason) = failure(&outcome, spec.timeout) else {
                    match &outcome {
                        hooks::Outcome::Succeeded { output } => info!(
                            container = %id, %pod, %name, hook, handler, took_ms,
                            output = %output.trim_end(), "hook succeeded"
                        ),
                        _ => debug!(container = %id, hook, "container exited: hook abandoned"),
                    }
                    return;
                };
                if !running {
                    debug!(container = %id, hook, %reason, "container is stopping: hook failure ignored");
                    return;
                }
                warn!(container = %id, %pod, %name, hook, handler, %reason, "hook failed: stopping the container");
                self.kill(id, format!("PostStart hook failed: {reason}"));
            }
        }
    }

    /// Stops a container the way the kubelet does after a failed PostStart: the termination
    /// message, the stop signal, SIGKILL after the grace period.
    fn kill(&self, id: &str, message: String) {
        let Some(t) = self.table.get(id) else {
            return;
        };
        let container = t.container.clone();
        let grace = self.grace_period(&container);
        let effects = Arc::clone(&self.effects);
        let Some(init) = t.init.clone() else {
            warn!(container = %id, "no init process held: cannot stop the container");
            return;
        };
        tokio::spawn(async move {
            let id = &container.id;
            if let Err(e) = effects.write_termination_message(&container, &message) {
                warn!(container = %id, error = %e, "cannot write the termination message");
            }
            if let Err(e) = effects.signal(id, &init, libc::SIGTERM) {
                debug!(container = %id, error = %e, "stop signal not delivered");
                return;
            }
            if tokio::time::timeout(grace, effects.exited(&init))
                .await
                .is_err()
            {
                warn!(container = %id, grace_s = grace.as_secs(), "container outlived its grace period: SIGKILL");
                if let Err(e) = effects.signal(id, &init, libc::SIGKILL) {
                    debug!(container = %id, error = %e, "SIGKILL not delivered");
                }
            }
        });
    }

    /// Runs one hook in its own task, bounded by `bound`; its end comes back as an input.
    fn spawn_hook(&self, target: &hooks::Target, spec: HookSpec, bound: Duration) -> AbortHandle {
        let effects = Arc::clone(&self.effects);
        let permits = Arc::clone(&self.permits);
        let inbox = self.inbox.clone();
        let limits = hooks::Limits {
            default_timeout: bound,
            policy: Arc::clone(&self.config.policy),
        };
        let target = target.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut spec = spec;
            spec.timeout = Some(bound);
            let outcome = match permits.acquire_owned().await {
                Ok(_permit) => effects.run_hook(&spec, &target, &limits).await,
                Err(_) => hooks::Outcome::Failed {
                    reason: "the plugin is shutting down".into(),
                },
            };
            inbox
                .send(Input::HookEnded {
                    container_id: target.container_id,
                    spec,
                    outcome,
                    took: started.elapsed(),
                })
                .await;
        });
        task.abort_handle()
    }

    /// At process start, when the config is known without the runtime (external mode):
    /// applies it (the runtime's PID is not known yet) and recovers the recorded gates.
    pub fn recover_at_start(&mut self) {
        self.effects.configure(&self.config, 0);
        self.recover();
    }

    /// After (re)configuration, before the runtime synchronizes: the gated containers of the
    /// records (a previous plugin process wrote them) are tracked again, so that a gate asking
    /// now gets its PreStop, once. `Synchronize` confirms or corrects them.
    fn recover(&mut self) {
        for Recovered { record, init } in self.effects.gate_recover() {
            let id = record.id.clone();
            if self.table.contains_key(&id) {
                continue;
            }
            let pod = record.pod();
            let container = record.container();
            let hooks = match annotations::hooks_for(
                &container.name,
                &pod.annotations,
                &container.annotations,
            ) {
                Ok(h) if h.pre_stop.is_some() => h,
                Ok(_) => {
                    warn!(container = %id, "gate record without a PreStop hook: removed");
                    self.effects.forget(&id);
                    continue;
                }
                Err(e) => {
                    warn!(container = %id, error = %e, "gate record with an invalid hook annotation: removed");
                    self.effects.forget(&id);
                    continue;
                }
            };
            let gate = match record.gate {
                RecordedGate::Injected => Gate::Injected,
                RecordedGate::Gated => Gate::Gated,
                RecordedGate::Ungated => Gate::Ungated,
            };
            let phase = match (&record.pre_stop, &init) {
                (Some(ran), _) => Phase::Stopped {
                    pre_stop: Some(restored_outcome(ran)),
                },
                (None, Some(_)) => Phase::Running { post_start: None },
                (None, None) => Phase::Created,
            };
            info!(
                container = %id,
                pod = %format!("{}/{}", pod.namespace, pod.name),
                name = %container.name,
                init = init.as_ref().map(|i| i.pid()),
                pre_stop_ran = record.pre_stop.is_some(),
                "gated container recovered from its record: its gate is served again"
            );
            self.track(Tracked {
                pod,
                container,
                hooks,
                gate,
                init,
                phase,
                record: Some(record),
                recovered: true,
            });
        }
        self.count_gated();
    }

    /// Rebuilds the table from the runtime's view after a (re)connection. The runtime wins
    /// over recovered records where they disagree, except that a PreStop that already ran
    /// (or runs) is never started again.
    fn synchronize(&mut self, pods: Vec<Pod>, containers: Vec<Container>) {
        let live: HashSet<&str> = containers.iter().map(|c| c.id.as_str()).collect();
        let stale: Vec<String> = self
            .table
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        for id in stale {
            self.remove(&id);
        }
        let pods: HashMap<&str, &Pod> = pods.iter().map(|p| (p.id.as_str(), p)).collect();
        let mut added = Vec::new();
        for container in &containers {
            let previous = match self.table.get(&container.id) {
                Some(t) if !t.recovered => continue,
                Some(_) => self.table.remove(&container.id),
                None => None,
            };
            let pod = pods
                .get(container.pod_id.as_str())
                .map(|p| (*p).clone())
                .unwrap_or_default();
            if self.adopt(pod, container, previous) {
                added.push(container.id.clone());
            }
        }
        self.effects.gate_resync(&containers);
        // Written after the sockets were re-created (stale records are gone by then).
        for id in added {
            if let Some(record) = self.table.get(&id).and_then(|t| t.record.as_ref()) {
                self.effects.gate_save(record);
            }
        }
        self.count_gated();
        debug!(
            containers = containers.len(),
            tracked = self.table.len(),
            "container table rebuilt"
        );
    }

    /// Tracks a container the plugin did not see created (from `Synchronize`, or started
    /// while the plugin was not serving the runtime), replacing `previous` when that was
    /// recovered from its record. Returns whether it is tracked (it has hooks).
    fn adopt(&mut self, pod: Pod, container: &Container, previous: Option<Tracked>) -> bool {
        let hooks = match annotations::hooks_for(
            &container.name,
            &pod.annotations,
            &container.annotations,
        ) {
            Ok(h) => h,
            Err(e) => {
                warn!(container = %container.id, error = %e, "existing container has an invalid hook annotation: its hooks are ignored");
                self.untrack(&container.id, previous.is_some());
                return false;
            }
        };
        if hooks.is_empty() {
            self.untrack(&container.id, previous.is_some());
            return false;
        }
        let mut previous = previous;
        let recorded = previous.as_mut().and_then(|p| p.record.take());
        let gate = self.synchronized_gate(&pod, container, &hooks, recorded.as_ref());
        let running = matches!(
            container.state,
            ContainerState::Running | ContainerState::Paused
        );
        let held = previous
            .as_mut()
            .and_then(|p| p.init.take())
            .filter(|init| init.pid() == container.pid);
        let init = match held {
            Some(init) => Some(init),
            None if running && container.pid != 0 => match self.effects.hold_init(container) {
                Ok(init) => Some(init),
                Err(e) => {
                    warn!(container = %container.id, error = %e, "cannot hold the container's init process");
                    None
                }
            },
            None => None,
        };
        // A PreStop that ran or runs stays (the runtime cannot know of it).
        let ran = previous.as_mut().and_then(|p| {
            match std::mem::replace(&mut p.phase, Phase::Stopped { pre_stop: None }) {
                phase @ (Phase::Stopping { .. } | Phase::Stopped { pre_stop: Some(_) }) => {
                    Some(phase)
                }
                _ => None,
            }
        });
        let phase = match ran {
            Some(phase) => phase,
            None => match container.state {
                ContainerState::Running | ContainerState::Paused => {
                    Phase::Running { post_start: None }
                }
                ContainerState::Stopped => Phase::Stopped { pre_stop: None },
                _ => Phase::Created,
            },
        };
        let record = (hooks.pre_stop.is_some() && gate != Gate::Absent).then(|| {
            let mut record = recorded.unwrap_or_else(|| GateRecord::new(&pod, container));
            record.update(&pod, container);
            record.gate = match gate {
                Gate::Gated => RecordedGate::Gated,
                Gate::Injected => RecordedGate::Injected,
                Gate::Ungated | Gate::Absent => RecordedGate::Ungated,
            };
            if let Some(init) = &init {
                if record.pid != init.pid() {
                    record.pid = init.pid();
                    record.start_time = self.effects.init_start_time(init).unwrap_or(0);
                    if record.start_time == 0 {
                        record.pid = 0;
                    }
                }
            }
            record
        });
        drop(previous);
        self.track(Tracked {
            pod,
            container: container.clone(),
            hooks,
            gate,
            init,
            phase,
            record,
            recovered: false,
        });
        true
    }

    /// Drops a container that `Synchronize` shows has no hooks (any more); `tracked` says
    /// whether it was in the table (recovered from its record).
    fn untrack(&mut self, id: &str, tracked: bool) {
        if tracked {
            lock::write(&self.index).remove(id);
            self.effects.forget(id);
        }
    }

    /// Whether the gate holds the stop of a container the runtime reports at `Synchronize`,
    /// and, for one that should be gated but is not, why (logged and counted once).
    fn synchronized_gate(
        &self,
        pod: &Pod,
        container: &Container,
        hooks: &Hooks,
        recorded: Option<&GateRecord>,
    ) -> Gate {
        if hooks.pre_stop.is_none() {
            return Gate::Absent;
        }
        let alive = matches!(
            container.state,
            ContainerState::Created | ContainerState::Running | ContainerState::Paused
        );
        let marked = recorded.is_some() || self.effects.is_gated(container);
        let args = &container.process.args;
        // The running process is the truth where there is one; otherwise the args (no args
        // at all say nothing either way).
        let gated_args = match self.effects.init_runs_gate(container) {
            Some(runs) => runs,
            None => args.is_empty() || gate::args_are_gated(args),
        };
        let name = format!("{}/{}/{}", pod.namespace, pod.name, container.name);
        match (marked, gated_args) {
            (true, true) => Gate::Gated,
            (true, false) => {
                let known = recorded.is_some_and(|r| r.gate == RecordedGate::Ungated);
                if alive && !known {
                    self.ops.fail_open(FailOpen::Ungated);
                    warn!(
                        container = %container.id, %name,
                        reason = "its create was interrupted (the plugin restarted, or the runtime gave up waiting) before the gate was put in front of its entrypoint",
                        "PreStop cannot hold this container's stop: it will run best-effort when the runtime reports the stop"
                    );
                }
                Gate::Ungated
            }
            (false, _) => {
                if alive {
                    self.ops.fail_open(FailOpen::NotInjected);
                    warn!(
                        container = %container.id, %name,
                        reason = "it was created while the plugin was not serving the runtime (or its create was not answered in time), so it has no gate",
                        "PreStop cannot hold this container's stop: it will run best-effort when the runtime reports the stop"
                    );
                }
                Gate::Absent
            }
        }
    }
}

/// How a recorded PreStop is told to a gate that asks again.
fn restored_outcome(ran: &RecordedPreStop) -> PreStopOutcome {
    match ran {
        RecordedPreStop::Done => PreStopOutcome::Done,
        RecordedPreStop::TimedOut => PreStopOutcome::TimedOut,
        RecordedPreStop::Failed(reason) => PreStopOutcome::Failed(reason.clone()),
        RecordedPreStop::Running => PreStopOutcome::Failed(
            "the plugin restarted while the PreStop hook ran; it is not run again".into(),
        ),
    }
}

fn recorded_outcome(outcome: &PreStopOutcome) -> RecordedPreStop {
    match outcome {
        PreStopOutcome::Done => RecordedPreStop::Done,
        PreStopOutcome::TimedOut => RecordedPreStop::TimedOut,
        PreStopOutcome::Failed(reason) => RecordedPreStop::Failed(reason.clone()),
    }
}

/// What a hook runner needs to know about a tracked container.
fn event_target(effects: &dyn Effects, t: &Tracked) -> hooks::Target {
    hooks::Target {
        container_id: t.container.id.clone(),
        init: t.init.clone(),
        process: Some(t.container.process.clone()),
        bundle: effects.bundle(&t.container.id),
        pod_ips: t.pod.ips.clone(),
        pod_netns: t.pod.netns_path().map(Into::into),
        pod_namespace: t.pod.namespace.clone(),
    }
}

/// The failure a hook outcome stands for, as the kubelet words it.
fn failure(outcome: &hooks::Outcome, bound: Option<Duration>) -> Option<String> {
    let after = bound.map_or(0.0, |b| b.as_secs_f64());
    match outcome {
        hooks::Outcome::Failed { reason } => Some(reason.clone()),
        hooks::Outcome::TimedOut { output } if output.is_empty() => {
            Some(format!("timed out after {after}s"))
        }
        hooks::Outcome::TimedOut { output } => {
            Some(format!("timed out after {after}s; output: {output}"))
        }
        _ => None,
    }
}
