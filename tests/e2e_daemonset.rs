//! The DaemonSet of `deploy/kubernetes` on containerd 1.7 and 2.1 with nothing installed on
//! the node. The image `make image` builds is imported with containerd's own `ctr` (and is
//! then known to CRI under the name a pod spec uses), and its pod is run through CRI the way the kubelet runs it: hostPID, mounts and propagation,
//! security context, resources, arguments and the ConfigMap's config all come from the YAML
//! (parsed, never restated here). Then the plugin must register externally, run a PostStart
//! and a PreStop exec hook in another pod, answer its probes and count the hooks in
//! `/metrics`, and, killed and started again, hold the PreStop of a pod that was gated by
//! the plugin's previous instance.
//!
//! The harness node keeps every path private, so the node paths of the manifests are mapped
//! (the same mapping for hostPath sources, mount points, arguments and the config):
//!
//! | node path (manifests)             | harness node                                    |
//! |-----------------------------------|-------------------------------------------------|
//! | `/var/run/nri`                    | the directory of the node's NRI socket          |
//! | `/run/containerd/containerd.sock` | the node's containerd socket (same directory as the NRI socket, so the pod reaches it through that volume) |
//! | `/run/containerd`                 | the node's containerd state directory           |
//! | `/run/nri-lifecycle`              | `plugin-run` in the node directory              |
//! | `/var/lib/kubelet/pods`           | the node's pod directory, where the harness keeps each pod's termination-message files as the kubelet does |
//!
//! `/sys/fs/cgroup` is the host's own. The node's state and pod directories are made shared
//! mounts first, as a systemd host's are: containerd refuses `HostToContainer` otherwise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nri_harness::cri::ContainerState;
use nri_harness::manifests::{self, Manifests, PathMap, PodPlan};
use nri_harness::node::{registered, NodeOptions};
use nri_harness::{
    images, stamp, unix_now, ContainerSpec, Cri, Node, PluginMode, Pod, PodSpec, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The archive `make image` writes (a dependency of `make test`).
fn image_tar() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target"));
    let tar = target.join("image").join("nri-lifecycle.tar");
    assert!(
        tar.is_file(),
        "{} is missing: run `make image` (make test does)",
        tar.display()
    );
    tar
}

/// The value following `flag` in the container's arguments.
fn arg<'a>(plan: &'a PodPlan, flag: &str) -> &'a str {
    let args = &plan.container.args;
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("the DaemonSet passes no {flag}: {args:?}"))
}

/// How many times containerd's log says the plugin `name` registered (or connected).
fn registrations(node: &Node, name: &str) -> usize {
    node.containerd_log()
        .lines()
        .filter(|l| registered(l, name))
        .count()
}

/// `GET path` on the plugin's listener; the status code.
async fn http_status(ip: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(3), fut)
        .await
        .map_err(|_| std::io::Error::other("timed out"))?
}

