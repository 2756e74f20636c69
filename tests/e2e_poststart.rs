//! End-to-end PostStart on containerd 1.7 and 2.1, driven like a kubelet: exec hooks run
//! inside the container, httpGet reaches the pod, sleep and tcpSocket need nothing in the
//! image, and a failed hook stops the container with a termination message.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nri_harness::cri::ContainerState;
use nri_harness::{images, ContainerSpec, Cri, Node, PluginMode, Pod, PodSpec, Version};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");
const KEY: &str = "poststart.lifecycle.nri.io/container.app";

async fn node(v: Version) -> Node {
    Node::start(v, PluginMode::Preinstalled(PathBuf::from(PLUGIN)))
        .await
        .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"))
}

/// Polls `path` until `pred` holds for its content, at most `limit`.
async fn wait_file(path: &Path, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if pred(&text) {
                return Some(text);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(cri: &mut Cri, pod_name: &str, spec: &ContainerSpec) -> (Pod, String) {
    let pod = cri.run_pod(&PodSpec::new(pod_name)).await.expect("run pod");
    let id = cri.create_container(&pod, spec).await.expect("create");
    cri.start_container(&id).await.expect("start");
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
        let done = wait_file(&shared.join("done"), Duration::from_secs(20), |t| {
            t.contains("done")
        })
        .await;
        assert!(
            done.is_some(),
            "{v}: the hook did not run:\n{}",
            diag(&node)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poststart_http_sleep_and_tcp_on_distroless() {
    if !nri_harness::require_root("poststart_http_sleep_and_tcp_on_distroless") {
        return;
    }
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let shared = node.host_dir("web").expect("host dir");
        let serve = |name: &str, hook: &str| {
            ContainerSpec {
                args: ["--http", "8080", "--log", &format!("/shared/{name}.log")]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
                ..ContainerSpec::new("app", images::DISTROLESS, &[])
            }
            .annotation(KEY, hook)
            .mount(&shared, "/shared", false)
        };
        // httpGet, with a header and a named port.
        let spec = serve(
            "http",
            r#"{"httpGet":{"path":"/started?x=1","port":"web","httpHeaders":[{"name":"X-Hook","value":"poststart"}]}}"#,
        )
        .annotation("io.kubernetes.container.ports", r#"[{"name":"web","containerPort":8080,"protocol":"TCP"}]"#);
        let (pod, id) = run(&mut cri, "http", &spec).await;
        let log = wait_file(&shared.join("http.log"), Duration::from_secs(20), |t| {
            t.contains("GET /started?x=1")
        })
        .await;
        let log =
            log.unwrap_or_else(|| panic!("{v}: no request reached the pod:\n{}", diag(&node)));
        let lower = log.to_lowercase();
        assert!(lower.contains("x-hook: poststart"), "{v}: {log}");
        assert!(lower.contains("user-agent: nri-lifecycle/"), "{v}: {log}");
        remove(&mut cri, pod, &id).await;

        // sleep and tcpSocket: nothing needed in the image.
        for (name, hook, handler) in [
            ("sleep", r#"{"sleep":{"seconds":1}}"#, "sleep"),
            ("tcp", r#"{"tcpSocket":{"port":8080}}"#, "tcpSocket"),
        ] {
            let (pod, id) = run(&mut cri, name, &serve(name, hook)).await;
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
                diag(&node)
            );
            let st = cri.container_status(&id).await.expect("status");
            assert_eq!(
                st.state,
                ContainerState::ContainerRunning as i32,
                "{v}: {name} container still runs"
            );
            remove(&mut cri, pod, &id).await;
        }
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
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
        let message = wait_file(&termination_log(&pod), Duration::from_secs(20), |t| {
            !t.is_empty()
        })
        .await;
        let message =
            message.unwrap_or_else(|| panic!("{v}: no termination message:\n{}", diag(&node)));
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

        // A hook that hangs past its timeout fails, and its processes are gone.
        let spec = ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
            .annotation(
                KEY,
                r#"{"exec":{"command":["sh","-c","sleep 3601 & sleep 3602"]},"timeoutSeconds":2}"#,
            )
            .annotation("io.kubernetes.pod.terminationGracePeriod", "3");
        let (pod, id) = run(&mut cri, "hanging", &spec).await;
        let started = wait_until(Duration::from_secs(10), || sleep_running("3602")).await;
        assert!(started, "{v}: the hook never started:\n{}", diag(&node));
        let message = wait_file(&termination_log(&pod), Duration::from_secs(20), |t| {
            !t.is_empty()
        })
        .await;
        let message =
            message.unwrap_or_else(|| panic!("{v}: hanging hook not failed:\n{}", diag(&node)));
        assert!(message.contains("timed out"), "{v}: {message}");
        // The timeout killed the hook's whole tree (the container, PID 1 ignoring SIGTERM, is
        // still within its grace period here).
        assert!(
            !sleep_running("3601") && !sleep_running("3602"),
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

async fn wait_until(limit: Duration, pred: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if pred() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pred()
}

/// What to show when a hook did not do what it should: the plugin's log and containerd's
/// lines about NRI plugins.
fn diag(node: &Node) -> String {
    let containerd: Vec<String> = node
        .containerd_log()
        .lines()
        .filter(|l| l.contains("plugin") && !l.contains("loading plugin") && !l.contains("skip"))
        .map(str::to_string)
        .collect();
    format!(
        "plugin log:\n{}\ncontainerd about plugins:\n{}",
        node.plugin_log(),
        containerd.join("\n")
    )
}
