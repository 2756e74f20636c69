//! End-to-end recovery on containerd 1.7 and 2.1, for the drop-in plugin (the launcher and
//! its daemon) and the external plugin (restarted by the test as systemd would): after the
//! process serving NRI stalls past the runtime's request timeout, is SIGKILLed, or after
//! containerd restarts, a new container's PostStart runs again and a container gated before
//! the fault still runs its PreStop — once — before its stop signal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nri_harness::node::external_connected;
use nri_harness::plugin::ExternalPlugin;
use nri_harness::{
    images, stamp, sys, unix_now, ContainerSpec, Cri, Node, PluginMode, Pod, PodSpec, Version,
};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");
const POSTSTART: &str = "poststart.lifecycle.nri.io/container.app";
const PRESTOP: &str = "prestop.lifecycle.nri.io/container.app";
/// Generous bounds for conditions polled for (never timing assertions).
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    DropIn,
    External,
}

const MODES: [Mode; 2] = [Mode::DropIn, Mode::External];

/// A node with the plugin attached one way or the other.
struct Setup {
    node: Node,
    mode: Mode,
    external: Option<ExternalPlugin>,
}

impl Setup {
    async fn start(v: Version, mode: Mode) -> Setup {
        let plugin = match mode {
            Mode::DropIn => PluginMode::Preinstalled(PathBuf::from(PLUGIN)),
            Mode::External => PluginMode::External,
        };
        let node = Node::start(v, plugin)
            .await
            .unwrap_or_else(|e| panic!("{v} {mode:?}: node did not start: {e}"));
        let mut s = Setup {
            node,
            mode,
            external: None,
        };
        if mode == Mode::External {
            s.spawn_external();
            s.wait_connections(1).await;
        }
        s
    }

    fn spawn_external(&mut self) {
        self.external = Some(
            ExternalPlugin::spawn(Path::new(PLUGIN), &self.node)
                .unwrap_or_else(|e| panic!("external plugin: {e}")),
        );
    }

    fn what(&self) -> String {
        format!("{} {:?}", self.node.version(), self.mode)
    }

    /// Waits until containerd's log shows the plugin's external connection `n` times.
    async fn wait_connections(&self, n: usize) {
        let ok = self
            .node
            .wait_containerd_log(LIMIT, |log| external_connected(log, "nri-lifecycle") >= n)
            .await;
        assert!(
            ok.is_some(),
            "{}: the plugin did not connect ({n} times):\n{}",
            self.what(),
            self.diagnostics()
        );
    }

    fn connections(&self) -> usize {
        external_connected(&self.node.containerd_log(), "nri-lifecycle")
    }

