//! End-to-end PreStop on containerd 1.7 and 2.1, driven like a kubelet: the gate is the
//! container's PID 1, and a CRI StopContainer waits for the PreStop hook before the app gets
//! its SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nri_harness::cri::ContainerState;
use nri_harness::{
    images, stamp, unix_now, ContainerSpec, Cri, Node, PluginMode, Pod, PodSpec, Version,
};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");

async fn node(v: Version) -> Node {
    Node::start(v, PluginMode::Preinstalled(PathBuf::from(PLUGIN)))
        .await
        .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"))
}

/// A pod with one container `app`: the test app (which records when it gets SIGTERM into
/// /shared/term) in the busybox image with the app bind-mounted, or alone in the distroless
/// image.
struct App {
    pod: Pod,
    id: String,
    shared: PathBuf,
}

/// Starts an [`App`]; returns once the app says it has taken SIGTERM over (and listens, with
/// `--http`): a stop signal that came earlier would kill it outright, and a PreStop httpGet
/// would find nobody listening.
async fn start_app(
    node: &Node,
    cri: &mut Cri,
    name: &str,
    pod_annotations: &[(&str, &str)],
    distroless: bool,
    extra_args: &[&str],
) -> App {
    let mut spec = PodSpec::new(name);
    for (k, v) in pod_annotations {
        spec = spec.annotation(k, v);
    }
    let pod = cri.run_pod(&spec).await.expect("run pod");
    let shared = node.host_dir(name).expect("host dir");
    let mut args: Vec<String> = ["--term-file", "/shared/term"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra_args.iter().map(|s| s.to_string()));
    let spec = if distroless {
        ContainerSpec {
            args,
            ..ContainerSpec::new("app", images::DISTROLESS, &[])
        }
    } else {
        ContainerSpec {
            args,
            ..ContainerSpec::new("app", images::BUSYBOX, &["/testapp"])
        }
        .mount(&node.install().testapp(), "/testapp", true)
    }
    .mount(&shared, "/shared", false);
    let ready = if extra_args.contains(&"--http") {
        "listening "
    } else {
        "started "
    };
    let (id, line) = cri
        .start_ready(&pod, &spec, ready, Duration::from_secs(30))
        .await
        .expect("start");
    assert!(
        line.is_some(),
        "the app never logged {ready:?}:\n{}",
        node.diagnostics()
    );
    App { pod, id, shared }
}

