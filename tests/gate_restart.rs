//! A plugin restart between a container's start and its stop, without a runtime: the node's
//! real effects and core, one tokio runtime per plugin "process" (dropping it ends every task
//! of that process, its gate sockets included), one runtime directory for all of them. A
//! child process plays the container's init; this test process, in the same namespaces,
//! plays its gate.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use nri_lifecycle::config::Config;
use nri_lifecycle::core::{self, Core};
use nri_lifecycle::gate::{self, protocol, GateParams};
use nri_lifecycle::logging::Logging;
use nri_lifecycle::model::{Container, Event, EventKind, Pod, RuntimeInfo};
use nri_lifecycle::node::Node;
use nri_lifecycle::nri::Handler;
use nri_lifecycle::ops::Ops;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Upper bound for any awaited answer; reaching it fails the test.
const EVENT_BOUND: Duration = Duration::from_secs(30);

/// One plugin process: its runtime, core and metrics.
struct Plugin {
    rt: tokio::runtime::Runtime,
    core: Core,
    ops: Arc<Ops>,
}

impl Plugin {
    /// Starts a plugin on `dir` with its own config (as `run --config` does), which recovers
    /// what the records say at once; `configure`: the runtime configures it too.
    fn start(dir: &Path, configure: bool) -> Plugin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ops = Arc::new(Ops::new());
        let core = rt.block_on(async {
            let (inbox, inlet) = core::channel();
            let node = Arc::new(Node::new(
                Logging::init("debug"),
                inbox.clone(),
                Arc::clone(&ops),
            ));
            let config = Config {
                log_file: None,
                runtime_dir: dir.join("rt"),
                containerd_address: Some(dir.join("no-containerd.sock")),
                containerd_state_dir: Some(dir.join("state")),
                ..Config::default()
            };
            let core = Core::start(config, true, node, Arc::clone(&ops), (inbox, inlet));
            if configure {
                core.configure(RuntimeInfo {
                    request_timeout_ms: 2000,
                    ..RuntimeInfo::default()
                })
                .await;
            }
            core
        });
        Plugin { rt, core, ops }
    }

    /// How many PreStop hooks this process ran.
    fn pre_stops(&self) -> u64 {
        self.ops
            .encode()
            .lines()
            .filter(|l| l.starts_with("nri_lifecycle_hooks_total{phase=\"preStop\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Ends the process: every task, every socket listener.
    fn kill(self) {
        let Plugin { rt, core, ops } = self;
        drop(core);
        drop(ops);
        rt.shutdown_timeout(Duration::from_secs(10));
    }
}

fn pod() -> Pod {
    Pod {
        id: "p1".into(),
        name: "web".into(),
        namespace: "default".into(),
        annotations: [(
            "prestop.lifecycle.nri.io/pod".to_string(),
            r#"{"sleep":{"seconds":1}}"#.to_string(),
        )]
        .into(),
        ..Pod::default()
    }
}

fn container(init: &Child) -> Container {
    let mut c = Container {
        id: "c1".into(),
        pod_id: "p1".into(),
        name: "app".into(),
        pid: init.id(),
        ..Container::default()
    };
    // The args the runtime runs: the gate in front (as after an honoured args adjustment).
    let params = GateParams::new(Duration::from_secs(28), None, &c);
    c.process.args = gate::gate_args(&["/app".to_string()], &params);
    c
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("rt/gate/containers/c1")
        .join(protocol::SOCKET_NAME)
}

fn record(dir: &Path) -> PathBuf {
    dir.join("rt/gate/containers/.state/c1.json")
}

/// What the gate does at a stop signal: asks over the socket, returns the answer's status.
async fn gate_stop(sock: &Path) -> u8 {
    let mut s = UnixStream::connect(sock).await.unwrap();
    s.write_all(&protocol::encode_stop(15)).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(EVENT_BOUND, s.read_to_end(&mut buf))
        .await
        .expect("no answer from the gate server")
        .unwrap();
    let (status, _) = protocol::decode_reply(&buf[protocol::HEADER_LEN..]).unwrap();
    status
}

#[test]
fn a_restarted_plugin_serves_the_gate_from_the_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut init = Guard(Command::new("sleep").arg("600").spawn().unwrap());

    // The first process sees the container created, gated and started, then dies.
    let first = Plugin::start(dir.path(), true);
    first.rt.block_on(async {
        let c = container(&init.0);
        let adj = first.core.create_container(pod(), c.clone()).await.unwrap();
        assert!(adj.annotations.contains_key(gate::GATED_ANNOTATION));
        for kind in [
            EventKind::PostCreateContainer,
            EventKind::PostStartContainer,
        ] {
            first
                .core
                .event(Event {
                    kind,
                    pod: pod(),
                    container: c.clone(),
                })
                .await
                .unwrap();
        }
        assert_eq!(first.core.status().await.gated, 1);
    });
    let text = std::fs::read_to_string(record(dir.path())).unwrap();
    assert!(text.contains(&format!("\"pid\":{}", init.0.id())), "{text}");
    assert!(text.contains("\"gate\":\"gated\""), "{text}");
    first.kill();
    // Nobody listens now: the gate would fail open.
    assert!(std::os::unix::net::UnixStream::connect(socket(dir.path())).is_err());

    // The second process, before the runtime reached it (no Configure, no Synchronize): the
    // gate reaches it and its PreStop runs.
    let second = Plugin::start(dir.path(), false);
    second.rt.block_on(async {
        assert_eq!(second.core.status().await.gated, 1);
        assert_eq!(gate_stop(&socket(dir.path())).await, protocol::STATUS_DONE);
        // A second stop signal gets the same outcome, not a second run.
        assert_eq!(gate_stop(&socket(dir.path())).await, protocol::STATUS_DONE);
    });
    assert_eq!(second.pre_stops(), 1);
    let text = std::fs::read_to_string(record(dir.path())).unwrap();
    assert!(text.contains("\"pre_stop\":\"done\""), "{text}");
    second.kill();

    // A third process: the PreStop ran before it started, so it never runs again.
    let third = Plugin::start(dir.path(), true);
    third.rt.block_on(async {
        assert_eq!(gate_stop(&socket(dir.path())).await, protocol::STATUS_DONE);
    });
    assert_eq!(third.pre_stops(), 0);
    third.kill();

    // The container's init is gone: the next process removes its socket directory and record.
    init.0.kill().unwrap();
    init.0.wait().unwrap();
    let fourth = Plugin::start(dir.path(), true);
    fourth.rt.block_on(async {
        assert_eq!(fourth.core.status().await.tracked, 0);
    });
    assert!(!record(dir.path()).exists());
    assert!(!dir.path().join("rt/gate/containers/c1").exists());
    fourth.kill();
}

#[test]
fn a_record_whose_pid_now_names_another_process_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let init = Guard(Command::new("sleep").arg("600").spawn().unwrap());
    let first = Plugin::start(dir.path(), true);
    first.rt.block_on(async {
        let c = container(&init.0);
        first.core.create_container(pod(), c.clone()).await.unwrap();
        for kind in [
            EventKind::PostCreateContainer,
            EventKind::PostStartContainer,
        ] {
            first
                .core
                .event(Event {
                    kind,
                    pod: pod(),
                    container: c.clone(),
                })
                .await
                .unwrap();
        }
    });
    first.kill();
    // The same PID with another start time is another process (as after PID reuse).
    let path = record(dir.path());
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .split("\"start_time\":")
        .nth(1)
        .and_then(|t| t.split(',').next())
        .unwrap()
        .to_string();
    let other = text.replace(
        &format!("\"start_time\":{start},"),
        &format!("\"start_time\":{},", start.parse::<u64>().unwrap() + 1),
    );
    assert_ne!(other, text);
    std::fs::write(&path, other).unwrap();
    let second = Plugin::start(dir.path(), true);
    second.rt.block_on(async {
        assert_eq!(second.core.status().await.tracked, 0);
    });
    assert!(!path.exists());
    assert!(!socket(dir.path()).exists());
    second.kill();
}

/// Kills the child process when the test ends, passed or not.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
