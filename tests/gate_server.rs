//! The plugin side of the gate: per-container sockets, the peer check, garbage and floods,
//! one PreStop per stop (the gate servers feed the real event core), removal and resync. The
//! peer check test needs root (a PID namespace).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::write_gate;
use nri_lifecycle::annotations::HookSpec;
use nri_lifecycle::config::Config;
use nri_lifecycle::core::{self, Core, EffectError, Effects, GateStatus};
use nri_lifecycle::gate::{protocol, GateParams, GateServers, GATED_ANNOTATION};
use nri_lifecycle::hooks;
use nri_lifecycle::model::{Adjustment, Container, ContainerState, Event, EventKind, Pod};
use nri_lifecycle::nri::Handler;
use nri_lifecycle::ns::pidfd::PidFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// Upper bound for any awaited event; reaching it fails the test.
const EVENT_BOUND: Duration = Duration::from_secs(30);

/// The outside world of the core, but for the gate servers (which are real): hooks are
/// counted and end with a scripted outcome, when released if `hold`.
struct World {
    calls: Arc<AtomicUsize>,
    release: Arc<Notify>,
    hold: bool,
    outcome: hooks::Outcome,
}

#[async_trait]
impl Effects for World {
    fn configure(&self, _: &Config, _: u32) {}
    fn hold_init(&self, _: &Container) -> Result<Arc<PidFd>, EffectError> {
        Ok(Arc::new(
            PidFd::open(std::process::id()).expect("own pidfd"),
        ))
    }
    fn bundle(&self, _: &str) -> Option<PathBuf> {
        None
    }
    async fn run_hook(&self, _: &HookSpec, t: &hooks::Target, _: &hooks::Limits) -> hooks::Outcome {
        assert_eq!(t.container_id, "c1");
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.hold {
            self.release.notified().await;
        }
        self.outcome.clone()
    }
    fn signal(&self, _: &str, _: &PidFd, _: i32) -> Result<(), EffectError> {
        Ok(())
    }
    async fn exited(&self, _: &PidFd) {}
    fn write_termination_message(&self, _: &Container, _: &str) -> Result<(), EffectError> {
        Ok(())
    }
    fn gate_adjustment(&self, _: &Container, _: &GateParams) -> Result<Adjustment, EffectError> {
        Ok(Adjustment::default())
    }
    async fn gate_post_create(&self, _: &Container, _: &GateParams) -> GateStatus {
        GateStatus::Gated
    }
    fn gate_started(&self, _: &Container, _: &PidFd) {}
    fn is_gated(&self, _: &Container) -> bool {
        false
    }
    fn init_runs_gate(&self, _: &Container) -> Option<bool> {
        None
    }
    fn gate_resync(&self, _: &[Container]) {}
    fn forget(&self, _: &str) {}
}

struct Fixture {
    dir: tempfile::TempDir,
    servers: GateServers,
    calls: Arc<AtomicUsize>,
    release: Arc<Notify>,
    _core: Core,
}

/// Gate servers feeding a real core that tracks one running container "c1" with a PreStop
/// hook; its hook counts its calls and ends with `outcome` (when released, if `hold`).
async fn fixture(hold: bool, outcome: hooks::Outcome) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let world = Arc::new(World {
        calls: Arc::clone(&calls),
        release: Arc::clone(&release),
        hold,
        outcome,
    });
    let (inbox, inlet) = core::channel();
    let servers = GateServers::new(dir.path().join("containers"), inbox.clone());
    let ops = Arc::new(nri_lifecycle::ops::Ops::new());
    let core = Core::start(Config::default(), false, world, ops, (inbox, inlet));
    let pod = Pod {
        id: "p1".into(),
        annotations: [(
            "prestop.lifecycle.nri.io/pod".to_string(),
            r#"{"sleep":{"seconds":1}}"#.to_string(),
        )]
        .into(),
        ..Pod::default()
    };
    let c1 = Container {
        id: "c1".into(),
        pod_id: "p1".into(),
        name: "app".into(),
        pid: std::process::id(),
        ..Container::default()
    };
    core.create_container(pod.clone(), c1.clone())
        .await
        .unwrap();
    for kind in [
        EventKind::PostCreateContainer,
        EventKind::PostStartContainer,
    ] {
        core.event(Event {
            kind,
            pod: pod.clone(),
            container: c1.clone(),
        })
        .await
        .unwrap();
    }
    Fixture {
        dir,
        servers,
        calls,
        release,
        _core: core,
    }
}

fn done() -> hooks::Outcome {
    hooks::Outcome::Succeeded {
        output: String::new(),
    }
}

async fn stop(sock: &Path, signal: u32) -> (u8, String) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(&protocol::encode_stop(signal)).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(EVENT_BOUND, s.read_to_end(&mut buf))
        .await
        .expect("no answer from the gate server")
        .unwrap();
    let mut head = [0u8; protocol::HEADER_LEN];
    head.copy_from_slice(&buf[..protocol::HEADER_LEN]);
    let h = protocol::decode_header(&head).unwrap();
    assert_eq!(h.kind, protocol::MSG_REPLY);
    let (status, reason) = protocol::decode_reply(&buf[protocol::HEADER_LEN..]).unwrap();
    (status, String::from_utf8(reason.to_vec()).unwrap())
}

