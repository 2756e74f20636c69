//! End-to-end confinement of exec hooks on containerd 1.7 and 2.1: a PostStart exec hook runs
//! under the container's seccomp filter and OOM score adjustment, exactly as a `runc exec`
//! (CRI ExecSync) in the same container does; so does a PreStop exec hook. A profile the
//! plugin cannot serve (a seccomp notify action) fails the hook, never runs it unconfined.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nri_harness::cri::Seccomp;
use nri_harness::{images, ContainerSpec, Cri, Node, PluginMode, Pod, PodSpec, Version};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");
const KEY: &str = "poststart.lifecycle.nri.io/container.app";
const PRESTOP_KEY: &str = "prestop.lifecycle.nri.io/container.app";

async fn node(v: Version) -> Node {
    Node::start(v, PluginMode::Preinstalled(PathBuf::from(PLUGIN)))
        .await
        .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"))
}

async fn remove(cri: &mut Cri, pod: Pod, id: &str) {
    let _ = cri.stop_container(id, 2).await;
    cri.remove_container(id).await.expect("remove");
    cri.delete_pod(&pod).await.expect("delete pod");
}

/// Starts `spec` in a new pod.
async fn start(cri: &mut Cri, name: &str, spec: &ContainerSpec) -> (Pod, String) {
    let pod = cri.run_pod(&PodSpec::new(name)).await.expect("run pod");
    let id = cri.create_container(&pod, spec).await.expect("create");
    cri.start_container(&id).await.expect("start");
    (pod, id)
}

