//! End-to-end: the private node itself, with NRI enabled and no plugin (or only an external
//! socket), on containerd 1.7 and 2.1. These do not need a working plugin.

use std::time::Duration;

use nri_harness::cri::ContainerState;
use nri_harness::{images, ContainerSpec, Node, NodeOptions, PluginMode, PodSpec, Version};

/// A pod with a busybox container and a distroless container runs, serves HTTP, execs,
/// stops and is removed; nothing is left behind.
async fn pod_lifecycle(version: Version, plugin: PluginMode, nri: bool) {
    let opts = NodeOptions {
        nri,
        ..NodeOptions::default()
    };
    let node = match Node::start_with(version, plugin, opts).await {
        Ok(n) => n,
        Err(e) => panic!("{version}: node start failed: {e}"),
    };
    eprintln!("{version}: testing package {}", node.package_version());
    let mut cri = node.cri().await.expect("cri client");
    let pod = cri
        .run_pod(&PodSpec::new("plain"))
        .await
        .expect("run pod sandbox");

    let shared = node.host_dir("plain").expect("host dir");
    let sh = ContainerSpec::new("sh", images::BUSYBOX, &["sleep", "3600"])
        .mount(&shared, "/shared", false);
    let sh_id = cri.create_container(&pod, &sh).await.expect("create sh");
    cri.start_container(&sh_id).await.expect("start sh");
    cri.wait_state(
        &sh_id,
        ContainerState::ContainerRunning,
        Duration::from_secs(30),
    )
    .await
    .expect("sh running");
    let r = cri
        .exec_sync(
            &sh_id,
            &["sh", "-c", "echo hi > /shared/x; cat /shared/x"],
            10,
        )
        .await
        .expect("exec");
    assert_eq!((r.exit_code, r.stdout.trim()), (0, "hi"), "{version}: exec");
    assert_eq!(
        std::fs::read_to_string(shared.join("x")).expect("host sees the file"),
        "hi\n"
    );

    let app = ContainerSpec {
        args: vec![
            "--http".into(),
            "8080".into(),
            "--log".into(),
            "/shared/requests.log".into(),
            "--term-file".into(),
            "/shared/term".into(),
        ],
        ..ContainerSpec::new("app", images::DISTROLESS, &[])
    }
    .mount(&shared, "/shared", false);
    let app_id = cri.create_container(&pod, &app).await.expect("create app");
    cri.start_container(&app_id).await.expect("start app");
    cri.wait_state(
        &app_id,
        ContainerState::ContainerRunning,
        Duration::from_secs(30),
    )
    .await
    .expect("app running");

    let ip = cri.pod_ip(&pod.id).await.expect("pod ip");
    node.check_pod_route(&ip).expect("route via bridge");
    // The app listens shortly after start: wait for its log line, not a fixed time.
    let status = cri.container_status(&app_id).await.expect("status");
    let log_path = std::path::PathBuf::from(&status.log_path);
    let start = std::time::Instant::now();
    while !nri_harness::cri::read_log(&log_path)
        .iter()
        .any(|l| l.text.starts_with("listening"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "app never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = cri
        .exec_sync(
            &sh_id,
            &[
                "wget",
                "-q",
                "-O",
                "-",
                "--header",
                "X-Test: 1",
                "http://127.0.0.1:8080/hello",
            ],
            10,
        )
        .await
        .expect("wget");
    assert_eq!(
        (r.exit_code, r.stdout.trim()),
        (0, "testapp 200"),
        "{version}: http"
    );
    let reqlog = std::fs::read_to_string(shared.join("requests.log")).expect("request log");
    assert!(reqlog.contains("GET /hello HTTP/1.1"), "{reqlog}");
    assert!(
        reqlog.to_lowercase().contains("header x-test: 1"),
        "{reqlog}"
    );

    cri.stop_container(&app_id, 10).await.expect("stop app");
    let st = cri.container_status(&app_id).await.expect("status");
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 0, "{version}: testapp exits 0 on SIGTERM");
    assert!(std::fs::read_to_string(shared.join("term")).is_ok_and(|t| !t.trim().is_empty()));
    cri.remove_container(&app_id).await.expect("remove app");
    cri.stop_container(&sh_id, 1).await.expect("stop sh");
    cri.remove_container(&sh_id).await.expect("remove sh");
    cri.delete_pod(&pod).await.expect("delete pod");
    assert!(cri.list_pods().await.expect("list").is_empty());
    drop(cri);
    if let Err(e) = node.stop().await {
        panic!("{version}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_with_nri_and_no_plugin() {
    if !nri_harness::require_root("pod_runs_with_nri_and_no_plugin") {
        return;
    }
    for v in Version::ALL {
        pod_lifecycle(v, PluginMode::None, true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_runs_with_nri_off() {
    if !nri_harness::require_root("pod_runs_with_nri_off") {
        return;
    }
    for v in Version::ALL {
        pod_lifecycle(v, PluginMode::None, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nri_socket_is_served_for_external_plugins() {
    if !nri_harness::require_root("nri_socket_is_served_for_external_plugins") {
        return;
    }
    for v in Version::ALL {
        let node = Node::start(v, PluginMode::External)
            .await
            .unwrap_or_else(|e| panic!("{v}: {e}"));
        let s = std::os::unix::net::UnixStream::connect(node.nri_socket());
        assert!(s.is_ok(), "{v}: nri socket {:?}: {s:?}", node.nri_socket());
        drop(s);
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