#[tokio::test]
async fn stop_from_the_container_runs_prestop_and_answers() {
    let f = fixture(
        false,
        hooks::Outcome::Failed {
            reason: "exit status 3".into(),
        },
    )
    .await;
    let dir = f.servers.open("c1").unwrap();
    let sock = dir.join(protocol::SOCKET_NAME);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    // This test process plays the container's init.
    f.servers.set_init_pid("c1", std::process::id()).unwrap();
    let (status, reason) = stop(&sock, 15).await;
    assert_eq!(status, protocol::STATUS_FAILED);
    assert_eq!(reason, "exit status 3");
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn peers_are_refused_until_the_init_is_known() {
    let f = fixture(false, done()).await;
    let dir = f.servers.open("c1").unwrap();
    let (status, _) = stop(&dir.join(protocol::SOCKET_NAME), 15).await;
    assert_eq!(status, protocol::STATUS_REFUSED);
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn duplicate_stops_run_prestop_once() {
    let f = fixture(true, done()).await;
    let dir = f.servers.open("c1").unwrap();
    f.servers.set_init_pid("c1", std::process::id()).unwrap();
    let sock = dir.join(protocol::SOCKET_NAME);
    let a = tokio::spawn({
        let sock = sock.clone();
        async move { stop(&sock, 15).await }
    });
    let b = tokio::spawn({
        let sock = sock.clone();
        async move { stop(&sock, 2).await }
    });
    // Wait until the hook is running, then let it finish.
    while f.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    f.release.notify_one();
    assert_eq!(a.await.unwrap().0, protocol::STATUS_DONE);
    assert_eq!(b.await.unwrap().0, protocol::STATUS_DONE);
    // Later asks get the same outcome without a new run.
    assert_eq!(stop(&sock, 15).await.0, protocol::STATUS_DONE);
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn garbage_and_floods_cost_nothing() {
    let f = fixture(
        false,
        hooks::Outcome::TimedOut {
            output: String::new(),
        },
    )
    .await;
    let dir = f.servers.open("c1").unwrap();
    f.servers.set_init_pid("c1", std::process::id()).unwrap();
    let sock = dir.join(protocol::SOCKET_NAME);
    for i in 0..200u32 {
        let mut s = UnixStream::connect(&sock).await.unwrap();
        let junk: &[u8] = match i % 4 {
            0 => b"GET / HTTP/1.1\r\n\r\n",
            1 => b"NRLG\x01\x01\xff\xff",           // too long
            2 => b"NRLG\x07\x01\x04\x00\x0f\0\0\0", // unknown version
            _ => b"NRLG\x01\x02\x00\x00",           // reserved type
        };
        let _ = s.write_all(junk).await;
        drop(s);
    }
    // A version-2 request gets a version-1 UNSUPPORTED answer.
    let mut s = UnixStream::connect(&sock).await.unwrap();
    s.write_all(b"NRLG\x02\x01\x04\x00\x0f\0\0\0")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(EVENT_BOUND, s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..6], b"NRLG\x01\x81");
    assert_eq!(buf[protocol::HEADER_LEN], protocol::STATUS_UNSUPPORTED);
    // None of it ran the hook, and a real stop still works.
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
    assert_eq!(stop(&sock, 15).await.0, protocol::STATUS_TIMED_OUT);
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn remove_and_resync_manage_directories() {
    let f = fixture(false, done()).await;
    let base = f.dir.path().join("containers");
    f.servers.open("gone").unwrap();
    assert!(base.join("gone").join(protocol::SOCKET_NAME).exists());
    f.servers.remove("gone");
    assert!(!base.join("gone").exists());

    // A plugin restart: a fresh server set finds a stale directory and a running container.
    std::fs::create_dir_all(base.join("stale")).unwrap();
    let mut c1 = Container {
        id: "c1".into(),
        state: ContainerState::Running,
        pid: std::process::id(),
        ..Default::default()
    };
    c1.annotations
        .insert(GATED_ANNOTATION.into(), protocol::VERSION.to_string());
    let plain = Container {
        id: "plain".into(),
        state: ContainerState::Running,
        ..Default::default()
    };
    let failed = f.servers.resync(&[c1, plain]);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(!base.join("stale").exists());
    assert!(!base.join("plain").exists());
    let sock = base.join("c1").join(protocol::SOCKET_NAME);
    assert_eq!(stop(&sock, 15).await.0, protocol::STATUS_DONE);

    assert!(f.servers.open("../escape").is_err());
    assert!(f.servers.open(".hidden").is_err());
}

#[tokio::test]
async fn a_peer_in_another_pid_namespace_is_refused() {
    if !nri_harness::require_root("a_peer_in_another_pid_namespace_is_refused") {
        return;
    }
    let f = fixture(false, done()).await;
    let dir = f.servers.open("c1").unwrap();
    f.servers.set_init_pid("c1", std::process::id()).unwrap();
    let sock = dir.join(protocol::SOCKET_NAME);
    let bin = f.dir.path().join("gate");
    write_gate(&bin);
    // The real gate, as PID 1 of another PID namespace (same mount namespace, so the socket
    // path is reachable): its child asks it to stop.
    let out = tokio::process::Command::new("unshare")
        .args(["--fork", "--pid"])
        .arg(&bin)
        .arg("--socket")
        .arg(&sock)
        .args([
            "--",
            "sh",
            "-c",
            "trap 'echo term; exit 0' TERM; kill -TERM 1; while :; do sleep 1 & wait $!; done",
        ])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(EVENT_BOUND, out)
        .await
        .expect("the gate never stopped")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "term\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
}