    /// The process that serves NRI (it holds the runtime's lock).
    async fn serving_pid(&self) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(pid) = self.node.daemon_pid() {
                return pid;
            }
            assert!(
                start.elapsed() < LIMIT,
                "{}: no process holds the plugin's lock:\n{}",
                self.what(),
                self.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn diagnostics(&self) -> String {
        let ext = self
            .external
            .as_ref()
            .map(|e| e.output())
            .unwrap_or_default();
        format!(
            "{}\nexternal plugin output:\n{ext}",
            self.node.diagnostics()
        )
    }

    async fn stop(mut self) {
        if let Some(mut e) = self.external.take() {
            e.stop(Duration::from_secs(5));
        }
        let what = self.what();
        self.node
            .stop()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// A gated app: PreStop appends one line per run to /shared/prestop; the app writes the
/// time it got SIGTERM to /shared/term.
struct Gated {
    pod: Pod,
    id: String,
    shared: PathBuf,
}

async fn start_gated(s: &Setup, cri: &mut Cri, name: &str) -> Gated {
    let hook = r#"{"exec":{"command":["/testapp","write","/shared/prestop","{now}"]}}"#;
    let pod = cri
        .run_pod(&PodSpec::new(name).annotation(PRESTOP, hook))
        .await
        .expect("run pod");
    let shared = s.node.host_dir(name).expect("host dir");
    let spec = ContainerSpec {
        args: vec!["--term-file".into(), "/shared/term".into()],
        ..ContainerSpec::new("app", images::BUSYBOX, &["/testapp"])
    }
    .mount(&s.node.install().testapp(), "/testapp", true)
    .mount(&shared, "/shared", false);
    let (id, line) = cri
        .start_ready(&pod, &spec, "started ", Duration::from_secs(30))
        .await
        .expect("start");
    assert!(line.is_some(), "{}: the app never started", s.what());
    Gated { pod, id, shared }
}

/// Stops the gated app: its PreStop ran exactly once, before its SIGTERM.
async fn check_gated_stop(s: &Setup, cri: &mut Cri, g: Gated, fault: &str) {
    cri.stop_container(&g.id, 30).await.expect("stop");
    let what = s.what();
    let runs = std::fs::read_to_string(g.shared.join("prestop")).unwrap_or_default();
    let term = stamp(&g.shared.join("term"))
        .unwrap_or_else(|| panic!("{what} {fault}: the app never got SIGTERM"));
    let lines: Vec<&str> = runs.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what} {fault}: PreStop ran {} times (want once):\n{}",
        lines.len(),
        s.diagnostics()
    );
    let start: f64 = lines[0].trim().parse().expect("stamp");
    assert!(
        start <= term,
        "{what} {fault}: SIGTERM ({term}) came before PreStop ({start})"
    );
    cri.remove_container(&g.id).await.expect("remove");
    cri.delete_pod(&g.pod).await.expect("delete pod");
}

/// A new pod whose container has a PostStart exec hook: returns the seconds from `since`
/// until the hook ran (polled; the hook's own time stamp).
async fn poststart_works(s: &Setup, cri: &mut Cri, name: &str, since: f64) -> f64 {
    let hook = r#"{"exec":{"command":["/testapp","write","/shared/poststart","{now}"]}}"#;
    let pod = cri.run_pod(&PodSpec::new(name)).await.expect("run pod");
    let shared = s.node.host_dir(name).expect("host dir");
    let spec = ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
        .annotation(POSTSTART, hook)
        .mount(&s.node.install().testapp(), "/testapp", true)
        .mount(&shared, "/shared", false);
    let id = cri.create_container(&pod, &spec).await.expect("create");
    cri.start_container(&id).await.expect("start");
    let ran = nri_harness::wait_file(&shared.join("poststart"), LIMIT, |t| !t.is_empty()).await;
    assert!(
        ran.is_some(),
        "{}: a new container's PostStart did not run after recovery:\n{}",
        s.what(),
        s.diagnostics()
    );
    let at = stamp(&shared.join("poststart")).expect("stamp");
    // Once: a second plugin serving the same runtime would run it again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs = std::fs::read_to_string(shared.join("poststart")).unwrap_or_default();
    assert_eq!(
        runs.lines().count(),
        1,
        "{}: PostStart ran more than once:\n{}",
        s.what(),
        s.diagnostics()
    );
    let _ = cri.stop_container(&id, 2).await;
    cri.remove_container(&id).await.expect("remove");
    cri.delete_pod(&pod).await.expect("delete pod");
    at - since
}

/// (a) The serving process frozen 4 s while a container is created: the runtime drops it
/// after its 2 s request timeout; resumed, it connects again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_a_stall_past_the_request_timeout() {
    if !nri_harness::require_root("recovers_from_a_stall_past_the_request_timeout") {
        return;
    }
    for v in Version::ALL {
        for mode in MODES {
            let s = Setup::start(v, mode).await;
            let mut cri = s.node.cri().await.expect("cri");
            let gated = start_gated(&s, &mut cri, "held").await;
            let before = s.connections();
            let pid = s.serving_pid().await;
            let mut cri2 = s.node.cri().await.expect("cri");
            let pod = cri2
                .run_pod(&PodSpec::new("during"))
                .await
                .expect("run pod");
            sys::kill(pid, libc::SIGSTOP);
            // A create while it is frozen: the runtime times the plugin out and goes on.
            let spec = ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"]);
            let create = tokio::spawn(async move {
                let r = cri2.create_container(&pod, &spec).await;
                (cri2, pod, r)
            });
            tokio::time::sleep(Duration::from_secs(4)).await;
            sys::kill(pid, libc::SIGCONT);
            let resumed = unix_now();
            let (mut cri2, pod, created) = create.await.expect("join");
            created.unwrap_or_else(|e| panic!("{v} {mode:?}: create during the stall: {e}"));
            assert!(
                s.node
                    .containerd_log()
                    .lines()
                    .any(|l| l.contains("nri-lifecycle") && l.contains("closed")),
                "{v} {mode:?}: the runtime never dropped the frozen plugin:\n{}",
                s.diagnostics()
            );
            s.wait_connections(before + 1).await;
            let took = poststart_works(&s, &mut cri, "after-stall", resumed).await;
            eprintln!("{v} {mode:?}: PostStart ran {took:.2} s after SIGCONT");
            check_gated_stop(&s, &mut cri, gated, "after a stall").await;
            cri2.delete_pod(&pod).await.expect("delete pod");
            drop((cri, cri2));
            s.stop().await;
        }
    }
}

