//! The event core: one input, one task, one state machine per container.
//!
//! Everything that can change a container's state arrives as an `Input` on one channel:
//! the runtime's NRI requests (through [`Core`], the protocol edge's [`Handler`]), the gate's
//! stop requests (through an [`Inbox`] the gate servers hold), and the core's own feedback
//! (a hook ended, the gate check finished). One task takes them in order and hands each to
//! `machine::Machine::handle`, where every transition lives. Ordering and "at most one
//! PreStop per stop" are therefore decided in one place. The edge reads one thing back: the
//! ids of the containers with hooks (`Index`, written only by the machine), so that creates
//! and events of containers without hooks, which would change nothing, are answered on the
//! spot (hook annotations are validated there too: validation is pure). The one exception
//! is the start of an untracked container that has hooks: the runtime created it while no
//! plugin served it, and the machine tracks it from there.
//!
//! The task never waits on the outside world: hooks, the gate check and killing a container
//! run in tasks of their own, bounded, and report back as inputs. Everything that touches the
//! outside world goes through [`Effects`], handed to the core once, so the machine is
//! testable without root or a runtime.

mod effects;
mod error;
mod machine;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

pub use effects::{Effects, GateStatus};
pub use error::{EffectError, Error};
pub use machine::{pre_stop_bound, APP_RESERVE, POST_CREATE_BUDGET};

use crate::annotations::{self, HookSpec, Hooks};
use crate::config::Config;
use crate::hooks;
use crate::lock;
use crate::model::{Adjustment, Container, Event, EventKind, Pod, RuntimeInfo};
use crate::nri::Handler;
use crate::ops::Ops;
use crate::policy::Policy;

/// Where the kubelet mounts the termination-message file in a container.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Inputs queued at most; senders wait beyond that (the runtime's own lock and the gate
/// servers' connection limits keep the queue far shorter).
const QUEUE: usize = 1024;

/// How a PreStop hook ended, as the gate is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreStopOutcome {
    Done,
    Failed(String),
    TimedOut,
}

/// Counts of the container table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Containers with at least one hook.
    pub tracked: usize,
    /// Of those, the ones whose stop the gate holds.
    pub gated: usize,
}

/// One input of the core.
#[derive(Debug)]
pub(crate) enum Input {
    Configure {
        info: RuntimeInfo,
        done: oneshot::Sender<()>,
    },
    Synchronize {
        pods: Vec<Pod>,
        containers: Vec<Container>,
        done: oneshot::Sender<()>,
    },
    /// A container with hooks (the edge answers creates of containers without any itself).
    Create {
        created: Box<(Pod, Container, Hooks)>,
        reply: oneshot::Sender<Result<Adjustment, Error>>,
    },
    /// Every other runtime event; `done` answers the runtime.
    Event {
        event: Box<Event>,
        done: oneshot::Sender<()>,
    },
    /// The gate holds a stop signal and asks for the PreStop hook.
    StopRequested {
        container_id: String,
        signal: i32,
        reply: oneshot::Sender<PreStopOutcome>,
    },
    /// The post-create gate check ended; `done` answers the runtime's `PostCreateContainer`.
    GateChecked {
        container_id: String,
        status: GateStatus,
        done: oneshot::Sender<()>,
    },
    /// A hook ended (it carries the bound it ran with as its timeout).
    HookEnded {
        container_id: String,
        spec: HookSpec,
        outcome: hooks::Outcome,
        took: Duration,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
}

/// The ids of the containers the machine tracks (those with hooks). Written only by the
/// machine, as its table changes; read by the edge so that the events of containers without
/// hooks, which would change nothing, are answered without a trip through the input.
type Index = Arc<RwLock<HashSet<String>>>;

/// The policy of the config in force. Written only by the machine, when it takes a config;
/// read by the edge, which checks the hooks of every create against it.
type SharedPolicy = Arc<RwLock<Arc<Policy>>>;

/// The sending end of the core's input, for the gate servers and the core's own tasks.
#[derive(Clone, Debug)]
pub struct Inbox(mpsc::Sender<Input>);

/// The receiving end, handed to [`Core::start`].
pub struct Inlet(mpsc::Receiver<Input>);

/// The core's input channel. Make it first, hand the [`Inbox`] to whatever sends stop
/// requests (the node's gate servers), then start the core on the [`Inlet`].
pub fn channel() -> (Inbox, Inlet) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Inbox(tx), Inlet(rx))
}

impl Inbox {
    async fn send(&self, input: Input) {
        // A closed channel means the core has ended; the input's reply sender is dropped with
        // it, which its waiter sees.
        let _ = self.0.send(input).await;
    }

    /// Counts of the container table; `None` when the core's loop has ended.
    pub async fn status(&self) -> Option<Status> {
        let (reply, answer) = oneshot::channel();
        self.send(Input::Status { reply }).await;
        answer.await.ok()
    }

