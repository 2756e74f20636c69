//! End-to-end reach and policy on containerd 1.7 and 2.1, driven like a kubelet:
//!
//! - with the default config, httpGet PostStart and PreStop hooks whose `host` is another
//!   pod's IP reach that pod (what Kubernetes' node conformance tests for lifecycle hooks
//!   do), from the hooked pod's own address;
//! - a policy that denies the pods' network refuses such hooks at `CreateContainer`, and a
//!   hook whose host is a name (from the container's own `/etc/hosts`) when it runs, each
//!   with the rule that refused it;
//! - a policy that allows exec hooks only in some namespaces refuses them elsewhere at
//!   `CreateContainer`, naming the rule, and lets them run where it allows them.
//!
//! Traffic goes only to pod IPs on the node's private CNI bridge.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nri_harness::cri::ContainerState;
use nri_harness::net::PodNetwork;
use nri_harness::node::{NodeOptions, DEFAULT_PLUGIN_CONFIG};
use nri_harness::{images, ContainerSpec, Cri, Node, PluginMode, Pod, PodSpec, Version};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");
const POST_START: &str = "poststart.lifecycle.nri.io/container.app";
const PRE_STOP: &str = "prestop.lifecycle.nri.io/container.app";
const WAIT: Duration = Duration::from_secs(30);

async fn node(v: Version, plugin_config: String) -> Node {
    let opts = NodeOptions {
        plugin_config: Some(plugin_config),
        ..NodeOptions::default()
    };
    Node::start_with(v, PluginMode::Preinstalled(PathBuf::from(PLUGIN)), opts)
        .await
        .unwrap_or_else(|e| panic!("{v}: node did not start: {e}"))
}

/// A pod whose test app serves HTTP on port 8080, logging each request (with the peer's
/// address) to `<shared>/web.log`. Returns once it listens, with the pod's IP.
async fn server_pod(node: &Node, cri: &mut Cri) -> (Pod, String, String, PathBuf) {
    let shared = node.host_dir("server").expect("host dir");
    let pod = cri.run_pod(&PodSpec::new("server")).await.expect("run pod");
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
    let listening = nri_harness::wait_file(&shared.join("web.log"), WAIT, |t| {
        t.lines()
            .any(|l| l.starts_with("listening ") && l.ends_with(" port 8080"))
    })
    .await;
    assert!(
        listening.is_some(),
        "the server never listened:\n{}",
        node.diagnostics()
    );
    let ip = cri.pod_ip(&pod.id).await.expect("server pod ip");
    assert!(!ip.is_empty(), "the server pod has no IP");
    node.check_pod_route(&ip).expect("pod route");
    (pod, id, ip, shared)
}

fn http_hook(host: &str, path: &str) -> String {
    serde_json::json!({"httpGet": {"host": host, "port": 8080, "path": path}}).to_string()
}

/// The request line the server logged for `path`, once it arrives.
async fn request(log: &Path, path: &str) -> Option<String> {
    let needle = format!(" GET {path} ");
    let text = nri_harness::wait_file(log, WAIT, |t| t.contains(&needle)).await?;
    text.lines()
        .find(|l| l.contains(&needle))
        .map(str::to_string)
}

async fn remove_pod(cri: &mut Cri, pod: Pod, ids: &[&str]) {
    for id in ids {
        let _ = cri.stop_container(id, 2).await;
        cri.remove_container(id).await.expect("remove");
    }
    cri.delete_pod(&pod).await.expect("delete pod");
}