/// (b) The serving process SIGKILLed: the launcher (drop-in) or the service manager
/// (external; the test restarts it) starts it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_sigkill() {
    if !nri_harness::require_root("recovers_from_sigkill") {
        return;
    }
    for v in Version::ALL {
        for mode in MODES {
            let mut s = Setup::start(v, mode).await;
            let mut cri = s.node.cri().await.expect("cri");
            let gated = start_gated(&s, &mut cri, "held").await;
            let before = s.connections();
            let pid = s.serving_pid().await;
            sys::kill(pid, libc::SIGKILL);
            let killed = unix_now();
            assert!(
                sys::wait_gone(&[pid], Duration::from_secs(10)),
                "{v} {mode:?}: not killed"
            );
            if mode == Mode::External {
                // What systemd's Restart=always or the DaemonSet's kubelet does.
                if let Some(mut old) = s.external.take() {
                    old.stop(Duration::from_secs(1));
                }
                s.spawn_external();
            }
            s.wait_connections(before + 1).await;
            let new_pid = s.serving_pid().await;
            assert_ne!(new_pid, pid, "{v} {mode:?}: the same process serves");
            let took = poststart_works(&s, &mut cri, "after-kill", killed).await;
            eprintln!("{v} {mode:?}: PostStart ran {took:.2} s after SIGKILL");
            check_gated_stop(&s, &mut cri, gated, "after SIGKILL").await;
            drop(cri);
            s.stop().await;
        }
    }
}

/// (c) containerd restarted (SIGTERM, then started again with the same config; the shims
/// and containers live on) with a gated container running: 1.7 does not synchronize a
/// pre-installed plugin, but the daemon connects again as an external one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_a_containerd_restart() {
    if !nri_harness::require_root("recovers_from_a_containerd_restart") {
        return;
    }
    for v in Version::ALL {
        for mode in MODES {
            let mut s = Setup::start(v, mode).await;
            let mut cri = s.node.cri().await.expect("cri");
            let gated = start_gated(&s, &mut cri, "held").await;
            let pid = s.serving_pid().await;
            drop(cri);
            s.node
                .restart_containerd()
                .await
                .unwrap_or_else(|e| panic!("{v} {mode:?}: restart: {e}"));
            let restarted = unix_now();
            // The log starts afresh with the new containerd.
            s.wait_connections(1).await;
            if mode == Mode::DropIn {
                // The new launcher found the daemon alive and kept it.
                assert_eq!(
                    s.serving_pid().await,
                    pid,
                    "{v} {mode:?}: a second daemon was started"
                );
            }
            let mut cri = s.node.cri().await.expect("cri");
            let took = poststart_works(&s, &mut cri, "after-restart", restarted).await;
            eprintln!("{v} {mode:?}: PostStart ran {took:.2} s after containerd was back");
            check_gated_stop(&s, &mut cri, gated, "after a containerd restart").await;
            drop(cri);
            s.stop().await;
        }
    }
}

/// The drop-in plugin and a systemd-style external one on the same node: one serves, the
/// other waits on the runtime's lock; when the serving one is killed, exactly one takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_plugin_serves_when_two_are_installed() {
    if !nri_harness::require_root("one_plugin_serves_when_two_are_installed") {
        return;
    }
    for v in Version::ALL {
        let mut s = Setup::start(v, Mode::DropIn).await;
        let first = s.serving_pid().await;
        s.spawn_external();
        let waiting = s
            .node
            .wait_plugin_log(LIMIT, |l| {
                l.contains("another nri-lifecycle already serves")
            })
            .await;
        assert!(
            waiting.is_some(),
            "{v}: the second plugin did not wait for the lock:\n{}",
            s.diagnostics()
        );
        assert_eq!(s.connections(), 1, "{v}: two plugins connected");
        let mut cri = s.node.cri().await.expect("cri");
        poststart_works(&s, &mut cri, "two-installed", unix_now()).await;
        // Kill the one serving: the launcher's new daemon or the waiting plugin takes over,
        // never both.
        sys::kill(first, libc::SIGKILL);
        s.wait_connections(2).await;
        let second = s.serving_pid().await;
        assert_ne!(second, first, "{v}: the killed plugin still serves");
        poststart_works(&s, &mut cri, "after-takeover", unix_now()).await;
        assert_eq!(s.connections(), 2, "{v}: both remaining plugins connected");
        drop(cri);
        s.stop().await;
    }
}