    /// The gate of `container_id` holds `signal`: runs the container's PreStop hook (once
    /// per stop) and returns how it ended.
    pub async fn stop_requested(&self, container_id: &str, signal: i32) -> PreStopOutcome {
        let (reply, answer) = oneshot::channel();
        self.send(Input::StopRequested {
            container_id: container_id.to_string(),
            signal,
            reply,
        })
        .await;
        answer
            .await
            .unwrap_or_else(|_| PreStopOutcome::Failed("the plugin is shutting down".into()))
    }
}

/// The protocol edge's handle on the core. Cheap to clone; the core's task ends when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Core {
    inbox: Inbox,
    ops: Arc<Ops>,
    index: Index,
    policy: SharedPolicy,
    _alive: Arc<oneshot::Sender<()>>,
}

impl Core {
    /// Starts the core's task on the channel made by [`channel`], with `effects`; `ops` gets
    /// its metrics and health. `keep_config`: a `Configure` without config text keeps `config`
    /// (external mode with `--config`) instead of the defaults; the config is then applied at
    /// once and the gated containers recorded by a previous process are recovered (else that
    /// waits for the runtime's `Configure`). Needs a tokio runtime.
    pub fn start(
        config: Config,
        keep_config: bool,
        effects: Arc<dyn Effects>,
        ops: Arc<Ops>,
        (inbox, inlet): (Inbox, Inlet),
    ) -> Core {
        let (alive, mut dropped) = oneshot::channel::<()>();
        let index = Index::default();
        let policy = SharedPolicy::default();
        let mut machine = machine::Machine::new(
            config,
            keep_config,
            effects,
            Arc::clone(&ops),
            inbox.clone(),
            Arc::clone(&index),
            Arc::clone(&policy),
        );
        if keep_config {
            // The config is ours, not the runtime's: the gates recorded by a previous process
            // are served from now on, before the runtime is even reached.
            machine.recover_at_start();
        }
        let Inlet(mut rx) = inlet;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    input = rx.recv() => match input {
                        Some(input) => machine.handle(input),
                        None => break,
                    },
                    _ = &mut dropped => break,
                }
            }
        });
        Core {
            inbox,
            ops,
            index,
            policy,
            _alive: Arc::new(alive),
        }
    }

    /// Counts of the container table.
    pub async fn status(&self) -> Status {
        self.inbox.status().await.unwrap_or_default()
    }

    /// Sends an input that is answered with `()` and waits for the answer.
    async fn call(&self, make: impl FnOnce(oneshot::Sender<()>) -> Input) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        self.inbox.send(make(done)).await;
        answer.await.map_err(|_| Error::ShuttingDown)
    }
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
        let _request = self.ops.request("Configure");
        let timeout = info.request_timeout_ms;
        if self
            .call(|done| Input::Configure { info, done })
            .await
            .is_ok()
        {
            self.ops.configured(timeout);
        }
    }

    async fn synchronize(&self, pods: Vec<Pod>, containers: Vec<Container>) {
        let _request = self.ops.request("Synchronize");
        if self
            .call(|done| Input::Synchronize {
                pods,
                containers,
                done,
            })
            .await
            .is_ok()
        {
            self.ops.synchronized();
        }
    }

    async fn create_container(&self, pod: Pod, container: Container) -> Result<Adjustment, Error> {
        let _request = self.ops.request(EventKind::CreateContainer.as_str());
        // Validation is pure: a container without hooks (or with a bad one, or one the
        // policy forbids) changes nothing.
        let hooks =
            annotations::hooks_for(&container.name, &pod.annotations, &container.annotations)?;
        if hooks.is_empty() {
            return Ok(Adjustment::default());
        }
        let policy = Arc::clone(&lock::read(&self.policy));
        policy.check_hooks(&hooks, &pod.namespace, &pod.ips)?;
        let (reply, answer) = oneshot::channel();
        self.inbox
            .send(Input::Create {
                created: Box::new((pod, container, hooks)),
                reply,
            })
            .await;
        answer.await.unwrap_or(Err(Error::ShuttingDown))
    }

    async fn event(&self, event: Event) -> Result<(), Error> {
        let _request = self.ops.request(event.kind.as_str());
        let per_container = matches!(
            event.kind,
            EventKind::PostCreateContainer
                | EventKind::PostStartContainer
                | EventKind::StopContainer
                | EventKind::RemoveContainer
        );
        if per_container && !lock::read(&self.index).contains(&event.container.id) {
            // The start of a container the plugin never saw created (it was created while no
            // plugin served the runtime) goes on when it has hooks: the core tracks it from
            // here and names it when its PreStop cannot hold the stop.
            let unseen = event.kind == EventKind::PostStartContainer
                && annotations::hooks_for(
                    &event.container.name,
                    &event.pod.annotations,
                    &event.container.annotations,
                )
                .is_ok_and(|h| !h.is_empty());
            if !unseen {
                return Ok(());
            }
        }
        self.call(|done| Input::Event {
            event: Box::new(event),
            done,
        })
        .await
    }

    async fn shutdown(&self) {
        self.ops.disconnected();
        tracing::info!("runtime connection ended");
    }
}

/// Milliseconds with two decimals, for logs.
pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

#[cfg(test)]
mod tests;