async fn finish(cri: &mut Cri, app: App) {
    cri.remove_container(&app.id).await.expect("remove");
    cri.delete_pod(&app.pod).await.expect("delete pod");
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_for_prestop_exec() {
    if !nri_harness::require_root("stop_waits_for_prestop_exec") {
        return;
    }
    let hook = r#"{"exec":{"command":["sh","-c","/testapp write /shared/prestop {now}; sleep 2; /testapp write /shared/prestop-end {now}"]}}"#;
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let app = start_app(
            &node,
            &mut cri,
            "order",
            &[("prestop.lifecycle.nri.io/container.app", hook)],
            false,
            &[],
        )
        .await;
        let pid = cri.container_pid(&app.id).await.expect("pid");
        assert_eq!(
            cmdline(pid).first().map(String::as_str),
            Some("/.nri-lifecycle/gate"),
            "{v}: gate is PID 1"
        );

        let asked = unix_now();
        cri.stop_container(&app.id, 30).await.expect("stop");
        let returned = unix_now();
        let log = node.diagnostics();
        let start = stamp(&app.shared.join("prestop"))
            .unwrap_or_else(|| panic!("{v}: PreStop did not run\n{log}"));
        let end = stamp(&app.shared.join("prestop-end"))
            .unwrap_or_else(|| panic!("{v}: PreStop did not finish\n{log}"));
        let term = stamp(&app.shared.join("term"))
            .unwrap_or_else(|| panic!("{v}: the app never got SIGTERM\n{log}"));
        assert!(
            asked <= start,
            "{v}: PreStop ran before the stop was asked ({asked} > {start})"
        );
        assert!(
            start < end && end <= term,
            "{v}: SIGTERM ({term}) came before PreStop finished ({start}..{end})"
        );
        assert!(
            term - start >= 2.0,
            "{v}: SIGTERM only {:.3}s after PreStop began",
            term - start
        );
        assert!(
            term <= returned,
            "{v}: StopContainer returned ({returned}) before the app got SIGTERM ({term})"
        );
        let st = cri.container_status(&app.id).await.expect("status");
        assert_eq!(
            st.exit_code, 0,
            "{v}: the app's own exit code passes through the gate"
        );
        finish(&mut cri, app).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prestop_sleep_and_http_on_distroless() {
    if !nri_harness::require_root("prestop_sleep_and_http_on_distroless") {
        return;
    }
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        // sleep: nothing in the image but the app.
        let app = start_app(
            &node,
            &mut cri,
            "sleepy",
            &[(
                "prestop.lifecycle.nri.io/container.app",
                r#"{"sleep":{"seconds":1}}"#,
            )],
            true,
            &[],
        )
        .await;
        let asked = unix_now();
        cri.stop_container(&app.id, 30).await.expect("stop");
        let term = stamp(&app.shared.join("term"))
            .unwrap_or_else(|| panic!("{v}: no SIGTERM\n{}", node.diagnostics()));
        assert!(
            term - asked >= 1.0,
            "{v}: SIGTERM {:.3}s after the stop: the sleep hook did not hold it",
            term - asked
        );
        finish(&mut cri, app).await;

        // httpGet: reaches the app while it still serves.
        let app = start_app(
            &node,
            &mut cri,
            "drain",
            &[(
                "prestop.lifecycle.nri.io/container.app",
                r#"{"httpGet":{"path":"/drain","port":8080,"httpHeaders":[{"name":"X-Reason","value":"prestop"}]}}"#,
            )],
            true,
            &["--http", "8080", "--log", "/shared/http.log"],
        )
        .await;
        cri.stop_container(&app.id, 30).await.expect("stop");
        let http = std::fs::read_to_string(app.shared.join("http.log")).unwrap_or_default();
        let term = stamp(&app.shared.join("term"))
            .unwrap_or_else(|| panic!("{v}: no SIGTERM\n{}", node.diagnostics()));
        let request = http
            .lines()
            .find(|l| l.starts_with("request ") && l.contains("GET /drain"))
            .unwrap_or_else(|| {
                panic!(
                    "{v}: the app never saw GET /drain:\n{http}\n{}",
                    node.diagnostics()
                )
            });
        let requested: f64 = request
            .split_whitespace()
            .nth(1)
            .and_then(|t| t.parse().ok())
            .unwrap_or(f64::MAX);
        assert!(
            requested < term,
            "{v}: the PreStop request came after SIGTERM"
        );
        assert!(
            http.to_lowercase().contains("x-reason: prestop"),
            "{v}: header missing:\n{http}"
        );
        assert!(
            http.to_lowercase().contains("user-agent: nri-lifecycle/"),
            "{v}: user agent missing:\n{http}"
        );
        finish(&mut cri, app).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_longer_than_grace_is_cut_by_sigkill() {
    if !nri_harness::require_root("hook_longer_than_grace_is_cut_by_sigkill") {
        return;
    }
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let app = start_app(
            &node,
            &mut cri,
            "slow",
            &[(
                "prestop.lifecycle.nri.io/container.app",
                r#"{"sleep":{"seconds":60}}"#,
            )],
            true,
            &[],
        )
        .await;
        // The hook outlasts the grace period: the stop ends with the runtime's SIGKILL, and
        // the gate never let SIGTERM through to the app (it would have exited 0).
        cri.stop_container(&app.id, 3).await.expect("stop");
        let st = cri.container_status(&app.id).await.expect("status");
        assert_eq!(st.state, ContainerState::ContainerExited as i32, "{v}");
        assert_eq!(
            st.exit_code, 137,
            "{v}: SIGKILL at the end of the grace period"
        );
        assert!(
            stamp(&app.shared.join("term")).is_none(),
            "{v}: the app got SIGTERM while its PreStop hook still ran"
        );
        finish(&mut cri, app).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_container_exits_and_logs_as_without_gate() {
    if !nri_harness::require_root("gated_container_exits_and_logs_as_without_gate") {
        return;
    }
    let v = Version::V2_1;
    let node = node(v).await;
    let mut cri = node.cri().await.expect("cri");
    let mut outcomes = Vec::new();
    for (name, annotations) in [
        ("plain", vec![]),
        (
            "gated",
            vec![("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":0}}"#)],
        ),
    ] {
        let pod = {
            let mut spec = PodSpec::new(name);
            for (k, val) in &annotations {
                spec = spec.annotation(k, val);
            }
            cri.run_pod(&spec).await.expect("run pod")
        };
        let spec = ContainerSpec::new(
            "app",
            images::BUSYBOX,
            &[
                "sh",
                "-c",
                "trap 'echo term; exit 7' TERM; echo out; echo err >&2; while :; do sleep 1; done",
            ],
        );
        let id = cri.create_container(&pod, &spec).await.expect("create");
        cri.start_container(&id).await.expect("start");
        cri.wait_state(
            &id,
            ContainerState::ContainerRunning,
            Duration::from_secs(30),
        )
        .await
        .expect("running");
        // The shell has set its trap once it printed.
        let printed = cri
            .wait_log_line(&id, Duration::from_secs(30), |l| l == "err")
            .await
            .expect("status");
        assert!(printed.is_some(), "{name}: the shell never printed");
        cri.stop_container(&id, 10).await.expect("stop");
        let st = cri.container_status(&id).await.expect("status");
        // Lines in order within each stream (the runtime copies stdout and stderr
        // separately, so their interleaving is not defined with or without the gate).
        let mut lines: Vec<(String, String)> = nri_harness::cri::read_log(Path::new(&st.log_path))
            .into_iter()
            .map(|l| (l.stream, l.text))
            .collect();
        lines.sort_by(|a, b| a.0.cmp(&b.0));
        outcomes.push((st.exit_code, lines));
        cri.remove_container(&id).await.expect("remove");
        cri.delete_pod(&pod).await.expect("delete pod");
    }
    assert_eq!(outcomes[0].0, 7, "the app's exit code without the gate");
    assert_eq!(
        outcomes[1], outcomes[0],
        "exit code and log differ with the gate"
    );
    drop(cri);
    node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_killed_during_prestop_stop_still_completes() {
    if !nri_harness::require_root("plugin_killed_during_prestop_stop_still_completes") {
        return;
    }
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let app = start_app(
            &node,
            &mut cri,
            "orphan",
            &[(
                "prestop.lifecycle.nri.io/container.app",
                r#"{"sleep":{"seconds":120}}"#,
            )],
            true,
            &[],
        )
        .await;
        let plugin_pid = plugin_pid(&node);
        let id = app.id.clone();
        let mut stopper = node.cri().await.expect("cri");
        let stop = tokio::spawn(async move { stopper.stop_container(&id, 60).await });
        // Kill the plugin once the hook is running.
        let started = node
            .wait_plugin_log(Duration::from_secs(20), |l| l.contains("running PreStop"))
            .await;
        assert!(
            started.is_some(),
            "{v}: PreStop never started:\n{}",
            node.diagnostics()
        );
        // SAFETY: kill(2) takes no pointers; the PID is the plugin daemon of the node this
        // test started.
        let rc = unsafe { libc::kill(plugin_pid, libc::SIGKILL) };
        assert_eq!(rc, 0, "{v}: kill plugin {plugin_pid}");
        // Without the plugin the gate lets SIGTERM through at once; had it kept holding it,
        // the stop would have ended with SIGKILL after the 60 s grace period (exit 137, no
        // SIGTERM seen by the app), or not within the CRI call limit.
        let result = stop.await;
        assert!(
            matches!(result, Ok(Ok(()))),
            "{v}: stop did not complete: {result:?}"
        );
        assert!(
            stamp(&app.shared.join("term")).is_some(),
            "{v}: the app never got SIGTERM"
        );
        let st = cri.container_status(&app.id).await.expect("status");
        assert_eq!(st.exit_code, 0, "{v}: the app exited on SIGTERM");
        finish(&mut cri, app).await;
        drop(cri);
        // containerd 1.7 may exit once its pre-installed plugin is gone; teardown copes.
        let _ = node.stop().await;
    }
}

/// The PID of the process that serves NRI for the drop-in plugin: the daemon its launcher
/// keeps, which holds the plugin's lock.
fn plugin_pid(node: &Node) -> i32 {
    node.daemon_pid()
        .unwrap_or_else(|| panic!("no plugin process holds the lock:\n{}", node.diagnostics()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_container_cannot_trigger_a_prestop() {
    if !nri_harness::require_root("another_container_cannot_trigger_a_prestop") {
        return;
    }
    let v = Version::V2_1;
    let node = node(v).await;
    let mut cri = node.cri().await.expect("cri");
    // B: the victim, whose PreStop leaves a mark.
    let victim = start_app(
        &node,
        &mut cri,
        "victim",
        &[(
            "prestop.lifecycle.nri.io/container.app",
            r#"{"exec":{"command":["/testapp","write","/shared/prestop","{now}"]}}"#,
        )],
        false,
        &[],
    )
    .await;
    let socket_dir = node
        .paths()
        .dir
        .join("plugin-run/gate/containers")
        .join(&victim.id);
    assert!(
        socket_dir.join("gate.sock").exists(),
        "victim's socket at {}",
        socket_dir.display()
    );
    // A: a gated container that was given (as a hostile hostPath mount) B's socket directory,
    // and uses the gate binary as a client to ask for B's PreStop.
    let pod = cri
        .run_pod(
            &PodSpec::new("attacker")
                .annotation("prestop.lifecycle.nri.io/pod", r#"{"sleep":{"seconds":0}}"#),
        )
        .await
        .expect("run pod");
    let spec = ContainerSpec::new("attacker", images::BUSYBOX, &["sleep", "3600"]).mount(
        &socket_dir,
        "/evil",
        false,
    );
    let attacker = cri.create_container(&pod, &spec).await.expect("create");
    cri.start_container(&attacker).await.expect("start");
    cri.wait_state(
        &attacker,
        ContainerState::ContainerRunning,
        Duration::from_secs(30),
    )
    .await
    .expect("running");
    let out = cri
        .exec_sync(
            &attacker,
            &[
                "sh",
                "-c",
                // The gate blocks signals before it starts its command: once the command
                // runs, SIGTERM is the gate's to hold.
                "/.nri-lifecycle/gate --socket /evil/gate.sock --timeout-ms 3000 -- sleep 30 & p=$!; \
                 until [ -n \"$(cat /proc/$p/task/$p/children)\" ]; do sleep 0.05; done; \
                 kill -TERM $p; wait $p; echo rc=$?",
            ],
            30,
        )
        .await
        .expect("exec");
    assert!(
        out.stdout.contains("rc=143"),
        "the attacker's child was not stopped: {out:?}"
    );
    // The request did reach the victim's socket, and was turned away there.
    assert!(
        out.stderr.contains("plugin refused the request"),
        "the attacker's request was not refused: {out:?}\n{}",
        node.diagnostics()
    );
    assert!(
        !victim.shared.join("prestop").exists(),
        "a process in another container ran the victim's PreStop\n{}",
        node.diagnostics()
    );
    // The victim's own stop still runs its PreStop, once.
    cri.stop_container(&victim.id, 30)
        .await
        .expect("stop victim");
    assert!(
        victim.shared.join("prestop").exists(),
        "victim's PreStop did not run at its own stop\n{}",
        node.diagnostics()
    );
    cri.stop_container(&attacker, 10)
        .await
        .expect("stop attacker");
    cri.remove_container(&attacker).await.expect("remove");
    cri.delete_pod(&pod).await.expect("delete pod");
    finish(&mut cri, victim).await;
    drop(cri);
    node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_plugin_still_holds_the_stop() {
    if !nri_harness::require_root("restarted_plugin_still_holds_the_stop") {
        return;
    }
    use nri_harness::plugin::{wait_registered, ExternalPlugin, EXTERNAL_NAME};
    let hook =
        r#"{"exec":{"command":["sh","-c","/testapp write /shared/prestop {now}; sleep 1"]}}"#;
    for v in Version::ALL {
        let node = Node::start(v, PluginMode::External)
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        let plugin = PathBuf::from(PLUGIN);
        let mut first = ExternalPlugin::spawn(&plugin, &node).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            wait_registered(&node, EXTERNAL_NAME, Duration::from_secs(15)).await,
            "{v}: external plugin did not register:\n{}",
            first.output()
        );
        let mut cri = node.cri().await.expect("cri");
        let app = start_app(
            &node,
            &mut cri,
            "resync",
            &[("prestop.lifecycle.nri.io/container.app", hook)],
            false,
            &[],
        )
        .await;
        let pid = cri.container_pid(&app.id).await.expect("pid");
        assert_eq!(
            cmdline(pid).first().map(String::as_str),
            Some("/.nri-lifecycle/gate"),
            "{v}: gated"
        );

        // The plugin goes away and comes back: Synchronize must re-open the container's socket.
        first.stop(Duration::from_secs(5));
        let before = connections(&node.containerd_log());
        let second = ExternalPlugin::spawn(&plugin, &node).unwrap_or_else(|e| panic!("{e}"));
        // containerd says "connected" only once the plugin answered Synchronize, which it does
        // after re-opening the gate sockets.
        let reconnected = node
            .wait_containerd_log(Duration::from_secs(15), |l| connections(l) > before)
            .await;
        assert!(
            reconnected.is_some(),
            "{v}: plugin did not reconnect:\n{}",
            second.output()
        );

        let asked = unix_now();
        cri.stop_container(&app.id, 30).await.expect("stop");
        let start = stamp(&app.shared.join("prestop")).unwrap_or_else(|| {
            panic!(
                "{v}: PreStop did not run after the plugin restart\n{}",
                node.diagnostics()
            )
        });
        let term = stamp(&app.shared.join("term")).unwrap_or_else(|| panic!("{v}: no SIGTERM"));
        assert!(
            asked <= start && start + 1.0 <= term,
            "{v}: the restarted plugin did not hold the stop ({asked} {start} {term})"
        );
        finish(&mut cri, app).await;
        drop(cri);
        drop(second);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

/// How many times containerd's log says the external plugin connected.
fn connections(containerd_log: &str) -> usize {
    use nri_harness::plugin::EXTERNAL_NAME;
    containerd_log
        .lines()
        .filter(|l| l.contains(EXTERNAL_NAME) && l.contains("\\\" connected"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prestop_longer_than_the_grace_period_still_leaves_the_app_its_signal() {
    if !nri_harness::require_root(
        "a_prestop_longer_than_the_grace_period_still_leaves_the_app_its_signal",
    ) {
        return;
    }
    // Grace 5 s, a 20 s PreStop: the hook is cut so that the app gets SIGTERM with 2 s of the
    // grace period left, before the runtime's SIGKILL.
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let pod = cri
            .run_pod(&PodSpec::new("grace").annotation(
                "prestop.lifecycle.nri.io/container.app",
                r#"{"sleep":{"seconds":20}}"#,
            ))
            .await
            .expect("run pod");
        let shared = node.host_dir("grace").expect("host dir");
        let spec = ContainerSpec {
            args: vec!["--term-file".into(), "/shared/term".into()],
            ..ContainerSpec::new("app", images::BUSYBOX, &["/testapp"])
        }
        .annotation("io.kubernetes.pod.terminationGracePeriod", "5")
        .mount(&node.install().testapp(), "/testapp", true)
        .mount(&shared, "/shared", false);
        // The app has blocked SIGTERM for its handler only once it says "started".
        let (id, started) = cri
            .start_ready(&pod, &spec, "started ", Duration::from_secs(30))
            .await
            .expect("start");
        assert!(started.is_some(), "{v}: the app never started");
        cri.stop_container(&id, 5).await.expect("stop");
        let log = node.diagnostics();
        let status = cri.container_status(&id).await.expect("status");
        assert!(
            stamp(&shared.join("term")).is_some(),
            "{v}: the app never got SIGTERM (exit code {})\n{log}",
            status.exit_code
        );
        assert_eq!(
            status.exit_code, 0,
            "{v}: the app did not exit on its own SIGTERM handler\n{log}"
        );
        cri.remove_container(&id).await.expect("remove");
        cri.delete_pod(&pod).await.expect("delete pod");
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

/// A command that cannot run: without the gate the runtime refuses to start the container
/// (StartError, exit code 128, runc's error as the status message); with it, the container
/// starts and ends with the same exit code, and runc's error is in its log and in its
/// termination-message file, where the kubelet looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_command_that_cannot_run_reports_as_runc() {
    if !nri_harness::require_root("gated_command_that_cannot_run_reports_as_runc") {
        return;
    }
    // Not found, and a file without execute bits.
    let cases = [
        (
            "/no/such/binary",
            r#"exec: "/no/such/binary": stat /no/such/binary: no such file or directory"#,
        ),
        ("/etc/passwd", r#"exec: "/etc/passwd": permission denied"#),
    ];
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        for (n, (command, runc_error)) in cases.iter().enumerate() {
            // Without the gate: runc's own verdict.
            let pod = cri
                .run_pod(&PodSpec::new(&format!("plain-{n}")))
                .await
                .expect("run pod");
            let spec = ContainerSpec::new("app", images::BUSYBOX, &[command]);
            let id = cri.create_container(&pod, &spec).await.expect("create");
            let started = cri.start_container(&id).await;
            assert!(started.is_err(), "{v}: {command} started without the gate");
            let st = cri.container_status(&id).await.expect("status");
            assert_eq!(
                (st.exit_code, st.reason.as_str()),
                (128, "StartError"),
                "{v}: {command} without the gate"
            );
            assert!(
                st.message.contains(runc_error),
                "{v}: runc's message {:?} lacks {runc_error:?}",
                st.message
            );
            cri.remove_container(&id).await.expect("remove");
            cri.delete_pod(&pod).await.expect("delete pod");

            // With the gate: the same exit code and runc's words where the kubelet looks.
            let pod = cri
                .run_pod(&PodSpec::new(&format!("gated-{n}")).annotation(
                    "prestop.lifecycle.nri.io/container.app",
                    r#"{"sleep":{"seconds":1}}"#,
                ))
                .await
                .expect("run pod");
            let id = cri.create_container(&pod, &spec).await.expect("create");
            cri.start_container(&id).await.expect("start");
            let st = cri
                .wait_state(
                    &id,
                    ContainerState::ContainerExited,
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|e| panic!("{v}: {command}: {e}\n{}", node.diagnostics()));
            assert_eq!(st.exit_code, 128, "{v}: {command} with the gate");
            let log: Vec<(String, String)> = nri_harness::cri::read_log(Path::new(&st.log_path))
                .into_iter()
                .map(|l| (l.stream, l.text))
                .collect();
            assert_eq!(
                log,
                [("stderr".to_string(), runc_error.to_string())],
                "{v}: {command}: container log"
            );
            let message =
                std::fs::read_to_string(pod.log_dir.join(".term-app").join("termination-log"))
                    .unwrap_or_default();
            assert_eq!(message, *runc_error, "{v}: {command}: termination message");
            cri.remove_container(&id).await.expect("remove");
            cri.delete_pod(&pod).await.expect("delete pod");
        }
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
