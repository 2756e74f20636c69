//! `make demo`: a private containerd with the plugin pre-installed, one pod whose containers
//! declare a PostStart exec hook, a PostStart httpGet hook and a PreStop exec hook, a report
//! of what happened, and a clean teardown. Exits 0 only if every hook really ran.
//!
//! Usage: demo --plugin PATH [--containerd 1.7|2.1]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nri_harness::cri::{ContainerState, Pod};
use nri_harness::{images, plugin, ContainerSpec, Cri, Node, PluginMode, PodSpec, Version};

const HOOK_WAIT: Duration = Duration::from_secs(30);

struct Args {
    plugin: PathBuf,
    version: Version,
}

fn args() -> anyhow::Result<Args> {
    let mut plugin = None;
    let mut version = Version::V2_1;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--plugin" => plugin = it.next().map(PathBuf::from),
            "--containerd" => {
                version = match it.next().as_deref() {
                    Some("1.7") => Version::V1_7,
                    Some("2.1") => Version::V2_1,
                    other => bail!("--containerd wants 1.7 or 2.1, not {other:?}"),
                }
            }
            other => {
                bail!("unknown argument {other}; usage: demo --plugin PATH [--containerd 1.7|2.1]")
            }
        }
    }
    let plugin =
        plugin.context("--plugin PATH is required (the Makefile passes the built plugin)")?;
    Ok(Args { plugin, version })
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Waits for a file to have content; returns it.
async fn wait_file(path: &Path, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if pred(&s) {
                return Some(s);
            }
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn first_time(s: &str) -> Option<f64> {
    s.split_whitespace()
        .find_map(|w| w.parse::<f64>().ok().filter(|t| *t > 1e9))
}

struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

fn step(msg: &str) {
    println!("==> {msg}");
}

async fn run_pod(node: &Node, cri: &mut Cri, shared: &Path) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let pod = cri
        .run_pod(&PodSpec::new("demo"))
        .await
        .context("RunPodSandbox")?;
    let pod_ip = cri.pod_ip(&pod.id).await.unwrap_or_default();
    println!("    pod sandbox {} ip {pod_ip}", short(&pod.id));

    // The app: our static test binary only (no shell in the image), serving HTTP.
    // PostStart httpGet against it, PreStop exec of the binary itself.
    let app = ContainerSpec {
        args: [
            "--http",
            "8080",
            "--log",
            "/shared/requests.log",
            "--term-file",
            "/shared/sigterm",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..ContainerSpec::new("app", images::DISTROLESS, &[])
    }
    .mount(shared, "/shared", false)
    .annotation(
        "poststart.lifecycle.nri.io/container.app",
        r#"{"httpGet": {"path": "/poststart", "port": 8080, "httpHeaders": [{"name": "X-Hook", "value": "postStart"}]}}"#,
    )
    .annotation(
        "prestop.lifecycle.nri.io/container.app",
        r#"{"exec": {"command": ["/testapp", "write", "/shared/prestop", "prestop {now}"]}}"#,
    );
    // A busybox sidecar with a PostStart exec hook that records where it ran.
    let sidecar = ContainerSpec::new("sidecar", images::BUSYBOX, &["sleep", "3600"])
        .mount(shared, "/shared", false)
        .annotation(
            "poststart.lifecycle.nri.io/container.sidecar",
            r#"{"exec": {"command": ["sh", "-c", "echo \"hostname=$(hostname) pid1=$(cat /proc/1/comm) time=$(date +%s)\" > /shared/poststart-exec"]}}"#,
        );

    let app_id = create_start(cri, &pod, &app).await?;
    let side_id = create_start(cri, &pod, &sidecar).await?;
    let app_started = cri.container_status(&app_id).await?.started_at as f64 / 1e9;
    let side_started = cri.container_status(&side_id).await?.started_at as f64 / 1e9;

    step("waiting for the PostStart hooks");
    let exec_out = wait_file(&shared.join("poststart-exec"), HOOK_WAIT, |s| {
        s.contains("hostname=")
    })
    .await;
    checks.push(match exec_out {
        Some(s) => {
            let in_pod = s.contains("hostname=demo");
            Check {
                name: "PostStart exec (sidecar)",
                ok: in_pod,
                detail: format!(
                    "output {:?}; {} (container started {:.3})",
                    s.trim(),
                    if in_pod {
                        "ran inside the container (its hostname, its PID 1)"
                    } else {
                        "did NOT run in the container's namespaces"
                    },
                    side_started
                ),
            }
        }
        None => Check {
            name: "PostStart exec (sidecar)",
            ok: false,
            detail: format!("no output within {} s", HOOK_WAIT.as_secs()),
        },
    });
    let http = wait_file(&shared.join("requests.log"), HOOK_WAIT, |s| {
        s.contains("/poststart")
    })
    .await;
    checks.push(match http {
        Some(s) => {
            let req: Vec<&str> = s
                .lines()
                .skip_while(|l| !l.contains("/poststart"))
                .take_while(|l| *l != "end")
                .collect();
            let t = req.first().and_then(|l| first_time(l));
            Check {
                name: "PostStart httpGet (app)",
                ok: true,
                detail: format!(
                    "the app logged:\n        {}\n      {}",
                    req.join("\n        "),
                    t.map(|t| format!(
                        "{:.1} ms after the container started",
                        (t - app_started) * 1e3
                    ))
                    .unwrap_or_default()
                ),
            }
        }
        None => Check {
            name: "PostStart httpGet (app)",
            ok: false,
            detail: format!(
                "the app got no /poststart request within {} s",
                HOOK_WAIT.as_secs()
            ),
        },
    });

    step("stopping the app (StopContainer, grace 30 s)");
    let stop_called = unix_now();
    let t0 = Instant::now();
    cri.stop_container(&app_id, 30)
        .await
        .context("StopContainer app")?;
    let stop_took = t0.elapsed();
    let st = cri.container_status(&app_id).await?;
    let prestop = std::fs::read_to_string(shared.join("prestop")).ok();
    let sigterm = std::fs::read_to_string(shared.join("sigterm")).ok();
    let pre_t = prestop.as_deref().and_then(first_time);
    let term_t = sigterm.as_deref().and_then(first_time);
    let mut order = vec![(stop_called, "StopContainer called".to_string())];
    if let Some(t) = pre_t {
        order.push((t, "PreStop exec ran in the app (distroless)".to_string()));
    }
    if let Some(t) = term_t {
        order.push((t, "the app received SIGTERM".to_string()));
    }
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("    order of events around the stop:");
    for (t, what) in &order {
        println!("      +{:8.1} ms  {what}", (t - stop_called) * 1e3);
    }
    println!(
        "    StopContainer returned after {:.1} ms; exit code {}, reason {:?}",
        stop_took.as_secs_f64() * 1e3,
        st.exit_code,
        st.reason
    );
    checks.push(match (pre_t, term_t) {
        (Some(p), Some(t)) if p <= t => Check {
            name: "PreStop exec (app)",
            ok: true,
            detail: format!("ran {:.1} ms before SIGTERM reached the app", (t - p) * 1e3),
        },
        (Some(p), Some(t)) => Check {
            name: "PreStop exec (app)",
            ok: false,
            detail: format!("ran {:.1} ms AFTER SIGTERM reached the app", (p - t) * 1e3),
        },
        (Some(_), None) => Check {
            name: "PreStop exec (app)",
            ok: false,
            detail: "ran, but the app never recorded SIGTERM".into(),
        },
        (None, _) => Check {
            name: "PreStop exec (app)",
            ok: false,
            detail: "did not run before the container stopped".into(),
        },
    });

    step("removing the pod");
    cri.remove_container(&app_id).await.ok();
    cri.stop_container(&side_id, 5).await.ok();
    cri.remove_container(&side_id).await.ok();
    cri.delete_pod(&pod)
        .await
        .context("StopPodSandbox/RemovePodSandbox")?;
    let plugin_log = node.plugin_log();
    if !plugin_log.is_empty() {
        println!("    plugin log (last lines):");
        for l in plugin_log
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("      {l}");
        }
    }
    Ok(checks)
}

