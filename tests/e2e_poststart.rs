//! End-to-end PostStart on containerd 1.7 and 2.1, driven like a kubelet: exec hooks run
//! inside the container, httpGet reaches the pod, sleep and tcpSocket need nothing in the
//! image, and a failed hook stops the container with a termination message.

use std::path::PathBuf;
use std::time::Duration;

use nri_harness::cri::ContainerState;
use nri_harness::{images, ContainerSpec, Cri, Node, PluginMode, Pod, PodSpec, Version};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");
const KEY: &str = "poststart.lifecycle.nri.io/container.app";

async fn node(v: Version) -> Node {
    Node::start(v, PluginMode::Preinstalled(PathBuf::from(PLUGIN)))
        .await
        .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"))
}

async fn run(cri: &mut Cri, pod_name: &str, spec: &ContainerSpec) -> (Pod, String) {
    let pod = cri.run_pod(&PodSpec::new(pod_name)).await.expect("run pod");
    let id = start_in(cri, &pod, spec).await;
    (pod, id)
}

async fn remove(cri: &mut Cri, pod: Pod, id: &str) {
    let _ = cri.stop_container(id, 2).await;
    cri.remove_container(id).await.expect("remove");
    cri.delete_pod(&pod).await.expect("delete pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poststart_exec_runs_inside_the_container() {
    if !nri_harness::require_root("poststart_exec_runs_inside_the_container") {
        return;
    }
    let probe = "for n in pid net mnt ipc uts cgroup user; do echo $n $(readlink /proc/self/ns/$n); done > /shared/ns; \
                 id > /shared/id; pwd > /shared/cwd; env | grep -v '^PWD=\\|^SHLVL=\\|^_=' | sort > /shared/env; \
                 cat /proc/self/cgroup > /shared/cgroup; grep '^Cap' /proc/self/status > /shared/caps; echo done > /shared/done";
    let hook = serde_json::json!({"exec": {"command": ["sh", "-c", probe]}}).to_string();
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let shared = node.host_dir("probe").expect("host dir");
        let spec = ContainerSpec {
            env: vec![("GREETING".into(), "hello from the spec".into())],
            ..ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
        }
        .annotation(KEY, &hook)
        .mount(&shared, "/shared", false);
        let (pod, id) = run(&mut cri, "probe", &spec).await;
        let done = nri_harness::wait_file(&shared.join("done"), Duration::from_secs(20), |t| {
            t.contains("done")
        })
        .await;
        assert!(
            done.is_some(),
            "{v}: the hook did not run:\n{}",
            node.diagnostics()
        );
        let pid = cri.container_pid(&id).await.expect("pid");
        // Same namespaces as the container's init.
        let ns = std::fs::read_to_string(shared.join("ns")).unwrap_or_default();
        for line in ns.lines() {
            let mut parts = line.split_whitespace();
            let (Some(kind), Some(seen)) = (parts.next(), parts.next()) else {
                panic!("{v}: bad ns line {line:?}");
            };
            let init = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("init ns");
            assert_eq!(
                seen,
                init.to_string_lossy(),
                "{v}: {kind} namespace differs from the container's"
            );
        }
        // Same identity, cgroups, capabilities and environment as a `runc exec` (CRI ExecSync).
        let reference = cri
            .exec_sync(
                &id,
                &["sh", "-c", "id; echo ---; pwd; echo ---; env | grep -v '^PWD=\\|^SHLVL=\\|^_=' | sort; echo ---; cat /proc/self/cgroup; echo ---; grep '^Cap' /proc/self/status"],
                10,
            )
            .await
            .expect("exec");
        let parts: Vec<&str> = reference.stdout.split("---\n").collect();
        let read = |f: &str| std::fs::read_to_string(shared.join(f)).unwrap_or_default();
        assert_eq!(read("id"), parts[0], "{v}: user and groups");
        assert_eq!(read("cwd"), parts[1], "{v}: working directory");
        assert_eq!(read("env"), parts[2], "{v}: environment");
        assert!(
            read("env").contains("GREETING=hello from the spec"),
            "{v}: env: {}",
            read("env")
        );
        assert_eq!(read("cgroup"), parts[3], "{v}: cgroups");
        assert_eq!(read("caps"), parts[4], "{v}: capability sets");
        remove(&mut cri, pod, &id).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

/// A pod whose container `web` (the test app) serves HTTP on port 8080 and logs each request
/// to `<shared>/web.log`. Returns only once the server listens, so the hooks of the pod's
/// other containers, which reach it over the network namespace the pod's containers share,
/// never depend on how soon a server gets round to listening after its start.
async fn serving_pod(node: &Node, cri: &mut Cri, name: &str) -> (Pod, String, PathBuf) {
    let shared = node.host_dir(name).expect("host dir");
    let pod = cri.run_pod(&PodSpec::new(name)).await.expect("run pod");
    let web = ContainerSpec {
        args: ["--http", "8080", "--log", "/shared/web.log"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..ContainerSpec::new("web", images::DISTROLESS, &[])
    }
    .mount(&shared, "/shared", false);
    let id = cri.create_container(&pod, &web).await.expect("create web");
    cri.start_container(&id).await.expect("start web");
    // The app writes this line once its socket is bound and listening.
    let listening = nri_harness::wait_file(&shared.join("web.log"), Duration::from_secs(30), |t| {
        t.lines()
            .any(|l| l.starts_with("listening ") && l.ends_with(" port 8080"))
    })
    .await;
    assert!(
        listening.is_some(),
        "the web container never listened:\n{}",
        node.diagnostics()
    );
    (pod, id, shared)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poststart_http_sleep_and_tcp_on_distroless() {
    if !nri_harness::require_root("poststart_http_sleep_and_tcp_on_distroless") {
        return;
    }
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        // The hooks target port 8080 of the pod, served by another container of the same pod
        // that is already listening: the hooked containers are distroless and serve nothing.
        let (pod, web, shared) = serving_pod(&node, &mut cri, "web").await;
        let hooked = |name: &str, hook: &str| {
            ContainerSpec::new(name, images::DISTROLESS, &[]).annotation(
                &format!("poststart.lifecycle.nri.io/container.{name}"),
                hook,
            )
        };

        // httpGet, with a header and a named port.
        let spec = hooked(
            "http",
            r#"{"httpGet":{"path":"/started?x=1","port":"web","httpHeaders":[{"name":"X-Hook","value":"poststart"}]}}"#,
        )
        .annotation("io.kubernetes.container.ports", r#"[{"name":"web","containerPort":8080,"protocol":"TCP"}]"#);
        let id = start_in(&mut cri, &pod, &spec).await;
        let log = nri_harness::wait_file(&shared.join("web.log"), Duration::from_secs(20), |t| {
            t.contains("GET /started?x=1")
        })
        .await;
        let log = log
            .unwrap_or_else(|| panic!("{v}: no request reached the pod:\n{}", node.diagnostics()));
        let lower = log.to_lowercase();
        assert!(lower.contains("x-hook: poststart"), "{v}: {log}");
        assert!(lower.contains("user-agent: nri-lifecycle/"), "{v}: {log}");
        stop_and_remove(&mut cri, &id).await;

        // sleep and tcpSocket: nothing needed in the image.
        for (name, hook, handler) in [
            ("sleep", r#"{"sleep":{"seconds":1}}"#, "sleep"),
            ("tcp", r#"{"tcpSocket":{"port":8080}}"#, "tcpSocket"),
        ] {
            let id = start_in(&mut cri, &pod, &hooked(name, hook)).await;
            let ok = node
                .wait_plugin_log(Duration::from_secs(20), |l| {
                    l.lines().any(|line| {
                        line.contains("hook succeeded")
                            && line.contains(&id)
                            && line.contains(handler)
                    })
                })
                .await;
            assert!(
                ok.is_some(),
                "{v}: {handler} hook did not succeed:\n{}",
                node.diagnostics()
            );
            let st = cri.container_status(&id).await.expect("status");
            assert_eq!(
                st.state,
                ContainerState::ContainerRunning as i32,
                "{v}: {name} container still runs"
            );
            stop_and_remove(&mut cri, &id).await;
        }
        remove(&mut cri, pod, &web).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

async fn start_in(cri: &mut Cri, pod: &Pod, spec: &ContainerSpec) -> String {
    let id = cri.create_container(pod, spec).await.expect("create");
    cri.start_container(&id).await.expect("start");
    id
}

async fn stop_and_remove(cri: &mut Cri, id: &str) {
    cri.stop_container(id, 2).await.expect("stop");
    cri.remove_container(id).await.expect("remove");
}

fn termination_log(pod: &Pod) -> PathBuf {
    pod.log_dir.join(".term-app").join("termination-log")
}

/// Whether any process on the host runs `sleep <arg>`.
fn sleep_running(arg: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == arg.as_bytes()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_poststart_stops_the_container_with_a_message() {
    if !nri_harness::require_root("failed_poststart_stops_the_container_with_a_message") {
        return;
    }
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let spec = ContainerSpec::new(
            "app",
            images::BUSYBOX,
            &["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
        )
        .annotation(
            KEY,
            r#"{"exec":{"command":["sh","-c","echo cannot warm the cache; exit 3"]}}"#,
        )
        .annotation("io.kubernetes.pod.terminationGracePeriod", "5");
        let (pod, id) = run(&mut cri, "failing", &spec).await;
        let message =
            nri_harness::wait_file(&termination_log(&pod), Duration::from_secs(20), |t| {
                !t.is_empty()
            })
            .await;
        let message = message
            .unwrap_or_else(|| panic!("{v}: no termination message:\n{}", node.diagnostics()));
        assert!(
            message.starts_with("PostStart hook failed: "),
            "{v}: {message}"
        );
        assert!(
            message.contains("cannot warm the cache"),
            "{v}: output missing: {message}"
        );
        assert!(message.contains('3'), "{v}: exit status missing: {message}");
        cri.wait_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("{v}: container not stopped after a failed PostStart: {e}"));
        remove(&mut cri, pod, &id).await;

        // A hook that hangs past its timeout fails, and its processes are gone. The sleeps'
        // arguments are unique to this test process: other tests on the machine may run the
        // same hook at the same time. The hook marks that it got past forking the background
        // sleep (a file stays; a process might be missed), well within its timeout.
        let (bg, fg) = hanging_sleeps();
        let shared = node.host_dir("hanging").expect("host dir");
        let hook = serde_json::json!({
            "exec": {"command": ["sh", "-c", format!("sleep {bg} & touch /shared/forked; sleep {fg}")]},
            "timeoutSeconds": 10,
        })
        .to_string();
        let spec = ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
            .annotation(KEY, &hook)
            .annotation("io.kubernetes.pod.terminationGracePeriod", "3")
            .mount(&shared, "/shared", false);
        let (pod, id) = run(&mut cri, "hanging", &spec).await;
        let forked =
            nri_harness::wait_file(&shared.join("forked"), Duration::from_secs(20), |_| true).await;
        assert!(
            forked.is_some(),
            "{v}: the hook never started:\n{}",
            node.diagnostics()
        );
        let message =
            nri_harness::wait_file(&termination_log(&pod), Duration::from_secs(30), |t| {
                !t.is_empty()
            })
            .await;
        let message = message
            .unwrap_or_else(|| panic!("{v}: hanging hook not failed:\n{}", node.diagnostics()));
        assert!(message.contains("timed out"), "{v}: {message}");
        // The timeout killed the hook's whole tree before the hook was reported failed (the
        // container, PID 1 ignoring SIGTERM, is still within its grace period here).
        assert!(
            !sleep_running(&bg) && !sleep_running(&fg),
            "{v}: hook processes survived the timeout"
        );
        cri.wait_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("{v}: container not killed after its grace period: {e}"));
        let st = cri.container_status(&id).await.expect("status");
        assert_eq!(st.exit_code, 137, "{v}: SIGKILL after the grace period");
        remove(&mut cri, pod, &id).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

/// `sleep` arguments for the hanging hook that no other process on the machine uses: built
/// from this test process's PID.
fn hanging_sleeps() -> (String, String) {
    let pid = std::process::id();
    (format!("3601{pid}"), format!("3602{pid}"))
}