fn termination_log(pod: &Pod) -> PathBuf {
    pod.log_dir.join(".term-app").join("termination-log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hooks_reach_another_pod_by_default() {
    if !nri_harness::require_root("http_hooks_reach_another_pod_by_default") {
        return;
    }
    for v in Version::ALL {
        let node = node(v, DEFAULT_PLUGIN_CONFIG.to_string()).await;
        let mut cri = node.cri().await.expect("cri");
        let (server, web, server_ip, shared) = server_pod(&node, &mut cri).await;
        let log = shared.join("web.log");

        let client = cri.run_pod(&PodSpec::new("client")).await.expect("run pod");
        let client_ip = cri.pod_ip(&client.id).await.expect("client pod ip");
        let spec = ContainerSpec::new("app", images::DISTROLESS, &[])
            .annotation(POST_START, &http_hook(&server_ip, "/poststart"))
            .annotation(PRE_STOP, &http_hook(&server_ip, "/prestop"))
            .annotation("io.kubernetes.pod.terminationGracePeriod", "10");
        let id = cri.create_container(&client, &spec).await.expect("create");
        cri.start_container(&id).await.expect("start");

        let post_start = request(&log, "/poststart").await.unwrap_or_else(|| {
            panic!(
                "{v}: the PostStart hook did not reach {server_ip}:\n{}",
                node.diagnostics()
            )
        });
        // Sent from inside the hooked pod, not from the node.
        assert!(
            post_start.contains(&format!(" from {client_ip}:")),
            "{v}: {post_start} (client pod {client_ip})"
        );
        assert!(
            !log_has(&log, " GET /prestop "),
            "{v}: PreStop ran before the stop"
        );
        cri.stop_container(&id, 10).await.expect("stop");
        let pre_stop = request(&log, "/prestop").await.unwrap_or_else(|| {
            panic!(
                "{v}: the PreStop hook did not reach {server_ip}:\n{}",
                node.diagnostics()
            )
        });
        assert!(
            pre_stop.contains(&format!(" from {client_ip}:")),
            "{v}: {pre_stop} (client pod {client_ip})"
        );
        let st = cri.container_status(&id).await.expect("status");
        assert_eq!(
            st.state,
            ContainerState::ContainerExited as i32,
            "{v}: stopped"
        );
        assert!(
            node.plugin_log()
                .lines()
                .any(|l| l.contains("hook succeeded") && l.contains(&id) && l.contains("preStop")),
            "{v}: no successful PreStop in the plugin log:\n{}",
            node.diagnostics()
        );
        remove_pod(&mut cri, client, &[&id]).await;
        remove_pod(&mut cri, server, &[&web]).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|t| t.contains(needle))
}

/// The first two octets of every node's pod subnets, as a /16 that covers them all.
fn pods_cidr() -> String {
    let subnet = PodNetwork::for_slot(0).expect("pod network").subnet;
    let octets: Vec<&str> = subnet.split('.').collect();
    format!("{}.{}.0.0/16", octets[0], octets[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_refuses_denied_hosts_and_exec_outside_its_namespaces() {
    if !nri_harness::require_root("a_policy_refuses_denied_hosts_and_exec_outside_its_namespaces") {
        return;
    }
    let cidr = pods_cidr();
    let config = format!(
        "{DEFAULT_PLUGIN_CONFIG}\n\
         [[policy.handlers]]\nkinds = [\"exec\"]\nnamespaces = [\"kube-system\", \"ops-*\"]\n\n\
         [[policy.network]]\ndeny = [\"{cidr}\"]\n"
    );
    for v in Version::ALL {
        let node = node(v, config.clone()).await;
        let mut cri = node.cri().await.expect("cri");
        let (server, web, server_ip, shared) = server_pod(&node, &mut cri).await;
        let log = shared.join("web.log");
        let client = cri.run_pod(&PodSpec::new("client")).await.expect("run pod");

        // A host given as an IP address in a denied CIDR: refused at create, for either
        // phase, naming the annotation and the rule.
        for (key, path) in [(POST_START, "/poststart"), (PRE_STOP, "/prestop")] {
            let spec = ContainerSpec::new("app", images::DISTROLESS, &[])
                .annotation(key, &http_hook(&server_ip, path));
            let err = cri
                .create_container(&client, &spec)
                .await
                .expect_err("a hook to a denied host is refused");
            let message = err.grpc_message().unwrap_or_default().to_string();
            let want = format!(
                "annotation \"{key}\": host {server_ip} is refused in namespace \"default\" \
                 (policy.network rule 1: deny [\"{cidr}\"])"
            );
            assert!(message.contains(&want), "{v}: {message}\nwanted: {want}");
        }

        // A host given as a name, from the container's own /etc/hosts: resolved when the
        // hook runs, then refused; the PostStart failure stops the container with the reason.
        let etc = node.host_dir("client-etc").expect("host dir");
        let hosts = etc.join("hosts");
        std::fs::write(
            &hosts,
            format!("127.0.0.1\tlocalhost\n{server_ip}\tserver.test\n"),
        )
        .expect("hosts file");
        let spec = ContainerSpec::new("app", images::DISTROLESS, &[])
            .annotation(POST_START, &http_hook("server.test", "/named"))
            .annotation("io.kubernetes.pod.terminationGracePeriod", "3")
            .mount(&hosts, "/etc/hosts", true);
        let id = cri.create_container(&client, &spec).await.expect("create");
        cri.start_container(&id).await.expect("start");
        let message = nri_harness::wait_file(&termination_log(&client), WAIT, |t| !t.is_empty())
            .await
            .unwrap_or_else(|| panic!("{v}: no termination message:\n{}", node.diagnostics()));
        assert_eq!(
            message,
            format!(
                "PostStart hook failed: host \"server.test\": {server_ip} is refused by the \
                 plugin's policy (policy.network rule 1: deny [\"{cidr}\"])"
            ),
            "{v}"
        );
        cri.wait_state(&id, ContainerState::ContainerExited, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{v}: not stopped after the refused PostStart: {e}"));
        assert!(
            !log_has(&log, " GET /named "),
            "{v}: the refused hook reached the server"
        );
        remove_pod(&mut cri, client, &[&id]).await;

        // Exec hooks outside the namespaces the rule names: refused at create.
        let exec = serde_json::json!({"exec": {"command": ["sh", "-c", "echo ran > /shared/ran"]}})
            .to_string();
        let team = cri
            .run_pod(&PodSpec {
                namespace: "team-a".into(),
                ..PodSpec::new("team")
            })
            .await
            .expect("run pod");
        let marks = node.host_dir("marks").expect("host dir");
        let spec = ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"])
            .annotation(POST_START, &exec)
            .mount(&marks, "/shared", false);
        let err = cri
            .create_container(&team, &spec)
            .await
            .expect_err("exec is not allowed in team-a");
        let message = err.grpc_message().unwrap_or_default().to_string();
        let want = format!(
            "annotation \"{POST_START}\": exec hooks are not allowed in namespace \"team-a\" \
             (policy.handlers rule 1: exec only in [\"kube-system\",\"ops-*\"])"
        );
        assert!(message.contains(&want), "{v}: {message}\nwanted: {want}");
        cri.delete_pod(&team).await.expect("delete pod");

        // ... and run where it allows them.
        let ops = cri
            .run_pod(&PodSpec {
                namespace: "ops-blue".into(),
                ..PodSpec::new("ops")
            })
            .await
            .expect("run pod");
        let id = cri.create_container(&ops, &spec).await.expect("create");
        cri.start_container(&id).await.expect("start");
        let ran = nri_harness::wait_file(&marks.join("ran"), WAIT, |t| t.contains("ran")).await;
        assert!(
            ran.is_some(),
            "{v}: the allowed exec hook did not run:\n{}",
            node.diagnostics()
        );
        remove_pod(&mut cri, ops, &[&id]).await;
        remove_pod(&mut cri, server, &[&web]).await;
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