async fn create_start(cri: &mut Cri, pod: &Pod, spec: &ContainerSpec) -> anyhow::Result<String> {
    let id = cri
        .create_container(pod, spec)
        .await
        .with_context(|| format!("CreateContainer {}", spec.name))?;
    cri.start_container(&id)
        .await
        .with_context(|| format!("StartContainer {}", spec.name))?;
    cri.wait_state(
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(30),
    )
    .await
    .with_context(|| format!("container {} running", spec.name))?;
    println!(
        "    container {} ({}) running: {}",
        spec.name,
        spec.image,
        short(&id)
    );
    Ok(id)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if !nri_harness::require_root("demo") {
        std::process::exit(2);
    }
    let args = args()?;
    step(&format!(
        "setting up (first run downloads containerd and CNI plugins and builds images; later runs reuse {})",
        nri_harness::Install::locate().cache.display()
    ));
    let node = Node::start(args.version, PluginMode::Preinstalled(args.plugin.clone()))
        .await
        .context("starting the private containerd with the plugin")?;
    step(&format!(
        "{} ({}) running with the plugin pre-installed; CRI at {}",
        args.version,
        node.package_version(),
        node.cri_socket().display()
    ));
    if !plugin::wait_registered(&node, "nri-lifecycle", Duration::from_secs(15)).await {
        println!("    warning: no registration line for nri-lifecycle in containerd's log");
    }
    let shared = node.host_dir("demo")?;
    let result = match node.cri().await {
        Ok(mut cri) => run_pod(&node, &mut cri, &shared).await,
        Err(e) => Err(e.into()),
    };
    let log = node.paths().containerd_log.clone();
    step("tearing down");
    let teardown = node.stop().await;
    let checks = match result {
        Ok(c) => c,
        Err(e) => {
            println!("FAILED: {e:#}\n    containerd log: {}", log.display());
            std::process::exit(1);
        }
    };
    println!();
    let mut all = true;
    for c in &checks {
        println!(
            "[{}] {}: {}",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        );
        all &= c.ok;
    }
    if let Err(e) = teardown {
        println!("[FAIL] teardown: {e}");
        all = false;
    } else {
        println!("[ ok ] teardown: no processes, mounts, netns, sockets, bridge or route left");
    }
    if !all {
        println!(
            "\nsome hooks did not work; containerd log: {}",
            log.display()
        );
        std::process::exit(1);
    }
    println!("\nall hooks worked");
    Ok(())
}
