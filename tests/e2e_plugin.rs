//! End-to-end with the real plugin on containerd 1.7 and 2.1: registration (pre-installed and
//! external), a pod without hook annotations behaves as with NRI off, and a malformed hook
//! annotation fails CreateContainer naming the annotation key. Every test checks at the end
//! that the node left nothing behind.

use std::path::Path;
use std::time::Duration;

use nri_harness::plugin::{self, ExternalPlugin};
use nri_harness::{images, ContainerSpec, Node, PluginMode, PodSpec, Version};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");
const REGISTRATION: Duration = Duration::from_secs(15);

fn plugin() -> &'static Path {
    Path::new(PLUGIN)
}

async fn preinstalled(v: Version) -> Node {
    match Node::start(v, PluginMode::Preinstalled(plugin().to_path_buf())).await {
        Ok(n) => n,
        Err(e) => panic!("{v}: node with the pre-installed plugin did not start: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_preinstalled() {
    if !nri_harness::require_root("registers_preinstalled") {
        return;
    }
    for v in Version::ALL {
        let mut node = preinstalled(v).await;
        assert!(
            plugin::wait_registered(&node, "nri-lifecycle", REGISTRATION).await,
            "{v}: no registration in containerd's log:\n{}",
            node.containerd_log()
        );
        assert!(node.containerd_running(), "{v}: containerd died");
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_external() {
    if !nri_harness::require_root("registers_external") {
        return;
    }
    for v in Version::ALL {
        let node = Node::start(v, PluginMode::External)
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        let mut ext = ExternalPlugin::spawn(plugin(), &node).unwrap_or_else(|e| panic!("{e}"));
        let ok = plugin::wait_registered(&node, plugin::EXTERNAL_NAME, REGISTRATION).await;
        assert!(
            ok,
            "{v}: external plugin did not register; plugin output:\n{}\ncontainerd log:\n{}",
            ext.output(),
            node.containerd_log()
        );
        assert!(
            ext.running(),
            "{v}: external plugin exited:\n{}",
            ext.output()
        );
        ext.stop(Duration::from_secs(5));
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}

/// What a pod without hook annotations shows: exit code, termination state, log lines, and
/// the time the app saw SIGTERM (present or not).
async fn plain_pod_outcome(node: &Node) -> (i32, i32, Vec<String>, bool) {
    let mut cri = node.cri().await.expect("cri");
    let pod = cri
        .run_pod(&PodSpec::new("nohooks"))
        .await
        .expect("run pod");
    let shared = node.host_dir("nohooks").expect("host dir");
    let spec = ContainerSpec {
        args: vec!["--term-file".into(), "/shared/term".into()],
        ..ContainerSpec::new("app", images::DISTROLESS, &[])
    }
    .mount(&shared, "/shared", false);
    // Stop only once the app has taken SIGTERM over: as PID 1 without a handler yet, it would
    // not even see an earlier SIGTERM, and the outcome would depend on that race.
    let (id, started) = cri
        .start_ready(&pod, &spec, "started ", Duration::from_secs(30))
        .await
        .expect("start");
    assert!(started.is_some(), "the app never started");
    cri.stop_container(&id, 10).await.expect("stop");
    let st = cri.container_status(&id).await.expect("status");
    let lines: Vec<String> = nri_harness::cri::read_log(Path::new(&st.log_path))
        .into_iter()
        .map(|l| l.text.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    let termed = std::fs::read_to_string(shared.join("term")).is_ok_and(|t| !t.is_empty());
    cri.remove_container(&id).await.expect("remove");
    cri.delete_pod(&pod).await.expect("delete pod");
    (st.state, st.exit_code, lines, termed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_without_hooks_is_unchanged() {
    if !nri_harness::require_root("pod_without_hooks_is_unchanged") {
        return;
    }
    for v in Version::ALL {
        let off = Node::start_with(
            v,
            PluginMode::None,
            nri_harness::NodeOptions {
                nri: false,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{v}: {e}"));
        let baseline = plain_pod_outcome(&off).await;
        off.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));

        let node = preinstalled(v).await;
        let with_plugin = plain_pod_outcome(&node).await;
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
        assert_eq!(with_plugin, baseline, "{v}: a pod without hooks changed");
        assert_eq!(baseline.1, 0, "{v}: baseline exit code");
        assert!(baseline.3, "{v}: the app saw SIGTERM");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_annotation_fails_create() {
    if !nri_harness::require_root("malformed_annotation_fails_create") {
        return;
    }
    let key = "poststart.lifecycle.nri.io/container.app";
    for v in Version::ALL {
        let node = preinstalled(v).await;
        let mut cri = node.cri().await.expect("cri");
        // On the pod...
        let pod = cri
            .run_pod(&PodSpec::new("bad").annotation(key, "{bad"))
            .await
            .expect("run pod");
        let spec = ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"]);
        let err = cri.create_container(&pod, &spec).await;
        match err {
            Ok(id) => {
                panic!("{v}: CreateContainer with a malformed pod annotation succeeded: {id}")
            }
            Err(e) => assert!(
                e.grpc_message().is_some_and(|m| m.contains(key)),
                "{v}: error does not name {key}: {e}"
            ),
        }
        cri.delete_pod(&pod).await.expect("delete pod");
        // ...and on the container.
        let pod = cri.run_pod(&PodSpec::new("bad2")).await.expect("run pod");
        let spec = spec.annotation(key, "{bad");
        match cri.create_container(&pod, &spec).await {
            Ok(id) => panic!("{v}: CreateContainer with a malformed annotation succeeded: {id}"),
            Err(e) => assert!(
                e.grpc_message().is_some_and(|m| m.contains(key)),
                "{v}: error does not name {key}: {e}"
            ),
        }
        cri.delete_pod(&pod).await.expect("delete pod");
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