/// With external connections disabled in containerd there is nothing to heal with: the
/// launcher serves NRI itself, hooks work, and the log says it cannot recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_external_connections_the_launcher_serves_itself() {
    if !nri_harness::require_root("without_external_connections_the_launcher_serves_itself") {
        return;
    }
    for v in Version::ALL {
        let node = Node::start_with(
            v,
            PluginMode::Preinstalled(PathBuf::from(PLUGIN)),
            nri_harness::NodeOptions {
                nri_connections: false,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"));
        let s = Setup {
            node,
            mode: Mode::DropIn,
            external: None,
        };
        assert!(
            s.node.plugin_log().contains("CANNOT RECOVER"),
            "{v}: no warning that the plugin cannot recover:\n{}",
            s.diagnostics()
        );
        assert_eq!(
            s.node.daemon_pid(),
            None,
            "{v}: a daemon runs without a socket"
        );
        let mut cri = s.node.cri().await.expect("cri");
        poststart_works(&s, &mut cri, "no-connections", unix_now()).await;
        let gated = start_gated(&s, &mut cri, "held").await;
        check_gated_stop(&s, &mut cri, gated, "served by the launcher").await;
        drop(cri);
        s.stop().await;
    }
}

/// An upgrade: the plugin file replaced by another build and containerd restarted. The new
/// launcher stops the old daemon and starts its own; a container gated before still runs its
/// PreStop once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_plugin_replaces_the_old_daemon() {
    if !nri_harness::require_root("an_upgraded_plugin_replaces_the_old_daemon") {
        return;
    }
    for v in Version::ALL {
        let mut s = Setup::start(v, Mode::DropIn).await;
        let mut cri = s.node.cri().await.expect("cri");
        let gated = start_gated(&s, &mut cri, "held").await;
        let old = s.serving_pid().await;
        // Another file (another inode) in place of the plugin, as a package upgrade leaves it.
        let installed = s
            .node
            .paths()
            .plugin_dir
            .join(nri_harness::node::PLUGIN_FILE);
        let new_build = s.node.paths().dir.join("upgrade");
        std::fs::copy(PLUGIN, &new_build).expect("copy");
        std::fs::rename(&new_build, &installed).expect("replace");
        drop(cri);
        s.node
            .restart_containerd()
            .await
            .unwrap_or_else(|e| panic!("{v}: restart: {e}"));
        let start = Instant::now();
        let new = loop {
            match s.node.daemon_pid() {
                Some(pid) if pid != old => break pid,
                _ => {}
            }
            assert!(
                start.elapsed() < LIMIT,
                "{v}: the old daemon still serves:\n{}",
                s.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            sys::wait_gone(&[old], Duration::from_secs(10)),
            "{v}: the old daemon lives on"
        );
        let exe = std::fs::read_link(format!("/proc/{new}/exe")).expect("exe");
        assert_eq!(exe, installed, "{v}: the new daemon runs the new file");
        // The new daemon connected (the log starts afresh with the new containerd: the old
        // daemon's reconnection, if it came first, and the new one's).
        s.wait_connections(1).await;
        let start = Instant::now();
        while !s
            .node
            .containerd_log()
            .lines()
            .any(|l| l.contains(&format!("[{new}]")) && l.contains("registered as"))
        {
            assert!(
                start.elapsed() < LIMIT,
                "{v}: the new daemon did not register:\n{}",
                s.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut cri = s.node.cri().await.expect("cri");
        poststart_works(&s, &mut cri, "after-upgrade", unix_now()).await;
        check_gated_stop(&s, &mut cri, gated, "after an upgrade").await;
        drop(cri);
        s.stop().await;
    }
}

/// The plugin config changed and containerd restarted: the daemon, which read the old config
/// at its start, is replaced by one with the new config; with the config unchanged it is
/// kept (see the restart test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_config_replaces_the_daemon() {
    if !nri_harness::require_root("a_changed_config_replaces_the_daemon") {
        return;
    }
    for v in Version::ALL {
        let mut s = Setup::start(v, Mode::DropIn).await;
        let old = s.serving_pid().await;
        let conf = s
            .node
            .paths()
            .plugin_config_dir
            .join(format!("{}.conf", nri_harness::node::PLUGIN_FILE));
        let mut text = std::fs::read_to_string(&conf).expect("plugin config");
        text.push_str("default_grace_period_seconds = 31\n");
        std::fs::write(&conf, text).expect("write plugin config");
        s.node
            .restart_containerd()
            .await
            .unwrap_or_else(|e| panic!("{v}: restart: {e}"));
        let start = Instant::now();
        while s.node.daemon_pid().is_none_or(|pid| pid == old) {
            assert!(
                start.elapsed() < LIMIT,
                "{v}: the daemon with the old config still serves:\n{}",
                s.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut cri = s.node.cri().await.expect("cri");
        poststart_works(&s, &mut cri, "after-config", unix_now()).await;
        drop(cri);
        s.stop().await;
    }
}
