//! End-to-end on containerd 1.7 and 2.1: the process serving NRI is SIGKILLed while 20
//! containers with PreStop hooks are being created — the external plugin, started again by
//! the test as systemd would, and the drop-in plugin's daemon, started again by its
//! launcher. Afterwards
//! every container is either gated, and its PreStop runs before the app gets its SIGTERM, or
//! ungated, and the plugin's log names it; no stop hangs.

use std::path::PathBuf;
use std::time::Duration;

use nri_harness::plugin::{wait_registered, ExternalPlugin, EXTERNAL_NAME};
use nri_harness::{images, stamp, ContainerSpec, Node, PluginMode, Pod, PodSpec, Version};

const PLUGIN: &str = env!("CARGO_BIN_EXE_nri-lifecycle");
const CONTAINERS: usize = 20;
/// The plugin is killed once it has seen this many creates.
const KILL_AFTER: usize = 6;
const GRACE_SECS: i64 = 10;
/// Generous bound for anything the test waits for; reaching it fails the test.
const LIMIT: Duration = Duration::from_secs(120);

/// One container of the burst, running.
struct Started {
    pod: Pod,
    id: String,
    shared: PathBuf,
}

/// Creates and starts container `n` like a kubelet: a create the runtime fails (the plugin
/// died under it) is retried in a new pod sandbox.
async fn create_one(node: &Node, n: usize) -> Started {
    let hook = r#"{"exec":{"command":["sh","-c","/testapp write /shared/prestop {now}"]}}"#;
    let mut cri = node.cri().await.expect("cri");
    let mut errors = Vec::new();
    for attempt in 0..10 {
        let name = format!("burst{n}-{attempt}");
        let pod = cri
            .run_pod(
                &PodSpec::new(&name).annotation("prestop.lifecycle.nri.io/container.app", hook),
            )
            .await
            .expect("run pod");
        let shared = node.host_dir(&name).expect("host dir");
        let spec = ContainerSpec {
            args: vec!["--term-file".into(), "/shared/term".into()],
            ..ContainerSpec::new("app", images::BUSYBOX, &["/testapp"])
        }
        .annotation(
            "io.kubernetes.pod.terminationGracePeriod",
            &GRACE_SECS.to_string(),
        )
        .mount(&node.install().testapp(), "/testapp", true)
        .mount(&shared, "/shared", false);
        match cri.start_ready(&pod, &spec, "started ", LIMIT).await {
            Ok((id, Some(_))) => return Started { pod, id, shared },
            Ok((id, None)) => errors.push(format!("{id}: never logged its start")),
            Err(e) => errors.push(e.to_string()),
        }
        let _ = cri.delete_pod(&pod).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("container {n} never started: {errors:?}");
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// How many times containerd's log says the external plugin connected.
fn connections(containerd_log: &str) -> usize {
    containerd_log
        .lines()
        .filter(|l| l.contains(EXTERNAL_NAME) && l.contains("\\\" connected"))
        .count()
}

/// Whether a plugin log line warns that this container's PreStop will not hold its stop.
fn named_as_ungated(log: &str, id: &str) -> bool {
    log.lines().any(|l| {
        l.contains(id)
            && (l.contains("PreStop cannot hold this container's stop")
                || l.contains("cannot inject the PreStop gate"))
    })
}

async fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_killed_during_a_burst_of_creates_loses_no_prestop_silently() {
    if !nri_harness::require_root(
        "plugin_killed_during_a_burst_of_creates_loses_no_prestop_silently",
    ) {
        return;
    }
    let plugin = PathBuf::from(PLUGIN);
    for (v, drop_in) in Version::ALL
        .into_iter()
        .flat_map(|v| [(v, false), (v, true)])
    {
        let mode = if drop_in {
            PluginMode::Preinstalled(plugin.clone())
        } else {
            PluginMode::External
        };
        let node = std::sync::Arc::new(
            Node::start(v, mode)
                .await
                .unwrap_or_else(|e| panic!("{v}: {e}")),
        );
        let v = format!("{v} {}", if drop_in { "drop-in" } else { "external" });
        let mut first = if drop_in {
            None
        } else {
            let first = ExternalPlugin::spawn(&plugin, &node).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                wait_registered(&node, EXTERNAL_NAME, Duration::from_secs(15)).await,
                "{v}: external plugin did not register:\n{}",
                first.output()
            );
            Some(first)
        };
        let daemon = node.daemon_pid();
        assert!(daemon.is_some(), "{v}: no process serves NRI");
        let before = connections(&node.containerd_log());
        let creates: Vec<_> = (0..CONTAINERS)
            .map(|n| {
                let node = std::sync::Arc::clone(&node);
                tokio::spawn(async move { create_one(&node, n).await })
            })
            .collect();
        let seen = wait_for(LIMIT, || {
            node.plugin_log()
                .matches("container has lifecycle hooks")
                .count()
                >= KILL_AFTER
        })
        .await;
        assert!(
            seen,
            "{v}: the plugin saw no creates:\n{}",
            node.plugin_log()
        );
        let second = match first.as_mut() {
            Some(first) => {
                first.kill();
                // Started again at once, as systemd's Restart=always does.
                Some(ExternalPlugin::spawn(&plugin, &node).unwrap_or_else(|e| panic!("{e}")))
            }
            None => {
                // The launcher starts the daemon again.
                if let Some(pid) = daemon {
                    nri_harness::sys::kill(pid, libc::SIGKILL);
                }
                None
            }
        };
        let mut started = Vec::new();
        for c in creates {
            started.push(c.await.unwrap_or_else(|e| panic!("{v}: {e}")));
        }
        let reconnected = wait_for(LIMIT, || connections(&node.containerd_log()) > before).await;
        assert!(
            reconnected,
            "{v}: the plugin did not reconnect:\n{}\n{}",
            second
                .as_ref()
                .map(ExternalPlugin::output)
                .unwrap_or_default(),
            node.diagnostics()
        );
        let mut cri = node.cri().await.expect("cri");
        let (mut gated, mut ungated) = (0, 0);
        for c in &started {
            let pid = cri.container_pid(&c.id).await.expect("pid");
            let is_gated = cmdline(pid).first().map(String::as_str) == Some("/.nri-lifecycle/gate");
            // The runtime kills the container at the end of its grace period: a stop that
            // is not back long after that is stuck.
            let stop = tokio::time::timeout(
                Duration::from_secs(GRACE_SECS as u64 + 30),
                cri.stop_container(&c.id, GRACE_SECS),
            )
            .await;
            assert!(
                matches!(stop, Ok(Ok(()))),
                "{v}: StopContainer of {} (gated: {is_gated}) did not return: {stop:?}\n{}",
                c.id,
                node.diagnostics()
            );
            let term = stamp(&c.shared.join("term"));
            if is_gated {
                gated += 1;
                let ran = stamp(&c.shared.join("prestop")).unwrap_or_else(|| {
                    panic!(
                        "{v}: gated container {} stopped without its PreStop\nplugin:\n{}",
                        c.id,
                        node.plugin_log()
                    )
                });
                let term = term.unwrap_or_else(|| panic!("{v}: {} never got SIGTERM", c.id));
                assert!(
                    ran <= term,
                    "{v}: {}: the app got SIGTERM ({term}) before its PreStop ran ({ran})",
                    c.id
                );
            } else {
                ungated += 1;
                let log = node.plugin_log();
                if let Some(line) = log.lines().find(|l| named_as_ungated(l, &c.id)) {
                    eprintln!("{v}: ungated {}: {line}", c.id);
                }
                assert!(
                    named_as_ungated(&log, &c.id),
                    "{v}: ungated container {} is not named in the plugin's log:\n{log}",
                    c.id
                );
            }
        }
        eprintln!("{v}: {gated} gated, {ungated} ungated after the plugin was killed");
        for c in started {
            cri.remove_container(&c.id).await.expect("remove");
            cri.delete_pod(&c.pod).await.expect("delete pod");
        }
        // Every container is gone: so are their records and socket directories, whether the
        // first plugin, the second, or both knew them.
        let gate_dir = node.paths().dir.join("plugin-run/gate/containers");
        let left = || -> Vec<String> {
            let list = |d: &std::path::Path| -> Vec<String> {
                std::fs::read_dir(d)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| n != ".state")
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let mut all = list(&gate_dir);
            all.extend(list(&gate_dir.join(".state")));
            all
        };
        assert!(
            wait_for(LIMIT, || left().is_empty()).await,
            "{v}: gate state left behind: {:?}",
            left()
        );
        drop(cri);
        drop(second);
        let node = std::sync::Arc::into_inner(node).expect("the node is ours again");
        node.stop().await.unwrap_or_else(|e| panic!("{v}: {e}"));
    }
}