/// The seccomp and no_new_privs lines of a `/proc/<pid>/status`.
const STATUS: &str = "grep -E '^(Seccomp|Seccomp_filters|NoNewPrivs):' /proc/self/status";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_seccomp_and_oom_score_are_those_of_exec_sync() {
    if !nri_harness::require_root("runtime_default_seccomp_and_oom_score_are_those_of_exec_sync") {
        return;
    }
    let probe = format!(
        "{STATUS} > /shared/status; cat /proc/self/oom_score_adj > /shared/oom; \
         echo done > /shared/done"
    );
    let hook = serde_json::json!({"exec": {"command": ["sh", "-c", probe]}}).to_string();
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let shared = node.host_dir("confined").expect("host dir");
        let spec = ContainerSpec {
            seccomp: Some(Seccomp::RuntimeDefault),
            oom_score_adj: Some(777),
            ..ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
        }
        .annotation(KEY, &hook)
        .mount(&shared, "/shared", false);
        let (pod, id) = start(&mut cri, "confined", &spec).await;
        let done = nri_harness::wait_file(&shared.join("done"), Duration::from_secs(20), |t| {
            t.contains("done")
        })
        .await;
        assert!(
            done.is_some(),
            "{v}: the hook did not run:\n{}",
            node.diagnostics()
        );
        let reference = cri
            .exec_sync(
                &id,
                &[
                    "sh",
                    "-c",
                    &format!("{STATUS}; echo ---; cat /proc/self/oom_score_adj"),
                ],
                10,
            )
            .await
            .expect("exec");
        let parts: Vec<&str> = reference.stdout.split("---\n").collect();
        let read = |f: &str| std::fs::read_to_string(shared.join(f)).unwrap_or_default();
        assert_eq!(read("status"), parts[0], "{v}: seccomp as ExecSync's");
        assert!(
            read("status").contains("Seccomp:\t2"),
            "{v}: {}",
            read("status")
        );
        assert_eq!(read("oom"), parts[1], "{v}: oom_score_adj as ExecSync's");
        assert_eq!(read("oom").trim(), "777", "{v}");

        // What compiling the runtime's default profile costs, and what a hook pays once it
        // is cached.
        let config = node
            .paths()
            .state
            .join("io.containerd.runtime.v2.task/k8s.io")
            .join(&id)
            .join("config.json");
        let bytes = std::fs::read(&config).expect("bundle config.json");
        let spec: serde_json::Value = serde_json::from_slice(&bytes).expect("spec");
        let profile: nri_lifecycle::ns::seccomp::Profile =
            serde_json::from_value(spec["linux"]["seccomp"].clone()).expect("profile");
        let rounds = 10;
        let started = Instant::now();
        for _ in 0..rounds {
            let filter = nri_lifecycle::ns::seccomp::compile(&profile).expect("compiles");
            assert!(filter.program().len() > 100);
        }
        let compile = started.elapsed() / rounds;
        let started = Instant::now();
        for _ in 0..rounds {
            let c = nri_lifecycle::ns::confinement::Confinement::from_config(1, &config, &bytes)
                .expect("the runtime's default profile compiles");
            assert!(c.seccomp.is_some());
        }
        eprintln!(
            "{v}: default profile: compiled in {compile:?}; per hook with the cache: {:?}",
            started.elapsed() / rounds
        );

        remove(&mut cri, pod, &id).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_localhost_profile_refuses_the_hook_what_it_refuses_exec_sync() {
    if !nri_harness::require_root("a_localhost_profile_refuses_the_hook_what_it_refuses_exec_sync")
    {
        return;
    }
    let probe = format!(
        "mkdir /tmp/from-hook 2> /shared/err; echo $? > /shared/rc; {STATUS} > /shared/status; \
         echo done > /shared/done"
    );
    let hook = serde_json::json!({"exec": {"command": ["sh", "-c", probe]}}).to_string();
    let pre_probe = format!(
        "mkdir /tmp/from-prestop 2> /shared/pre-err; echo $? > /shared/pre-rc; \
         {STATUS} > /shared/pre-status"
    );
    let pre_hook = serde_json::json!({"exec": {"command": ["sh", "-c", pre_probe]}}).to_string();
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let shared = node.host_dir("nomkdir").expect("host dir");
        let profiles = node.host_dir("profiles").expect("host dir");
        let profile = profiles.join("no-mkdir.json");
        std::fs::write(
            &profile,
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .expect("write profile");
        let spec = ContainerSpec {
            seccomp: Some(Seccomp::Localhost(profile)),
            ..ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
        }
        .annotation(KEY, &hook)
        .annotation(PRESTOP_KEY, &pre_hook)
        .mount(&shared, "/shared", false);
        let (pod, id) = start(&mut cri, "nomkdir", &spec).await;
        let done = nri_harness::wait_file(&shared.join("done"), Duration::from_secs(20), |t| {
            t.contains("done")
        })
        .await;
        assert!(
            done.is_some(),
            "{v}: the hook did not run:\n{}",
            node.diagnostics()
        );
        let exec = cri
            .exec_sync(&id, &["mkdir", "/tmp/from-exec"], 10)
            .await
            .expect("exec");
        assert_ne!(exec.exit_code, 0, "{v}: ExecSync's mkdir was allowed");
        assert!(
            exec.stderr.contains("Operation not permitted"),
            "{v}: {}",
            exec.stderr
        );
        let read = |f: &str| std::fs::read_to_string(shared.join(f)).unwrap_or_default();
        assert_eq!(read("rc").trim(), "1", "{v}: the hook's mkdir was allowed");
        assert!(
            read("err").contains("Operation not permitted"),
            "{v}: {}",
            read("err")
        );
        assert!(
            read("status").contains("Seccomp:\t2"),
            "{v}: {}",
            read("status")
        );
        // The PreStop exec hook runs under the same filter before the stop signal.
        cri.stop_container(&id, 10).await.expect("stop");
        assert_eq!(
            read("pre-rc").trim(),
            "1",
            "{v}: the PreStop hook's mkdir was allowed (or the hook did not run):\n{}",
            node.diagnostics()
        );
        assert!(
            read("pre-err").contains("Operation not permitted"),
            "{v}: {}",
            read("pre-err")
        );
        assert!(
            read("pre-status").contains("Seccomp:\t2"),
            "{v}: {}",
            read("pre-status")
        );
        remove(&mut cri, pod, &id).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

/// Accepts the runtime's connections on a seccomp agent's socket and keeps them (with the
/// notify descriptors runc sends) open until the test ends, answering nothing: the container
/// only needs an agent to start.
fn seccomp_agent(path: &std::path::Path) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(path).expect("agent socket");
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming() {
            match stream {
                Ok(s) => kept.push(s),
                Err(_) => return,
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_profile_fails_the_hook_and_the_plugin_keeps_serving() {
    if !nri_harness::require_root("a_notify_profile_fails_the_hook_and_the_plugin_keeps_serving") {
        return;
    }
    for v in Version::ALL {
        let node = node(v).await;
        let mut cri = node.cri().await.expect("cri");
        let shared = node.host_dir("notify").expect("host dir");
        let profiles = node.host_dir("notify-profiles").expect("host dir");
        let agent = profiles.join("agent.sock");
        let _agent = seccomp_agent(&agent);
        let profile = profiles.join("notify.json");
        let text = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": agent,
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
        });
        std::fs::write(&profile, text.to_string()).expect("write profile");
        let spec = ContainerSpec {
            seccomp: Some(Seccomp::Localhost(profile)),
            ..ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
        }
        .annotation(
            KEY,
            r#"{"exec":{"command":["sh","-c","echo ran > /shared/ran"]}}"#,
        )
        .annotation("io.kubernetes.pod.terminationGracePeriod", "3")
        .mount(&shared, "/shared", false);
        let (pod, id) = start(&mut cri, "notify", &spec).await;
        // As in Kubernetes, the failed PostStart stops the container, with the reason.
        let term = pod.log_dir.join(".term-app").join("termination-log");
        let message = nri_harness::wait_file(&term, Duration::from_secs(20), |t| !t.is_empty())
            .await
            .unwrap_or_else(|| panic!("{v}: no termination message:\n{}", node.diagnostics()));
        assert!(
            message.starts_with("PostStart hook failed") && message.contains("SCMP_ACT_NOTIFY"),
            "{v}: {message}"
        );
        assert!(
            !shared.join("ran").exists(),
            "{v}: the hook ran although its container's filter could not be applied"
        );
        remove(&mut cri, pod, &id).await;

        // The plugin still serves: the next container's hook runs.
        let next = ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
            .annotation(
                KEY,
                r#"{"exec":{"command":["sh","-c","echo ran > /shared/next"]}}"#,
            )
            .mount(&shared, "/shared", false);
        let (pod, id) = start(&mut cri, "after-notify", &next).await;
        let ran = nri_harness::wait_file(&shared.join("next"), Duration::from_secs(20), |t| {
            t.contains("ran")
        })
        .await;
        assert!(
            ran.is_some(),
            "{v}: the plugin stopped serving after a notify profile:\n{}",
            node.diagnostics()
        );
        remove(&mut cri, pod, &id).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