/// Polls `path` until it answers 200, at most `limit`; the last answer or error otherwise.
async fn wait_200(ip: &str, port: u16, path: &str, limit: Duration) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let last = match http_status(ip, port, path).await {
            Ok((200, body)) => return Ok(body),
            Ok((code, body)) => format!("{code} {body}"),
            Err(e) => e.to_string(),
        };
        if start.elapsed() > limit {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The DaemonSet's pod on one node: started, registered, ready.
struct PluginPod {
    pod: Pod,
    id: String,
    ip: String,
}

async fn start_plugin_container(
    v: Version,
    node: &Node,
    cri: &mut Cri,
    plan: &PodPlan,
    pod: Pod,
    ip: String,
) -> PluginPod {
    let name = arg(plan, "--name").to_string();
    let before = registrations(node, &name);
    let id = cri
        .create_container(&pod, &plan.container)
        .await
        .unwrap_or_else(|e| panic!("{v}: create the plugin container: {e}"));
    cri.start_container(&id)
        .await
        .unwrap_or_else(|e| panic!("{v}: start the plugin container: {e}"));
    cri.wait_state(
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("{v}: plugin container: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while registrations(node, &name) <= before {
        if Instant::now() > deadline {
            let st = cri.container_status(&id).await.expect("status");
            panic!(
                "{v}: the plugin never registered externally\nplugin container log:\n{}\n{}",
                nri_harness::cri::log_text(&st),
                node.diagnostics()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (path, port) = plan.readiness.clone().expect("a readiness probe");
    if let Err(last) = wait_200(&ip, port, &path, Duration::from_secs(20)).await {
        let st = cri.container_status(&id).await.expect("status");
        panic!(
            "{v}: {path} never answered 200 (last: {last})\nplugin container log:\n{}",
            nri_harness::cri::log_text(&st)
        );
    }
    PluginPod { pod, id, ip }
}

/// A pod with one container `app`: the test app, which records its SIGTERM in
/// /shared/term, with the given container annotations. It runs the runtime's default seccomp
/// profile, so its exec hooks load a filter compiled by the image's statically linked
/// libseccomp.
async fn start_app(
    node: &Node,
    cri: &mut Cri,
    name: &str,
    annotations: &[(&str, &str)],
) -> (Pod, String, PathBuf) {
    let pod = cri.run_pod(&PodSpec::new(name)).await.expect("run pod");
    let shared = node.host_dir(name).expect("host dir");
    let mut spec = ContainerSpec {
        args: vec!["--term-file".into(), "/shared/term".into()],
        seccomp: Some(nri_harness::cri::Seccomp::RuntimeDefault),
        ..ContainerSpec::new("app", images::BUSYBOX, &["/testapp"])
    }
    .mount(&node.install().testapp(), "/testapp", true)
    .mount(&shared, "/shared", false);
    for (k, v) in annotations {
        spec = spec.annotation(k, v);
    }
    let id = cri.create_container(&pod, &spec).await.expect("create app");
    cri.start_container(&id).await.expect("start app");
    let line = cri
        .wait_log_line(&id, Duration::from_secs(30), |l| l.starts_with("started "))
        .await
        .expect("app log");
    assert!(
        line.is_some(),
        "the app never started:\n{}",
        node.diagnostics()
    );
    (pod, id, shared)
}

const PRESTOP: &str = r#"{"exec":{"command":["sh","-c","/testapp write /shared/prestop {now}; sleep 2; /testapp write /shared/prestop-end {now}"]}}"#;

/// Stops the app and checks its PreStop held the SIGTERM for the hook's 2 s.
async fn stop_held(v: Version, what: &str, cri: &mut Cri, id: &str, shared: &Path) {
    let asked = unix_now();
    cri.stop_container(id, 30).await.expect("stop app");
    let start = stamp(&shared.join("prestop"))
        .unwrap_or_else(|| panic!("{v}: {what}: PreStop did not run"));
    let end = stamp(&shared.join("prestop-end"))
        .unwrap_or_else(|| panic!("{v}: {what}: PreStop did not finish"));
    let term = stamp(&shared.join("term"))
        .unwrap_or_else(|| panic!("{v}: {what}: the app never got SIGTERM"));
    assert!(asked <= start, "{v}: {what}: PreStop before the stop");
    assert!(
        end <= term && term - start >= 2.0,
        "{v}: {what}: SIGTERM at {term} did not wait for PreStop ({start}..{end})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_runs_the_plugin_from_its_image() {
    if !nri_harness::require_root("daemonset_runs_the_plugin_from_its_image") {
        return;
    }
    let tar = image_tar();
    let manifests = Manifests::load(&Path::new(REPO).join("deploy/kubernetes"))
        .expect("deploy/kubernetes parses");
    for v in Version::ALL {
        let opts = NodeOptions {
            plugin_config: None,
            ..NodeOptions::default()
        };
        let mut node = Node::start_with(v, PluginMode::None, opts)
            .await
            .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"));
        let p = node.paths().clone();
        for dir in [&p.state, &p.pod_logs] {
            node.make_shared(dir).expect("shared mount");
        }
        node.import_tar(&tar)
            .unwrap_or_else(|e| panic!("{v}: ctr images import: {e}"));
        let nri_dir = p.nri_socket.parent().expect("socket dir");
        let map = PathMap::new()
            .with("/var/run/nri", nri_dir)
            .with("/run/containerd/containerd.sock", &p.grpc_socket)
            .with("/run/containerd", &p.state)
            .with("/run/nri-lifecycle", &p.dir.join("plugin-run"))
            .with("/var/lib/kubelet/pods", &p.pod_logs);
        let work = node.host_dir("daemonset").expect("work dir");
        let plan = manifests::plan(&manifests, &map, &work).expect("translate the DaemonSet");
        assert_eq!(
            arg(&plan, "--socket"),
            p.nri_socket.to_string_lossy(),
            "{v}: the mapped --socket is the node's NRI socket"
        );
        let mut cri = node.cri().await.expect("cri");

        // The DaemonSet's pod, as the kubelet starts it.
        let pod = cri
            .run_pod(&plan.pod)
            .await
            .unwrap_or_else(|e| panic!("{v}: plugin pod: {e}"));
        let ip = cri.pod_ip(&pod.id).await.expect("pod ip");
        node.check_pod_route(&ip)
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        let plugin = start_plugin_container(v, &node, &mut cri, &plan, pod, ip).await;
        // Its log is the container's log, one JSON object per line.
        let st = cri.container_status(&plugin.id).await.expect("status");
        let log = nri_harness::cri::log_text(&st);
        assert!(
            !log.is_empty()
                && log.lines().all(|l| serde_json::from_str::<
                    serde_json::Map<String, serde_json::Value>,
                >(l)
                .is_ok()),
            "{v}: the plugin's log is not JSON lines:\n{log}"
        );
        // The runtime applied the security context: a filtered, unprivileged root process.
        let pid = cri.container_pid(&plugin.id).await.expect("plugin pid");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        let security = plan.container.security.clone().expect("a security context");
        if security.seccomp.as_deref() == Some("RuntimeDefault") {
            assert_eq!(field("Seccomp:"), "2", "{v}: the default seccomp filter");
        }
        assert_eq!(field("NoNewPrivs:"), "0", "{v}: no_new_privs off");
        let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff");
        let bnd = u64::from_str_radix(&field("CapBnd:"), 16).expect("CapBnd");
        assert!(
            !security.privileged
                && eff == bnd
                && eff.count_ones() as usize == security.add_capabilities.len(),
            "{v}: the plugin holds exactly the {} capabilities it is given (CapEff {eff:x})",
            security.add_capabilities.len()
        );
        let (live, live_port) = plan.liveness.clone().expect("a liveness probe");
        wait_200(&plugin.ip, live_port, &live, Duration::from_secs(5))
            .await
            .unwrap_or_else(|last| panic!("{v}: {live}: {last}"));

        // A pod with a PostStart and a PreStop exec hook.
        let (app_pod, app, shared) = start_app(
            &node,
            &mut cri,
            "hooked",
            &[
                (
                    "poststart.lifecycle.nri.io/container.app",
                    r#"{"exec":{"command":["sh","-c","grep Seccomp: /proc/self/status > /shared/poststart"]}}"#,
                ),
                ("prestop.lifecycle.nri.io/container.app", PRESTOP),
            ],
        )
        .await;
        let ran = nri_harness::wait_file(&shared.join("poststart"), Duration::from_secs(10), |s| {
            !s.trim().is_empty()
        })
        .await;
        if ran.is_none() {
            let st = cri.container_status(&plugin.id).await.expect("status");
            panic!(
                "{v}: PostStart did not run\nplugin log:\n{}",
                nri_harness::cri::log_text(&st)
            );
        }
        // the hook ran under the container's filter (mode 2), compiled in the image's binary
        assert_eq!(
            ran.as_deref().map(str::trim),
            Some("Seccomp:\t2"),
            "{v}: the PostStart hook's seccomp mode"
        );
        stop_held(v, "first instance", &mut cri, &app, &shared).await;
        cri.remove_container(&app).await.expect("remove app");
        cri.delete_pod(&app_pod).await.expect("delete app pod");

        // A failing PostStart: the container is stopped with the kubelet's message in its
        // termination-message file (written from inside the plugin's pod).
        let (failed_pod, failed, _) = start_app(
            &node,
            &mut cri,
            "poststart-fails",
            &[(
                "poststart.lifecycle.nri.io/container.app",
                r#"{"exec":{"command":["/testapp","exit","3"]}}"#,
            )],
        )
        .await;
        let st = cri
            .wait_state(
                &failed,
                ContainerState::ContainerExited,
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|e| panic!("{v}: a failed PostStart stops the container: {e}"));
        let term_file = failed_pod.log_dir.join(".term-app").join("termination-log");
        let message = std::fs::read_to_string(&term_file).unwrap_or_default();
        assert!(
            message.starts_with("PostStart hook failed"),
            "{v}: termination message {message:?} (status message {:?})\nplugin log:\n{}",
            st.message,
            nri_harness::cri::log_text(&cri.container_status(&plugin.id).await.expect("status"))
        );
        cri.remove_container(&failed).await.expect("remove app");
        cri.delete_pod(&failed_pod).await.expect("delete app pod");

        // The probes and the metrics on the pod IP.
        let metrics = wait_200(&plugin.ip, live_port, "/metrics", Duration::from_secs(5))
            .await
            .unwrap_or_else(|last| panic!("{v}: /metrics: {last}"));
        for want in [
            "nri_lifecycle_hooks_total{phase=\"postStart\",handler=\"exec\",result=\"succeeded\"} 1",
            "nri_lifecycle_hooks_total{phase=\"preStop\",handler=\"exec\",result=\"succeeded\"} 1",
            "nri_lifecycle_hooks_total{phase=\"postStart\",handler=\"exec\",result=\"failed\"} 1",
            "nri_lifecycle_registered 1",
        ] {
            assert!(
                metrics.lines().any(|l| l == want),
                "{v}: /metrics lacks {want:?}:\n{metrics}"
            );
        }

        // Restart: a pod gated by this instance, the plugin container killed and started
        // again (what a liveness failure or a rollout does); the new instance holds its stop.
        let (held_pod, held, held_shared) = start_app(
            &node,
            &mut cri,
            "gated-before",
            &[("prestop.lifecycle.nri.io/container.app", PRESTOP)],
        )
        .await;
        cri.stop_container(&plugin.id, plan.grace_seconds)
            .await
            .expect("stop plugin");
        cri.remove_container(&plugin.id)
            .await
            .expect("remove plugin");
        let plugin = start_plugin_container(
            v,
            &node,
            &mut cri,
            &plan,
            plugin.pod.clone(),
            plugin.ip.clone(),
        )
        .await;
        stop_held(v, "after a plugin restart", &mut cri, &held, &held_shared).await;
        cri.remove_container(&held).await.expect("remove app");
        cri.delete_pod(&held_pod).await.expect("delete app pod");

        // containerd restarted under the running DaemonSet pod (its shim and every container
        // live on). The plugin finds the new NRI socket in its mounted socket directory and
        // registers again; a pod gated before the restart still holds its stop, and a pod
        // created after it is gated too (on 1.7 through the stored-spec rewrite, over the
        // containerd socket that the read-only /run/containerd mount shows again).
        let (kept_pod, kept, kept_shared) = start_app(
            &node,
            &mut cri,
            "gated-before-restart",
            &[("prestop.lifecycle.nri.io/container.app", PRESTOP)],
        )
        .await;
        drop(cri);
        node.restart_containerd()
            .await
            .unwrap_or_else(|e| panic!("{v}: restart containerd: {e}"));
        let name = arg(&plan, "--name").to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        // The log starts afresh with the new containerd.
        while registrations(&node, &name) == 0 {
            assert!(
                Instant::now() < deadline,
                "{v}: the plugin never registered with the restarted containerd\n{}",
                node.diagnostics()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut cri = node.cri().await.expect("cri after the restart");
        let (ready, ready_port) = plan.readiness.clone().expect("a readiness probe");
        wait_200(&plugin.ip, ready_port, &ready, Duration::from_secs(20))
            .await
            .unwrap_or_else(|last| panic!("{v}: {ready} after the restart: {last}"));
        let (after_pod, after, after_shared) = start_app(
            &node,
            &mut cri,
            "gated-after-restart",
            &[("prestop.lifecycle.nri.io/container.app", PRESTOP)],
        )
        .await;
        stop_held(
            v,
            "gated before a containerd restart",
            &mut cri,
            &kept,
            &kept_shared,
        )
        .await;
        stop_held(
            v,
            "gated after a containerd restart",
            &mut cri,
            &after,
            &after_shared,
        )
        .await;
        for (pod, id) in [(&kept_pod, &kept), (&after_pod, &after)] {
            cri.remove_container(id).await.expect("remove app");
            cri.delete_pod(pod).await.expect("delete app pod");
        }

        cri.stop_container(&plugin.id, plan.grace_seconds)
            .await
            .expect("stop plugin");
        cri.remove_container(&plugin.id)
            .await
            .expect("remove plugin");
        cri.delete_pod(&plugin.pod)
            .await
            .expect("delete plugin pod");
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_imports_with_ctr() {
    if !nri_harness::require_root("image_imports_with_ctr") {
        return;
    }
    let tar = image_tar();
    for v in Version::ALL {
        let opts = NodeOptions {
            plugin_config: None,
            ..NodeOptions::default()
        };
        let node = Node::start_with(v, PluginMode::None, opts)
            .await
            .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"));
        node.import_tar(&tar)
            .unwrap_or_else(|e| panic!("{v}: ctr images import: {e}"));
        let mut cri = node.cri().await.expect("cri");
        let name = format!(
            "docker.io/library/nri-lifecycle:{}",
            env!("CARGO_PKG_VERSION")
        );
        let images = cri.list_images().await.expect("list images");
        assert!(
            images.contains(&name),
            "{v}: CRI does not list {name}: {images:?}"
        );
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
