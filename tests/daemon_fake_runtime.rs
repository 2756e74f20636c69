//! The whole plugin (daemon, core, node effects, NRI edge) against the in-process fake
//! runtime, in both NRI generations: the runtime's config is applied, invalid annotations are
//! refused at create with the key in the message, a PreStop container gets the gate, and
//! removing it cleans up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nri_lifecycle::config::Config;
use nri_lifecycle::core::Core;
use nri_lifecycle::daemon;
use nri_lifecycle::logging::Logging;
use nri_lifecycle::model::EventKind;
use nri_lifecycle::nri::{self, Registration};
use nri_test_support::fake_runtime::{refusal, wire_container, wire_pod, FakeRuntime, Generation};

async fn connected(
    generation: Generation,
    runtime_dir: &std::path::Path,
) -> (FakeRuntime, Core, tokio::task::JoinHandle<()>) {
    let (rt, plugin_end) = FakeRuntime::pair(generation).await.expect("fake runtime");
    let daemon = daemon::start(Config::default(), Logging::init("info"), true);
    let served = Arc::new(daemon.clone());
    let task = tokio::spawn(async move {
        let reg = Registration {
            name: "nri-lifecycle".into(),
            index: "10".into(),
        };
        let _ = nri::serve(plugin_end, reg, served).await;
    });
    let reg = rt.registered().await.expect("registration");
    assert_eq!(
        (reg.name.as_str(), reg.index.as_str()),
        ("nri-lifecycle", "10")
    );
    let mut req = rt.default_configure();
    req.config = format!(
        "runtime_dir = \"{}\"\nlog_file = \"stderr\"\ncontainerd_address = \"{}/no-containerd.sock\"\n",
        runtime_dir.display(),
        runtime_dir.display()
    );
    rt.configure(req).await.expect("configure");
    for kind in [
        EventKind::CreateContainer,
        EventKind::PostCreateContainer,
        EventKind::PostStartContainer,
        EventKind::StopContainer,
        EventKind::RemoveContainer,
    ] {
        assert!(
            rt.subscribed(kind),
            "{generation:?}: not subscribed to {kind:?}"
        );
    }
    assert!(
        !rt.subscribed(EventKind::UpdateContainer),
        "{generation:?}: subscribed to updates it never uses"
    );
    rt.synchronize(&[], &[], 10).await.expect("synchronize");
    (rt, daemon, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_annotation_refused_and_prestop_gated_in_both_generations() {
    for generation in [Generation::StateChangeOnly, Generation::V012] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (rt, daemon, task) = connected(generation, dir.path()).await;
        let pod = wire_pod("pod1", "web", "default");

        // A malformed hook: the create fails with the key, field and problem.
        let bad = wire_container(
            "c-bad",
            "pod1",
            "app",
            &[(
                "poststart.lifecycle.nri.io/container.app",
                r#"{"tcpSocket":{"port":0}}"#,
            )],
        );
        let err = rt
            .create_container(&pod, &bad)
            .await
            .expect_err("bad annotation accepted");
        let (_, message) = refusal(&err).expect("a refusal status");
        assert!(
            message.contains(r#"annotation "poststart.lifecycle.nri.io/container.app": field "tcpSocket.port": 0 is out of range 1-65535"#),
            "{generation:?}: {message}"
        );

        // A PreStop hook: gate binary and socket directory mounted, marker, gated args.
        let mut good = wire_container(
            "c-good",
            "pod1",
            "app",
            &[(
                "prestop.lifecycle.nri.io/container.app",
                r#"{"sleep":{"seconds":1}}"#,
            )],
        );
        good.args = vec!["/app".into(), "--serve".into()];
        let reply = rt.create_container(&pod, &good).await.expect("create");
        let adjust = reply.adjust.into_option().expect("an adjustment");
        assert_eq!(
            adjust
                .annotations
                .get("gate.lifecycle.nri.io/protocol")
                .map(String::as_str),
            Some("1"),
            "{generation:?}"
        );
        let mounts: HashMap<String, String> = adjust
            .mounts
            .iter()
            .map(|m| (m.destination.clone(), m.source.clone()))
            .collect();
        let gate_bin = mounts.get("/.nri-lifecycle/gate").expect("gate mount");
        assert!(
            std::path::Path::new(gate_bin).starts_with(dir.path()),
            "{gate_bin}"
        );
        assert!(
            std::fs::metadata(gate_bin).is_ok_and(|m| m.len() > 0),
            "gate written out"
        );
        let socket_dir = mounts.get("/.nri-lifecycle/run").expect("socket dir mount");
        assert!(
            std::path::Path::new(socket_dir).join("gate.sock").exists(),
            "socket created before start"
        );
        assert_eq!(
            adjust.args.first().map(String::as_str),
            Some("/.nri-lifecycle/gate")
        );
        assert_eq!(
            &adjust.args[adjust.args.len() - 3..],
            ["--", "/app", "--serve"]
        );

        // A v0.12 runtime applies the args adjustment: post-create sees the gate already in
        // front and needs nothing more. The older generation ignores it, and without a
        // containerd here the stored spec cannot be rewritten: the container stays ungated
        // (PreStop best-effort), and post-create still answers promptly.
        let mut created = good.clone();
        if generation == Generation::V012 {
            created.args = adjust.args.clone();
        }
        let started = std::time::Instant::now();
        rt.event(EventKind::PostCreateContainer, &pod, &created)
            .await
            .expect("post-create");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "post-create held the runtime"
        );
        let status = daemon.status().await;
        assert_eq!(status.tracked, 1, "{generation:?}: c-good tracked");
        assert_eq!(
            status.gated,
            usize::from(generation == Generation::V012),
            "{generation:?}: gated"
        );

        // A container without hooks is not touched.
        let plain = wire_container("c-plain", "pod1", "side", &[]);
        let reply = rt.create_container(&pod, &plain).await.expect("create");
        let untouched = reply.adjust.into_option().unwrap_or_default();
        assert!(
            untouched.mounts.is_empty()
                && untouched.args.is_empty()
                && untouched.annotations.is_empty()
        );

        // Removing the container removes its socket directory.
        rt.event(EventKind::RemoveContainer, &pod, &good)
            .await
            .expect("remove");
        assert!(
            !std::path::Path::new(socket_dir).exists(),
            "{generation:?}: socket dir left behind"
        );

        // The plugin called back into the runtime only to register: it asks for no container
        // updates and no evictions (it stops containers itself).
        assert_eq!(rt.registrations().len(), 1, "{generation:?}");
        assert!(
            rt.update_requests().is_empty(),
            "{generation:?}: {:?}",
            rt.update_requests()
        );

        rt.shutdown().await.expect("shutdown");
        drop(rt);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("plugin did not end with the connection")
            .expect("plugin task");
    }
}
