//! End-to-end PreStop on containerd 1.7 and 2.1, driven like a kubelet: the gate is the
//! container's PID 1 and the stop waits for the hook.

use std::path::Path;
use std::time::Duration;

use nri_harness::cri::ContainerState;
use nri_harness::{images, ContainerSpec, Node, PluginMode, PodSpec, Version};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_is_pid1_of_a_prestop_container() {
    if !nri_harness::require_root("gate_is_pid1_of_a_prestop_container") {
        return;
    }
    for v in Version::ALL {
        let node = Node::start(v, PluginMode::Preinstalled(Path::new(PLUGIN).to_path_buf()))
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        let mut cri = node.cri().await.expect("cri");
        let pod = cri
            .run_pod(&PodSpec::new("gated").annotation(
                "prestop.lifecycle.nri.io/container.app",
                r#"{"sleep":{"seconds":0}}"#,
            ))
            .await
            .expect("run pod");
        let shared = node.host_dir("gated").expect("host dir");
        let spec = ContainerSpec {
            args: vec!["--term-file".into(), "/shared/term".into()],
            ..ContainerSpec::new("app", images::DISTROLESS, &[])
        }
        .mount(&shared, "/shared", false);
        let id = cri.create_container(&pod, &spec).await.expect("create");
        cri.start_container(&id).await.expect("start");
        cri.wait_state(
            &id,
            ContainerState::ContainerRunning,
            Duration::from_secs(30),
        )
        .await
        .expect("running");
        let pid = cri.container_pid(&id).await.expect("pid");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        println!("{v}: pid 1 = {args:?}\nplugin log:\n{}", node.plugin_log());
        assert_eq!(
            args.first().map(String::as_str),
            Some("/.nri-lifecycle/gate"),
            "{v}"
        );
        cri.stop_container(&id, 10).await.expect("stop");
        let st = cri.container_status(&id).await.expect("status");
        assert_eq!(st.exit_code, 0, "{v}: exit code through the gate");
        assert!(
            std::fs::read_to_string(shared.join("term")).is_ok_and(|t| !t.is_empty()),
            "{v}: app got SIGTERM"
        );
        cri.remove_container(&id).await.expect("remove");
        cri.delete_pod(&pod).await.expect("delete pod");
        drop(cri);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
