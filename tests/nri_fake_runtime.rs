//! The plugin's protocol edge against the in-process fake runtime, in both NRI generations.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use nri_lifecycle::annotations::AnnotationError;
use nri_lifecycle::core;
use nri_lifecycle::model::{Adjustment, Container, Event, EventKind, Pod, RuntimeInfo};
use nri_lifecycle::nri::{self, Handler, Registration};
use nri_test_support::fake_runtime::{
    refusal, wire_container, wire_pod, FakeError, FakeRuntime, Generation,
};

const BAD_KEY: &str = "poststart.lifecycle.nri.io/container.app";
const BAD_PROBLEM: &str = "field \"command\": must not be empty";
const BAD_MESSAGE: &str =
    "annotation \"poststart.lifecycle.nri.io/container.app\": field \"command\": must not be empty";

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Configure(RuntimeInfo),
    Synchronize(Vec<Pod>, Vec<Container>),
    Create(Pod, Container),
    Event(Event),
    Shutdown,
}

/// A handler that records every call; refuses creates carrying `BAD_KEY`, and fails events for
/// containers named "fail".
struct Recorder {
    wanted: Vec<EventKind>,
    calls: Mutex<Vec<Call>>,
}

impl Recorder {
    fn new(wanted: &[EventKind]) -> Arc<Recorder> {
        Arc::new(Recorder {
            wanted: wanted.to_vec(),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }

    fn events(&self) -> Vec<Event> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn shutdowns(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Shutdown))
            .count()
    }
}

#[async_trait]
impl Handler for Recorder {
    fn events(&self) -> Vec<EventKind> {
        self.wanted.clone()
    }

    async fn configure(&self, info: RuntimeInfo) {
        self.record(Call::Configure(info));
    }

    async fn synchronize(&self, pods: Vec<Pod>, containers: Vec<Container>) {
        self.record(Call::Synchronize(pods, containers));
    }

    async fn create_container(
        &self,
        pod: Pod,
        container: Container,
    ) -> Result<Adjustment, core::Error> {
        let bad = container.annotations.contains_key(BAD_KEY);
        self.record(Call::Create(pod, container.clone()));
        if bad {
            return Err(AnnotationError {
                key: BAD_KEY.into(),
                problem: BAD_PROBLEM.into(),
            }
            .into());
        }
        let mut adj = Adjustment {
            args: Some(vec!["/.nri-lifecycle/gate".into(), "--".into()]),
            ..Default::default()
        };
        adj.annotations
            .insert("lifecycle.nri.io/seen".into(), container.id);
        Ok(adj)
    }

    async fn event(&self, event: Event) -> Result<(), core::Error> {
        let fail = event.container.name == "fail";
        self.record(Call::Event(event));
        if fail {
            return Err(core::Error::ShuttingDown);
        }
        Ok(())
    }

    async fn shutdown(&self) {
        self.record(Call::Shutdown);
    }
}

fn registration() -> Registration {
    Registration {
        name: "lifecycle".into(),
        index: "10".into(),
    }
}

/// A fake runtime connected to a plugin served on a socketpair, registered and configured.
async fn connected(
    generation: Generation,
    handler: Arc<Recorder>,
) -> (
    FakeRuntime,
    tokio::task::JoinHandle<Result<(), nri::NriError>>,
) {
    let (fake, plugin_end) = FakeRuntime::pair(generation).await.unwrap();
    let h: Arc<dyn Handler> = handler;
    let plugin = tokio::spawn(nri::serve(plugin_end, registration(), h));
    fake.registered().await.unwrap();
    let req = fake.default_configure();
    fake.configure(req).await.unwrap();
    (fake, plugin)
}

