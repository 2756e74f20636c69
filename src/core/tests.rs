//! The core's state machine against a recording fake of the outside world.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::annotations::{self, AnnotationError};
use crate::gate::{GateParams, GateRecord, RecordedGate, RecordedPreStop, Recovered};
use crate::model::ContainerState;
use crate::ns::pidfd::PidFd;
use crate::ops::Ops;

/// Records what the core asks of the world; hook outcomes are scripted.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<String>>,
    outcome: Mutex<Option<hooks::Outcome>>,
    /// When set, every hook waits for a permit of this semaphore before it ends.
    hold: Option<Arc<Semaphore>>,
    exited: Notify,
    ungated: bool,
    /// Every record written, in order.
    saved: Mutex<Vec<GateRecord>>,
    /// What the next `gate_recover` finds.
    recovered: Mutex<Vec<Recovered>>,
}

impl Fake {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn record(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    fn count(&self, prefix: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }
}

#[async_trait]
impl Effects for Fake {
    fn configure(&self, config: &Config, _runtime_pid: u32) {
        self.record(format!("configure {}", config.max_concurrent_hooks));
    }
    fn hold_init(&self, container: &Container) -> Result<Arc<PidFd>, EffectError> {
        self.record(format!("hold {}", container.id));
        // Our own process stands in for the container's init.
        Ok(Arc::new(PidFd::open(std::process::id()).unwrap()))
    }
    fn bundle(&self, container_id: &str) -> Option<PathBuf> {
        Some(PathBuf::from(format!("/bundles/{container_id}")))
    }
    async fn run_hook(
        &self,
        spec: &HookSpec,
        target: &hooks::Target,
        limits: &hooks::Limits,
    ) -> hooks::Outcome {
        assert!(
            target.init.is_some(),
            "hooks run with the held init process"
        );
        assert_eq!(
            target.bundle,
            Some(PathBuf::from(format!("/bundles/{}", target.container_id)))
        );
        self.record(format!(
            "run {} {} {}s",
            spec.phase.as_str(),
            target.container_id,
            limits.default_timeout.as_secs_f64()
        ));
        if let Some(hold) = &self.hold {
            hold.acquire().await.unwrap().forget();
        }
        self.outcome
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(hooks::Outcome::Succeeded {
                output: String::new(),
            })
    }
    fn signal(&self, container_id: &str, _init: &PidFd, signal: i32) -> Result<(), EffectError> {
        self.record(format!("signal {container_id} {signal}"));
        Ok(())
    }
    async fn exited(&self, _init: &PidFd) {
        self.exited.notified().await
    }
    fn write_termination_message(
        &self,
        container: &Container,
        message: &str,
    ) -> Result<(), EffectError> {
        self.record(format!("message {}: {message}", container.id));
        Ok(())
    }
    fn gate_adjustment(
        &self,
        container: &Container,
        params: &GateParams,
    ) -> Result<Adjustment, EffectError> {
        self.record(format!(
            "inject {} {}s",
            container.id,
            params.timeout.as_secs_f64()
        ));
        let mut adj = Adjustment::default();
        adj.annotations.insert("gated".into(), "1".into());
        Ok(adj)
    }
    async fn gate_post_create(&self, container: &Container, _: &GateParams) -> GateStatus {
        self.record(format!("post-create {}", container.id));
        if self.ungated {
            GateStatus::Ungated("no API".into())
        } else {
            GateStatus::Gated
        }
    }
    fn gate_started(&self, container: &Container, _init: &PidFd) {
        self.record(format!("gate-started {}", container.id));
    }
    fn is_gated(&self, c: &Container) -> bool {
        c.annotations.contains_key("gated")
    }
    fn init_runs_gate(&self, c: &Container) -> Option<bool> {
        c.annotations.get("runs-gate").map(|v| v == "true")
    }
    fn gate_resync(&self, containers: &[Container]) {
        for c in containers.iter().filter(|c| self.is_gated(c)) {
            self.record(format!("resync {}", c.id));
        }
    }
    fn forget(&self, id: &str) {
        self.record(format!("forget {id}"));
    }
    fn gate_save(&self, record: &GateRecord) {
        let ran = self.calls().iter().any(|c| c.starts_with("run preStop"));
        let mut record = record.clone();
        // Whether the hook had started when this was written, in the `version` field.
        record.version = u32::from(ran);
        self.saved.lock().unwrap().push(record);
    }
    fn gate_recover(&self) -> Vec<Recovered> {
        std::mem::take(&mut *self.recovered.lock().unwrap())
    }
    fn init_start_time(&self, _init: &PidFd) -> Option<u64> {
        Some(77)
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

/// A container of a pod with a 7 s grace period.
fn container(id: &str, name: &str) -> Container {
    Container {
        id: id.into(),
        pod_id: "pod1".into(),
        name: name.into(),
        pid: 4242,
        annotations: BTreeMap::from([(annotations::GRACE_PERIOD_KEY.to_string(), "7".to_string())]),
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

fn start(fake: &Arc<Fake>) -> (Core, Inbox) {
    let (core, inbox, _) = start_with_ops(fake);
    (core, inbox)
}

fn start_with_ops(fake: &Arc<Fake>) -> (Core, Inbox, Arc<Ops>) {
    let (inbox, inlet) = channel();
    let effects: Arc<dyn Effects> = fake.clone();
    let ops = Arc::new(Ops::new());
    let core = Core::start(
        Config::default(),
        false,
        effects,
        Arc::clone(&ops),
        (inbox.clone(), inlet),
    );
    (core, inbox, ops)
}

/// Lets spawned tasks run and their reports reach the core.
async fn settle(core: &Core) {
    for _ in 0..20 {
        tokio::task::yield_now().await;
        core.status().await;
    }
}

/// Create, post-create and post-start, as the runtime sends them.
async fn run_container(core: &Core, p: &Pod, c: &Container) -> Adjustment {
    let adj = core.create_container(p.clone(), c.clone()).await.unwrap();
    core.event(event(EventKind::PostCreateContainer, p, c))
        .await
        .unwrap();
    core.event(event(EventKind::PostStartContainer, p, c))
        .await
        .unwrap();
    adj
}

#[test]
fn pre_stop_leaves_the_app_its_reserve_of_the_grace_period() {
    let s = Duration::from_secs;
    // Grace 5 s, a 20 s hook: the hook gets 3 s, the app the last 2 s.
    assert_eq!(pre_stop_bound(Some(s(20)), s(5)), s(3));
    assert_eq!(pre_stop_bound(None, s(30)), s(28));
    assert_eq!(pre_stop_bound(Some(s(10)), s(30)), s(10));
    // Periods of 2 s or less are shared half and half.
    assert_eq!(pre_stop_bound(None, s(2)), s(1));
    assert_eq!(pre_stop_bound(Some(s(5)), s(1)), Duration::from_millis(500));
    assert_eq!(pre_stop_bound(None, Duration::ZERO), Duration::ZERO);
}

#[tokio::test]
async fn container_without_hooks_is_not_touched() {
    let fake = Arc::new(Fake::default());
    let (core, _) = start(&fake);
    let p = pod(&[]);
    let c = container("c1", "app");
    assert!(run_container(&core, &p, &c).await.is_empty());
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    core.event(event(EventKind::RemoveContainer, &p, &c))
        .await
        .unwrap();
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert_eq!(core.status().await, Status::default());
}

#[tokio::test]
async fn invalid_annotation_refuses_create_with_a_typed_error() {
    let fake = Arc::new(Fake::default());
    let (core, _) = start(&fake);
    let p = pod(&[("poststart.lifecycle.nri.io/container.app", "{bad")]);
    let err = core
        .create_container(p, container("c1", "app"))
        .await
        .unwrap_err();
    let Error::Annotation(AnnotationError { key, problem }) = &err else {
        panic!("not an annotation error: {err:?}");
    };
    assert_eq!(key, "poststart.lifecycle.nri.io/container.app");
    assert!(problem.starts_with("invalid JSON"), "{problem}");
    assert_eq!(core.status().await.tracked, 0);
}

#[tokio::test]
async fn post_start_runs_with_the_held_init_after_start() {
    let fake = Arc::new(Fake::default());
    let (core, _) = start(&fake);
    let p = pod(&[(
        "poststart.lifecycle.nri.io/pod",
        r#"{"exec":{"command":["true"]},"timeoutSeconds":3}"#,
    )]);
    let c = container("c1", "app");
    assert!(run_container(&core, &p, &c).await.is_empty());
    settle(&core).await;
    assert_eq!(fake.calls(), vec!["hold c1", "run postStart c1 3s"]);
    assert_eq!(
        core.status().await,
        Status {
            tracked: 1,
            gated: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn failed_post_start_writes_message_signals_and_kills_after_grace() {
    let fake = Arc::new(Fake {
        outcome: Mutex::new(Some(hooks::Outcome::Failed {
            reason: "exit status 3: boom".into(),
        })),
        ..Fake::default()
    });
    let (core, _) = start(&fake);
    let p = pod(&[(
        "poststart.lifecycle.nri.io/container.app",
        r#"{"exec":{"command":["false"]}}"#,
    )]);
    let c = container("c1", "app");
    run_container(&core, &p, &c).await;
    // The container never exits by itself: SIGTERM, then SIGKILL after the 7 s grace period.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if fake.count("signal") >= 2 {
            break;
        }
    }
    assert_eq!(
        fake.calls(),
        vec![
            "hold c1",
            "run postStart c1 30s",
            "message c1: PostStart hook failed: exit status 3: boom",
            "signal c1 15",
            "signal c1 9"
        ]
    );
}

#[tokio::test]
async fn post_start_failure_after_the_container_is_gone_kills_nothing() {
    let fake = Arc::new(Fake {
        outcome: Mutex::new(Some(hooks::Outcome::ContainerGone)),
        ..Fake::default()
    });
    let (core, _) = start(&fake);
    let p = pod(&[(
        "poststart.lifecycle.nri.io/pod",
        r#"{"sleep":{"seconds":5}}"#,
    )]);
    let c = container("c1", "app");
    run_container(&core, &p, &c).await;
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    settle(&core).await;
    assert_eq!(fake.count("signal"), 0, "{:?}", fake.calls());
}

#[tokio::test]
async fn pre_stop_runs_once_per_stop_however_often_the_gate_asks() {
    let hold = Arc::new(Semaphore::new(0));
    let fake = Arc::new(Fake {
        hold: Some(hold.clone()),
        ..Fake::default()
    });
    let (core, inbox) = start(&fake);
    let p = pod(&[(
        "prestop.lifecycle.nri.io/container.app",
        r#"{"sleep":{"seconds":2},"timeoutSeconds":60}"#,
    )]);
    let c = container("c1", "app");
    let adj = run_container(&core, &p, &c).await;
    assert_eq!(adj.annotations.get("gated").map(String::as_str), Some("1"));
    assert_eq!(core.status().await.gated, 1);
    // Two gate connections ask at once while the hook runs: one run, the same answer.
    let first = tokio::spawn({
        let inbox = inbox.clone();
        async move { inbox.stop_requested("c1", libc::SIGTERM).await }
    });
    let second = tokio::spawn({
        let inbox = inbox.clone();
        async move { inbox.stop_requested("c1", libc::SIGTERM).await }
    });
    settle(&core).await;
    assert_eq!(fake.count("run preStop"), 1, "{:?}", fake.calls());
    hold.add_permits(10);
    assert_eq!(first.await.unwrap(), PreStopOutcome::Done);
    assert_eq!(second.await.unwrap(), PreStopOutcome::Done);
    // A retry after it ended, and the runtime's own stop, run nothing more.
    assert_eq!(
        inbox.stop_requested("c1", libc::SIGTERM).await,
        PreStopOutcome::Done
    );
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    assert_eq!(
        inbox.stop_requested("unknown", libc::SIGTERM).await,
        PreStopOutcome::Done
    );
    core.event(event(EventKind::RemoveContainer, &p, &c))
        .await
        .unwrap();
    settle(&core).await;
    // timeoutSeconds 60 is cut to the 7 s grace period less the app's 2 s; the gate waits
    // slightly longer than the hook.
    assert_eq!(
        fake.calls(),
        vec![
            "inject c1 5.5s",
            "post-create c1",
            "hold c1",
            "gate-started c1",
            "run preStop c1 5s",
            "forget c1"
        ]
    );
}

#[tokio::test]
async fn a_failed_pre_stop_is_told_to_every_waiter() {
    let fake = Arc::new(Fake {
        outcome: Mutex::new(Some(hooks::Outcome::Failed {
            reason: "HTTP 500".into(),
        })),
        ..Fake::default()
    });
    let (core, inbox) = start(&fake);
    let p = pod(&[(
        "prestop.lifecycle.nri.io/pod",
        r#"{"httpGet":{"path":"/drain","port":80}}"#,
    )]);
    let c = container("c1", "app");
    run_container(&core, &p, &c).await;
    let failed = PreStopOutcome::Failed("HTTP 500".into());
    assert_eq!(inbox.stop_requested("c1", libc::SIGTERM).await, failed);
    assert_eq!(inbox.stop_requested("c1", libc::SIGINT).await, failed);
    assert_eq!(fake.count("run preStop"), 1);
}

#[tokio::test]
async fn a_stop_during_post_start_cancels_it_and_runs_pre_stop() {
    let hold = Arc::new(Semaphore::new(0));
    let fake = Arc::new(Fake {
        hold: Some(hold.clone()),
        outcome: Mutex::new(Some(hooks::Outcome::Failed {
            reason: "late".into(),
        })),
        ..Fake::default()
    });
    let (core, inbox) = start(&fake);
    let p = pod(&[
        (
            "poststart.lifecycle.nri.io/pod",
            r#"{"exec":{"command":["sleep","100"]}}"#,
        ),
        ("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":1}}"#),
    ]);
    let c = container("c1", "app");
    run_container(&core, &p, &c).await;
    settle(&core).await;
    assert_eq!(fake.count("run postStart"), 1);
    let stop = tokio::spawn({
        let inbox = inbox.clone();
        async move { inbox.stop_requested("c1", libc::SIGTERM).await }
    });
    settle(&core).await;
    hold.add_permits(10);
    // The PreStop hook "fails" too (scripted), but the cancelled PostStart never reports,
    // so nothing kills the container on its behalf.
    assert_eq!(stop.await.unwrap(), PreStopOutcome::Failed("late".into()));
    settle(&core).await;
    assert_eq!(fake.count("signal"), 0, "{:?}", fake.calls());
    assert_eq!(fake.count("message"), 0, "{:?}", fake.calls());
}

#[tokio::test]
async fn ungated_pre_stop_runs_best_effort_at_stop() {
    let fake = Arc::new(Fake {
        ungated: true,
        ..Fake::default()
    });
    let (core, _) = start(&fake);
    let p = pod(&[("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":0}}"#)]);
    let c = container("c1", "app");
    run_container(&core, &p, &c).await;
    assert_eq!(core.status().await.gated, 0);
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    settle(&core).await;
    assert_eq!(fake.count("run preStop c1 5s"), 1, "{:?}", fake.calls());
}

#[tokio::test]
async fn synchronize_rebuilds_and_forgets_and_churn_does_not_grow() {
    let fake = Arc::new(Fake::default());
    let (core, inbox) = start(&fake);
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
    // "old" is gone; both existing containers have the pod's hook, "g1" is gated.
    assert_eq!(
        core.status().await,
        Status {
            tracked: 2,
            gated: 1
        }
    );
    let calls = fake.calls();
    assert!(calls.contains(&"forget old".to_string()), "{calls:?}");
    assert!(calls.contains(&"hold g1".to_string()), "{calls:?}");
    assert!(calls.contains(&"resync g1".to_string()), "{calls:?}");
    // The gated container found again still holds its stop: its PreStop runs on request.
    assert_eq!(
        inbox.stop_requested("g1", libc::SIGTERM).await,
        PreStopOutcome::Done
    );
    assert_eq!(fake.count("run preStop g1"), 1);
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
    assert_eq!(core.status().await, Status::default());
}

#[tokio::test]
async fn runtime_config_is_applied_through_the_effects() {
    let fake = Arc::new(Fake::default());
    let (core, _) = start(&fake);
    let info = |config: &str| RuntimeInfo {
        config: config.into(),
        ..RuntimeInfo::default()
    };
    core.configure(info("max_concurrent_hooks = 3")).await;
    // An invalid config keeps the current one; an empty one (pre-installed) gives defaults.
    core.configure(info("no_such_key = 1")).await;
    core.configure(info("")).await;
    assert_eq!(
        fake.calls(),
        vec!["configure 3", "configure 3", "configure 64"]
    );
}

#[tokio::test]
async fn the_policy_in_force_refuses_creates() {
    let fake = Arc::new(Fake::default());
    let (core, _) = start(&fake);
    let key = "poststart.lifecycle.nri.io/container.app";
    let mut p = pod(&[(key, r#"{"exec":{"command":["true"]}}"#)]);
    p.namespace = "team-a".into();
    // The default policy allows it.
    core.create_container(p.clone(), container("c0", "app"))
        .await
        .unwrap();
    let policy =
        "[[policy.handlers]]\nkinds = [\"exec\"]\nnamespaces = [\"kube-system\", \"ops-*\"]";
    core.configure(RuntimeInfo {
        config: policy.into(),
        ..RuntimeInfo::default()
    })
    .await;
    let err = core
        .create_container(p.clone(), container("c1", "app"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"annotation "poststart.lifecycle.nri.io/container.app": exec hooks are not allowed in namespace "team-a" (policy.handlers rule 1: exec only in ["kube-system","ops-*"])"#
    );
    assert!(matches!(err, Error::Annotation(_)));
    // Allowed in a namespace the rule names.
    let mut ops = p.clone();
    ops.namespace = "ops-blue".into();
    core.create_container(ops.clone(), container("c2", "app"))
        .await
        .unwrap();
    // The handler rules admit containers at create, as an admission policy does: containers
    // found at synchronization (created before, under whatever policy) keep their hooks.
    core.synchronize(
        vec![p.clone()],
        vec![container("c3", "app"), container("c0", "app")],
    )
    .await;
    assert_eq!(core.status().await.tracked, 2, "c0 and c3");
    // A runtime config without a policy goes back to the permissive default.
    core.configure(RuntimeInfo {
        config: "log_level = \"info\"".into(),
        ..RuntimeInfo::default()
    })
    .await;
    core.create_container(p, container("c4", "app"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dropped_core_answers_the_gate_instead_of_hanging() {
    let fake = Arc::new(Fake::default());
    let (core, inbox) = start(&fake);
    drop(core);
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        inbox.stop_requested("c1", libc::SIGTERM),
    )
    .await
    .expect("answered");
    assert!(matches!(
        outcome,
        PreStopOutcome::Failed(_) | PreStopOutcome::Done
    ));
}

#[test]
fn hook_concurrency_follows_the_config() {
    // Checked on the machine itself: the permits are its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake: Arc<dyn Effects> = Arc::new(Fake::default());
        let (inbox, _inlet) = channel();
        let mut m = machine::Machine::new(
            Config::default(),
            false,
            fake,
            Arc::new(Ops::new()),
            inbox,
            Default::default(),
            Default::default(),
        );
        assert_eq!(m.free_permits(), 64);
        let configure = |m: &mut machine::Machine, n: usize| {
            let (done, _) = tokio::sync::oneshot::channel();
            m.handle(Input::Configure {
                info: RuntimeInfo {
                    config: format!("max_concurrent_hooks = {n}"),
                    ..RuntimeInfo::default()
                },
                done,
            });
        };
        configure(&mut m, 2);
        assert_eq!(m.free_permits(), 2);
        // Shrinking while hooks hold permits takes them back as the hooks end.
        let held = m.take_permits(2).await;
        configure(&mut m, 1);
        drop(held);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(m.free_permits(), 1);
        configure(&mut m, 8);
        assert_eq!(m.free_permits(), 8);
    });
}

#[tokio::test]
async fn metrics_follow_hooks_gates_and_requests() {
    let fake = Arc::new(Fake {
        ungated: true,
        ..Fake::default()
    });
    let (core, _, ops) = start_with_ops(&fake);
    let p = pod(&[
        (
            "poststart.lifecycle.nri.io/pod",
            r#"{"sleep":{"seconds":0}}"#,
        ),
        ("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":0}}"#),
    ]);
    let c = container("c1", "app");
    run_container(&core, &p, &c).await;
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    settle(&core).await;
    let text = ops.encode();
    for line in [
        "nri_lifecycle_hooks_total{phase=\"postStart\",handler=\"sleep\",result=\"succeeded\"} 1",
        "nri_lifecycle_hooks_total{phase=\"preStop\",handler=\"sleep\",result=\"succeeded\"} 1",
        "nri_lifecycle_gate_failopen_total{reason=\"ungated\"} 1",
        "nri_lifecycle_gated_containers 0",
        "nri_lifecycle_nri_requests_total{event=\"CreateContainer\"} 1",
        "nri_lifecycle_nri_requests_total{event=\"StopContainer\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(!ops.ready());
    core.configure(RuntimeInfo::default()).await;
    core.synchronize(vec![], vec![]).await;
    assert!(ops.ready());
    core.shutdown().await;
    assert!(!ops.ready());
}

#[tokio::test]
async fn the_record_follows_create_gate_start_and_pre_stop() {
    let fake = Arc::new(Fake::default());
    let (core, inbox) = start(&fake);
    let p = pod(&[("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":1}}"#)]);
    let c = container("c1", "app");
    core.create_container(p.clone(), c.clone()).await.unwrap();
    let saved = || fake.saved.lock().unwrap().clone();
    // Written before the create is answered.
    assert_eq!(saved().len(), 1);
    assert_eq!(saved()[0].gate, RecordedGate::Injected);
    assert_eq!((saved()[0].pid, saved()[0].pre_stop.clone()), (0, None));
    core.event(event(EventKind::PostCreateContainer, &p, &c))
        .await
        .unwrap();
    assert_eq!(saved().last().unwrap().gate, RecordedGate::Gated);
    core.event(event(EventKind::PostStartContainer, &p, &c))
        .await
        .unwrap();
    let last = saved().last().unwrap().clone();
    assert_eq!((last.pid, last.start_time), (std::process::id(), 77));
    assert_eq!(last.pod_name, "web");
    assert_eq!(
        inbox.stop_requested("c1", libc::SIGTERM).await,
        PreStopOutcome::Done
    );
    let ran: Vec<_> = saved()
        .into_iter()
        .filter_map(|r| Some((r.pre_stop?, r.version)))
        .collect();
    // "Running" is on disk before the hook starts, the outcome after it ended.
    assert_eq!(
        ran,
        vec![(RecordedPreStop::Running, 0), (RecordedPreStop::Done, 1)]
    );
    // A container without a PreStop hook has no record.
    let q = pod(&[(
        "poststart.lifecycle.nri.io/pod",
        r#"{"sleep":{"seconds":0}}"#,
    )]);
    let before = saved().len();
    run_container(&core, &q, &container("c2", "app")).await;
    assert_eq!(saved().len(), before);
}

/// A record a previous plugin process wrote, for a running gated container "r1".
fn recorded(p: &Pod, pre_stop: Option<RecordedPreStop>) -> Recovered {
    let mut c = container("r1", "app");
    c.annotations.insert("gated".into(), "1".into());
    let mut record = GateRecord::new(p, &c);
    record.gate = RecordedGate::Gated;
    record.pid = std::process::id();
    record.start_time = 77;
    record.pre_stop = pre_stop;
    Recovered {
        record,
        init: Some(Arc::new(PidFd::open(std::process::id()).unwrap())),
    }
}

#[tokio::test]
async fn a_recovered_container_is_served_before_synchronize_and_its_pre_stop_runs_once() {
    let fake = Arc::new(Fake::default());
    let (core, inbox) = start(&fake);
    let p = pod(&[("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":1}}"#)]);
    fake.recovered.lock().unwrap().push(recorded(&p, None));
    core.configure(RuntimeInfo::default()).await;
    assert_eq!(
        core.status().await,
        Status {
            tracked: 1,
            gated: 1
        }
    );
    assert_eq!(
        inbox.stop_requested("r1", libc::SIGTERM).await,
        PreStopOutcome::Done
    );
    assert_eq!(fake.count("run preStop r1"), 1);
    // The runtime still reports it running (the app shuts down): Synchronize keeps the
    // PreStop that ran, and a later stop request gets its outcome without a second run.
    let mut c = container("r1", "app");
    c.pid = std::process::id();
    c.state = ContainerState::Running;
    c.annotations.insert("gated".into(), "1".into());
    core.synchronize(vec![p.clone()], vec![c.clone()]).await;
    assert_eq!(
        inbox.stop_requested("r1", libc::SIGTERM).await,
        PreStopOutcome::Done
    );
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    settle(&core).await;
    assert_eq!(fake.count("run preStop r1"), 1, "{:?}", fake.calls());
    // The init recovered with the record is kept, not opened again.
    assert_eq!(fake.count("hold r1"), 0);
}

#[tokio::test]
async fn a_pre_stop_that_ran_before_the_restart_is_not_run_again() {
    let fake = Arc::new(Fake::default());
    let (core, inbox) = start(&fake);
    let p = pod(&[("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":1}}"#)]);
    fake.recovered
        .lock()
        .unwrap()
        .push(recorded(&p, Some(RecordedPreStop::Running)));
    core.configure(RuntimeInfo::default()).await;
    assert!(matches!(
        inbox.stop_requested("r1", libc::SIGTERM).await,
        PreStopOutcome::Failed(_)
    ));
    assert_eq!(fake.count("run preStop"), 0);
    // The runtime does not list it: its record and socket go.
    core.synchronize(vec![p], vec![]).await;
    assert_eq!(core.status().await, Status::default());
    assert_eq!(fake.count("forget r1"), 1);
}

#[tokio::test]
async fn synchronize_names_the_containers_whose_pre_stop_cannot_hold_the_stop() {
    let fake = Arc::new(Fake::default());
    let (core, inbox, ops) = start_with_ops(&fake);
    let p = pod(&[("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":0}}"#)]);
    let gate_args = crate::gate::gate_args(
        &["/app".to_string()],
        &GateParams::new(Duration::from_secs(5), None, &container("x", "x")),
    );
    let with = |id: &str, state, marked: bool, args: &[String]| {
        let mut c = container(id, "app");
        c.state = state;
        if marked {
            c.annotations.insert("gated".into(), "1".into());
        }
        c.process.args = args.to_vec();
        c
    };
    let plain = vec!["/app".to_string()];
    let interrupted = with("i1", ContainerState::Running, true, &plain);
    let unmarked = with("u1", ContainerState::Running, false, &plain);
    let gated = with("g1", ContainerState::Running, true, &gate_args);
    let stopped = with("s1", ContainerState::Stopped, false, &plain);
    core.synchronize(
        vec![p.clone()],
        vec![
            interrupted.clone(),
            unmarked.clone(),
            gated.clone(),
            stopped.clone(),
        ],
    )
    .await;
    let text = ops.encode();
    for line in [
        "nri_lifecycle_gate_failopen_total{reason=\"ungated\"} 1",
        "nri_lifecycle_gate_failopen_total{reason=\"not_injected\"} 1",
        "nri_lifecycle_gated_containers 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // Only the really gated one is recorded (the interrupted one keeps a record too: it
    // carries the gate's marker, and its best-effort PreStop must not run twice).
    let saved: Vec<String> = fake
        .saved
        .lock()
        .unwrap()
        .iter()
        .map(|r| format!("{} {:?}", r.id, r.gate))
        .collect();
    assert!(saved.contains(&"g1 Gated".to_string()), "{saved:?}");
    assert!(saved.contains(&"i1 Ungated".to_string()), "{saved:?}");
    assert!(!saved.iter().any(|s| s.starts_with("u1")), "{saved:?}");
    // Ungated ones run PreStop best-effort at the stop; the gated one at the gate's request.
    for c in [&interrupted, &unmarked] {
        core.event(event(EventKind::StopContainer, &p, c))
            .await
            .unwrap();
    }
    assert_eq!(
        inbox.stop_requested("g1", libc::SIGTERM).await,
        PreStopOutcome::Done
    );
    settle(&core).await;
    for id in ["i1", "u1", "g1"] {
        assert_eq!(
            fake.count(&format!("run preStop {id} ")),
            1,
            "{:?}",
            fake.calls()
        );
    }
    assert_eq!(fake.count("run preStop s1"), 0);
    // A second Synchronize (a reconnection) neither counts nor warns again.
    core.synchronize(vec![p.clone()], vec![interrupted, unmarked, gated, stopped])
        .await;
    assert!(ops
        .encode()
        .contains("nri_lifecycle_gate_failopen_total{reason=\"ungated\"} 1"));
}

#[tokio::test]
async fn synchronize_believes_the_running_process_over_the_reported_args() {
    let fake = Arc::new(Fake::default());
    let (core, _inbox, ops) = start_with_ops(&fake);
    let p = pod(&[("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":0}}"#)]);
    // The runtime reports gated args (a stored-spec rewrite landed), but the task was
    // started from the spec before it: the init is the app.
    let mut c = container("r1", "app");
    c.state = ContainerState::Running;
    c.annotations.insert("gated".into(), "1".into());
    c.annotations.insert("runs-gate".into(), "false".into());
    c.process.args = crate::gate::gate_args(
        &["/app".to_string()],
        &GateParams::new(Duration::from_secs(5), None, &container("x", "x")),
    );
    core.synchronize(vec![p.clone()], vec![c.clone()]).await;
    let text = ops.encode();
    for line in [
        "nri_lifecycle_gate_failopen_total{reason=\"ungated\"} 1",
        "nri_lifecycle_gated_containers 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    // Its PreStop runs best-effort at the stop, as for any ungated container.
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    settle(&core).await;
    assert_eq!(fake.count("run preStop r1 "), 1, "{:?}", fake.calls());
}

#[tokio::test]
async fn a_container_started_unseen_is_tracked_and_named_when_its_pre_stop_cannot_hold() {
    let fake = Arc::new(Fake::default());
    let (core, _, ops) = start_with_ops(&fake);
    let p = pod(&[
        ("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":0}}"#),
        (
            "poststart.lifecycle.nri.io/pod",
            r#"{"sleep":{"seconds":0}}"#,
        ),
    ]);
    let mut c = container("late", "app");
    c.state = ContainerState::Running;
    c.process.args = vec!["/app".into()];
    // No create, no Synchronize listing it: the runtime created it while no plugin served it.
    core.event(event(EventKind::PostStartContainer, &p, &c))
        .await
        .unwrap();
    settle(&core).await;
    assert_eq!(core.status().await.tracked, 1);
    assert!(ops
        .encode()
        .contains("nri_lifecycle_gate_failopen_total{reason=\"not_injected\"} 1"));
    assert_eq!(fake.count("run postStart late"), 1, "{:?}", fake.calls());
    // Its PreStop runs best-effort at the stop.
    core.event(event(EventKind::StopContainer, &p, &c))
        .await
        .unwrap();
    settle(&core).await;
    assert_eq!(fake.count("run preStop late"), 1, "{:?}", fake.calls());
    // A container without hooks stays untracked.
    let plain = container("plain", "app");
    core.event(event(EventKind::PostStartContainer, &pod(&[]), &plain))
        .await
        .unwrap();
    assert_eq!(core.status().await.tracked, 1);
}