#[tokio::test]
async fn registers_with_name_and_index() {
    for generation in [Generation::StateChangeOnly, Generation::V012] {
        let (fake, plugin_end) = FakeRuntime::pair(generation).await.unwrap();
        let handler: Arc<dyn Handler> = Recorder::new(&EventKind::ALL);
        let plugin = tokio::spawn(nri::serve(plugin_end, registration(), handler));
        let reg = fake.registered().await.unwrap();
        assert_eq!(reg.name, "lifecycle");
        assert_eq!(reg.index, "10");
        assert_eq!(fake.registrations().len(), 1);
        drop(fake);
        plugin.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn subscription_mask_has_one_bit_per_wanted_event() {
    let wanted = [
        EventKind::CreateContainer,    // event 4 → bit 3
        EventKind::PostStartContainer, // event 7 → bit 6
        EventKind::StopContainer,      // event 10 → bit 9
        EventKind::RemoveContainer,    // event 11 → bit 10
    ];
    let handler = Recorder::new(&wanted);
    let (fake, plugin_end) = FakeRuntime::pair(Generation::StateChangeOnly)
        .await
        .unwrap();
    let h: Arc<dyn Handler> = handler.clone();
    let plugin = tokio::spawn(nri::serve(plugin_end, registration(), h));
    fake.registered().await.unwrap();

    // Like containerd 1.7: no timeouts, no NRI version.
    let mask = fake
        .configure(nri::wire::api::ConfigureRequest {
            runtime_name: "containerd".into(),
            runtime_version: "v1.7.24".into(),
            config: "{\"x\":1}".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(mask, (1 << 3) | (1 << 6) | (1 << 9) | (1 << 10));
    assert!(fake.subscribed(EventKind::PostStartContainer));
    assert!(!fake.subscribed(EventKind::StartContainer));

    assert_eq!(
        handler.calls(),
        vec![Call::Configure(RuntimeInfo {
            runtime_name: "containerd".into(),
            runtime_version: "v1.7.24".into(),
            nri_version: String::new(),
            request_timeout_ms: 2_000,
            registration_timeout_ms: 5_000,
            config: "{\"x\":1}".into(),
            // The fake runtime is this process, at the other end of a socketpair.
            runtime_pid: std::process::id(),
        })]
    );

    // An event we did not subscribe to is answered but not passed on.
    let pod = wire_pod("p1", "web", "default");
    let ctr = wire_container("c1", "p1", "app", &[]);
    fake.event(EventKind::StartContainer, &pod, &ctr)
        .await
        .unwrap();
    assert!(handler.events().is_empty());

    drop(fake);
    plugin.await.unwrap().unwrap();
}

#[tokio::test]
async fn configure_carries_v012_fields() {
    let handler = Recorder::new(&EventKind::ALL);
    let (fake, plugin) = connected(Generation::V012, handler.clone()).await;
    let Some(Call::Configure(info)) = handler.calls().first().cloned() else {
        panic!("no configure: {:?}", handler.calls());
    };
    assert_eq!(info.nri_version, "v0.12.2");
    assert_eq!(info.request_timeout_ms, 2_000);
    assert_eq!(info.runtime_name, "fake-runtime");
    drop(fake);
    plugin.await.unwrap().unwrap();
}

#[tokio::test]
async fn synchronize_joins_all_pages_before_the_handler_sees_them() {
    let handler = Recorder::new(&EventKind::ALL);
    let (fake, plugin) = connected(Generation::V012, handler.clone()).await;

    let pods: Vec<_> = (0..5)
        .map(|i| wire_pod(&format!("p{i}"), &format!("pod{i}"), "default"))
        .collect();
    let containers: Vec<_> = (0..7)
        .map(|i| wire_container(&format!("c{i}"), &format!("p{}", i % 5), "app", &[]))
        .collect();
    let replies = fake.synchronize(&pods, &containers, 2).await.unwrap();
    let more: Vec<bool> = replies.iter().map(|r| r.more).collect();
    assert_eq!(more, vec![true, true, true, false]);

    let syncs: Vec<_> = handler
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Synchronize(p, c) => Some((p, c)),
            _ => None,
        })
        .collect();
    assert_eq!(syncs.len(), 1, "handler must see one joined synchronize");
    let (p, c) = &syncs[0];
    let pod_ids: Vec<_> = p.iter().map(|p| p.id.as_str()).collect();
    let ctr_ids: Vec<_> = c.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(pod_ids, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(ctr_ids, ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
    assert_eq!(c[6].pod_id, "p1");

    // A runtime that does not page (1.7) sends everything at once.
    fake.synchronize(&pods, &containers, 100).await.unwrap();
    let count = handler
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Synchronize(..)))
        .count();
    assert_eq!(count, 2);

    drop(fake);
    plugin.await.unwrap().unwrap();
}

#[tokio::test]
async fn every_event_is_answered_in_both_generations() {
    for generation in [Generation::StateChangeOnly, Generation::V012] {
        let handler = Recorder::new(&EventKind::ALL);
        let (fake, plugin) = connected(generation, handler.clone()).await;
        let mut pod = wire_pod("p1", "web", "default");
        pod.ips = vec!["10.88.0.5".into()];
        let mut ctr = wire_container("c1", "p1", "app", &[("a", "b")]);
        ctr.pid = 4242;

        let mut routes = Vec::new();
        for kind in EventKind::ALL {
            routes.push(fake.event(kind, &pod, &ctr).await.unwrap());
        }
        let expected: Vec<&str> = EventKind::ALL
            .iter()
            .map(|&k| match (generation, k) {
                (_, EventKind::CreateContainer) => "CreateContainer",
                (_, EventKind::UpdateContainer) => "UpdateContainer",
                (_, EventKind::StopContainer) => "StopContainer",
                (Generation::StateChangeOnly, _) => "StateChange",
                (Generation::V012, k) => k.as_str(),
            })
            .collect();
        assert_eq!(routes, expected, "{generation:?}");

        // Create goes to create_container; everything else is one Event, whichever RPC.
        let events = handler.events();
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        let want: Vec<_> = EventKind::ALL
            .iter()
            .copied()
            .filter(|&k| k != EventKind::CreateContainer)
            .collect();
        assert_eq!(kinds, want, "{generation:?}");
        for e in &events {
            assert_eq!(e.pod.id, "p1");
            assert_eq!(e.pod.ips.len(), 1);
            match e.kind {
                EventKind::RunPodSandbox
                | EventKind::StopPodSandbox
                | EventKind::RemovePodSandbox => assert_eq!(e.container, Container::default()),
                _ => {
                    assert_eq!(e.container.id, "c1");
                    assert_eq!(e.container.pid, 4242);
                    assert_eq!(
                        e.container.annotations.get("a").map(String::as_str),
                        Some("b")
                    );
                }
            }
        }

        // Requests we never subscribe to are still answered sensibly.
        let verdict = fake.validate_adjustment(&pod, &ctr).await.unwrap();
        assert!(!verdict.reject);
        fake.update_pod_sandbox(&pod).await.unwrap();

        // A failing event reaches the runtime as an error with the handler's words and the
        // status code of its kind.
        let failing = wire_container("c2", "p1", "fail", &[]);
        let err = fake
            .event(EventKind::PostStartContainer, &pod, &failing)
            .await
            .unwrap_err();
        assert_eq!(
            refusal(&err),
            Some((
                ttrpc::Code::UNAVAILABLE,
                "the plugin is shutting down".to_string()
            ))
        );

        drop(fake);
        plugin.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn invalid_create_is_refused_with_the_handlers_message() {
    for generation in [Generation::StateChangeOnly, Generation::V012] {
        let handler = Recorder::new(&EventKind::ALL);
        let (fake, plugin) = connected(generation, handler.clone()).await;
        let pod = wire_pod("p1", "web", "default");

        let bad = wire_container(
            "c1",
            "p1",
            "app",
            &[(BAD_KEY, "{\"exec\":{\"command\":[]}}")],
        );
        let err = fake.create_container(&pod, &bad).await.unwrap_err();
        assert!(matches!(
            err,
            FakeError::Call {
                call: "CreateContainer",
                ..
            }
        ));
        assert_eq!(
            refusal(&err),
            Some((ttrpc::Code::INVALID_ARGUMENT, BAD_MESSAGE.to_string()))
        );

        let good = wire_container("c2", "p1", "app", &[]);
        let reply = fake.create_container(&pod, &good).await.unwrap();
        let adjust = reply.adjust.into_option().expect("an adjustment");
        assert_eq!(
            adjust
                .annotations
                .get("lifecycle.nri.io/seen")
                .map(String::as_str),
            Some("c2")
        );
        assert_eq!(adjust.args, ["/.nri-lifecycle/gate", "--"]);

        drop(fake);
        plugin.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn shutdown_from_the_runtime_ends_serve_cleanly() {
    let handler = Recorder::new(&EventKind::ALL);
    let (fake, plugin) = connected(Generation::StateChangeOnly, handler.clone()).await;
    fake.shutdown().await.unwrap();
    // The runtime closes its end after Shutdown, as containerd does.
    drop(fake);
    plugin.await.unwrap().unwrap();
    assert_eq!(handler.shutdowns(), 1);
}

#[tokio::test]
async fn runtime_closing_the_connection_ends_serve_cleanly() {
    let handler = Recorder::new(&EventKind::ALL);
    let (fake, plugin) = connected(Generation::V012, handler.clone()).await;
    drop(fake);
    plugin.await.unwrap().unwrap();
    assert_eq!(handler.shutdowns(), 1);
}

#[tokio::test]
async fn plugin_ending_is_seen_by_the_runtime() {
    let handler = Recorder::new(&EventKind::ALL);
    let (fake, plugin) = connected(Generation::V012, handler.clone()).await;
    plugin.abort();
    assert!(plugin.await.unwrap_err().is_cancelled());
    assert_eq!(fake.closed().await, Ok(()));
}

#[tokio::test]
async fn external_mode_reconnects_and_registers_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nri.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();

    let handler = Recorder::new(&EventKind::ALL);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let h: Arc<dyn Handler> = handler.clone();
    let plugin_path = path.clone();
    let plugin = tokio::spawn(async move {
        nri::run_external(&plugin_path, registration(), h, async {
            let _ = stop_rx.await;
        })
        .await
    });

    // First runtime: register, configure, an event, then the runtime goes away.
    let fake = FakeRuntime::accept(&listener, Generation::StateChangeOnly)
        .await
        .unwrap();
    assert_eq!(fake.registered().await.unwrap().name, "lifecycle");
    let req = fake.default_configure();
    fake.configure(req).await.unwrap();
    drop(fake);
    drop(listener);
    std::fs::remove_file(&path).unwrap();

    // A new runtime at the same path: the plugin finds it and registers again.
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let fake = FakeRuntime::accept(&listener, Generation::V012)
        .await
        .unwrap();
    let reg = fake.registered().await.unwrap();
    assert_eq!((reg.name.as_str(), reg.index.as_str()), ("lifecycle", "10"));
    let req = fake.default_configure();
    fake.configure(req).await.unwrap();
    let pod = wire_pod("p1", "web", "default");
    let ctr = wire_container("c1", "p1", "app", &[]);
    assert_eq!(
        fake.event(EventKind::PostStartContainer, &pod, &ctr)
            .await
            .unwrap(),
        "PostStartContainer"
    );

    let configures = handler
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Configure(_)))
        .count();
    assert_eq!(configures, 2);
    // The lost first connection was reported to the handler.
    assert_eq!(handler.shutdowns(), 1);

    stop_tx.send(()).unwrap();
    plugin.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_bad_registration_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let handler: Arc<dyn Handler> = Recorder::new(&EventKind::ALL);
    let bad = Registration {
        name: "lifecycle".into(),
        index: "1".into(),
    };
    let err = nri::run_external(
        &dir.path().join("none.sock"),
        bad,
        handler,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("index \"1\""), "{err}");
}

/// However long the runtime was away, the plugin tries again at least once a second, so a
/// runtime that comes back (or a connection the runtime dropped) is served again within a
/// second. Virtual time: the waits are the plugin's own, not the machine's.
#[tokio::test(start_paused = true)]
async fn reconnection_waits_at_most_a_second_however_long_the_runtime_was_away() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nri.sock");
    let handler = Recorder::new(&EventKind::ALL);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let h: Arc<dyn Handler> = handler.clone();
    let plugin_path = path.clone();
    let plugin = tokio::spawn(async move {
        nri::run_external(&plugin_path, registration(), h, async {
            let _ = stop_rx.await;
        })
        .await
    });
    // Away long enough for an uncapped doubling backoff to wait several seconds.
    tokio::time::sleep(std::time::Duration::from_millis(6500)).await;
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let back = tokio::time::Instant::now();
    let (conn, _) = listener.accept().await.unwrap();
    let waited = back.elapsed();
    assert!(
        waited <= std::time::Duration::from_secs(1),
        "the plugin came back {waited:?} after the runtime"
    );
    drop(conn);
    stop_tx.send(()).unwrap();
    plugin.await.unwrap().unwrap();
}
