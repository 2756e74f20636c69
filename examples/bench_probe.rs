//! In-process probes for `make bench` (the `bench` binary of the harness drives them).
//!
//! ```text
//! bench_probe events --plugin BIN [--events N] [--tracked N]
//!     Runs the release plugin binary as an external plugin against the in-process fake
//!     runtime, once per NRI protocol generation: the plugin's RSS once configured (idle),
//!     N lifecycle events of hook-less containers, each timed from the runtime's side, then
//!     the RSS with `--tracked` containers that carry hooks in its table. One JSON object per
//!     generation on stdout.
//!
//! bench_probe hooks
//!     Reads commands on stdin, one per line, and answers one line each:
//!       target FILE        the container to hook: JSON {pid, pod_id, pod_name, pod_ip, spec, bundle}
//!                          where spec is the container's OCI runtime spec   → "ok"
//!       exec ARG...        runs an exec hook through the plugin's own runner → "ok NANOS" | "err NANOS REASON"
//!       http PORT PATH     runs an httpGet hook through the plugin's runner  → same
//!       plain IP PORT PATH a plain HTTP GET from this (host) process         → same
//! ```
//! The hook commands time exactly the call the plugin's core makes for a hook
//! (`Effects::run_hook` of the plugin's real `node::Node`), nothing around it.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nri_lifecycle::annotations::{self, HookSpec};
use nri_lifecycle::core::{self, Effects};
use nri_lifecycle::hooks::{self, Outcome as HookOutcome, Target};
use nri_lifecycle::logging::Logging;
use nri_lifecycle::model::{
    Capabilities, Container, ContainerState, EventKind, Mount, Namespace, Pod, ProcessSpec,
    RuntimeSeccomp,
};
use nri_lifecycle::node::Node;
use nri_lifecycle::nri::wire::api::ContainerState as WireState;
use nri_lifecycle::ns::pidfd::PidFd;
use nri_test_support::fake_runtime::{wire_container, wire_pod, FakeRuntime, Generation};
use serde_json::{json, Value};

type Res<T> = Result<T, String>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("cannot start tokio: {e}")),
    };
    let result = match args.first().map(String::as_str) {
        Some("events") => rt.block_on(events(&args[1..])),
        Some("hooks") => rt.block_on(hooks()),
        _ => Err(
            "usage: bench_probe events --plugin BIN [--events N] [--tracked N] | bench_probe hooks"
                .into(),
        ),
    };
    if let Err(e) = result {
        fail(&e);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench_probe: {msg}");
    std::process::exit(1)
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

// ------------------------------------------------------------------------------ events

/// The events a runtime sends for one container, limited to those the plugin subscribes to.
const LIFECYCLE: [EventKind; 5] = [
    EventKind::CreateContainer,
    EventKind::PostCreateContainer,
    EventKind::PostStartContainer,
    EventKind::StopContainer,
    EventKind::RemoveContainer,
];

/// The plugin process; SIGTERM (then SIGKILL) by PID when dropped.
struct PluginProc(Child);

impl Drop for PluginProc {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        // SAFETY: kill with our own child's PID and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        while matches!(self.0.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(3) {
                let _ = self.0.kill();
                let _ = self.0.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn rss_kib(pid: u32) -> Res<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

async fn events(args: &[String]) -> Res<()> {
    let plugin = PathBuf::from(flag(args, "--plugin").ok_or("--plugin BIN is required")?);
    let n: usize = flag(args, "--events")
        .map(|s| s.parse().map_err(|_| format!("bad --events {s}")))
        .transpose()?
        .unwrap_or(10_000);
    let tracked: usize = flag(args, "--tracked")
        .map(|s| s.parse().map_err(|_| format!("bad --tracked {s}")))
        .transpose()?
        .unwrap_or(1_000);
    for generation in [Generation::StateChangeOnly, Generation::V012] {
        let out = one_generation(&plugin, generation, n, tracked).await?;
        println!("{out}");
    }
    Ok(())
}

async fn one_generation(
    plugin: &Path,
    generation: Generation,
    n: usize,
    tracked: usize,
) -> Res<Value> {
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let socket = dir.path().join("nri.sock");
    let config = dir.path().join("plugin.conf");
    std::fs::write(
        &config,
        format!(
            "log_file = {:?}\nlog_level = \"info\"\nruntime_dir = {:?}\ncontainerd_address = {:?}\n",
            dir.path().join("plugin.log"),
            dir.path().join("run"),
            // Nothing listens there: the gate's stored-spec rewrite fails at once, as on a
            // runtime without containerd's API.
            dir.path().join("no-containerd.sock"),
        ),
    )
    .map_err(|e| format!("writing {}: {e}", config.display()))?;
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| format!("binding {}: {e}", socket.display()))?;
    let child = Command::new(plugin)
        .args(["run", "--socket"])
        .arg(&socket)
        .args(["--name", "bench", "--index", "10", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", plugin.display()))?;
    let proc = PluginProc(child);
    let pid = proc.0.id();
    let fake = tokio::time::timeout(
        Duration::from_secs(10),
        FakeRuntime::accept(&listener, generation),
    )
    .await
    .map_err(|_| "the plugin did not connect within 10 s".to_string())?
    .map_err(|e| e.to_string())?;
    fake.registered().await.map_err(|e| e.to_string())?;
    fake.configure(fake.default_configure())
        .await
        .map_err(|e| e.to_string())?;
    fake.synchronize(&[], &[], 100)
        .await
        .map_err(|e| e.to_string())?;
    // Let start-up work (gate extraction, log file) settle before reading the idle RSS.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_idle = rss_kib(pid)?;

    let pod = wire_pod("pod-events", "events", "bench");
    let containers = n.div_ceil(LIFECYCLE.len());
    let warmup = 100;
    let mut lat = Vec::with_capacity(n);
    let mut sent = 0usize;
    let started = Instant::now();
    let mut measured_start = started;
    for i in 0..(containers + warmup) {
        if i == warmup {
            measured_start = Instant::now();
        }
        let mut c = wire_container(&format!("c{i:06}"), "pod-events", "app", &[]);
        for kind in LIFECYCLE {
            if i >= warmup && sent >= n {
                break;
            }
            c.state = protobuf::EnumOrUnknown::new(match kind {
                EventKind::CreateContainer => WireState::CONTAINER_UNKNOWN,
                EventKind::PostCreateContainer => WireState::CONTAINER_CREATED,
                EventKind::PostStartContainer => WireState::CONTAINER_RUNNING,
                _ => WireState::CONTAINER_STOPPED,
            });
            let t = Instant::now();
            fake.event(kind, &pod, &c)
                .await
                .map_err(|e| e.to_string())?;
            let ns = t.elapsed().as_nanos() as u64;
            if i >= warmup {
                lat.push(ns);
                sent += 1;
            }
        }
    }
    let total = measured_start.elapsed();
    let rss_after_events = rss_kib(pid)?;

    // Containers that stay in the table with hooks: a PreStop exec (a gate socket each) and a
    // PostStart sleep that never runs (no PostStartContainer is sent: no process to hook).
    let hook_pod = wire_pod("pod-tracked", "tracked", "bench");
    for i in 0..tracked {
        let c = wire_container(
            &format!("t{i:06}"),
            "pod-tracked",
            "app",
            &[
                (
                    "prestop.lifecycle.nri.io/container.app",
                    r#"{"exec":{"command":["/bin/sh","-c","echo bye"]}}"#,
                ),
                (
                    "poststart.lifecycle.nri.io/container.app",
                    r#"{"sleep":{"seconds":1}}"#,
                ),
            ],
        );
        fake.event(EventKind::CreateContainer, &hook_pod, &c)
            .await
            .map_err(|e| e.to_string())?;
        fake.event(EventKind::PostCreateContainer, &hook_pod, &c)
            .await
            .map_err(|e| e.to_string())?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_tracked = rss_kib(pid)?;
    let sockets = std::fs::read_dir(dir.path().join("run").join("gate").join("containers"))
        .map(|d| d.count())
        .unwrap_or(0);
    drop(fake);
    drop(proc);
    Ok(json!({
        "generation": match generation {
            Generation::StateChangeOnly => "StateChange (containerd 1.7-2.2)",
            Generation::V012 => "dedicated RPCs (NRI v0.12)",
        },
        "events": lat.len(),
        "total_ns": total.as_nanos() as u64,
        "lat_ns": lat,
        "rss_idle_kib": rss_idle,
        "rss_after_events_kib": rss_after_events,
        "tracked": tracked,
        "tracked_socket_dirs": sockets,
        "rss_tracked_kib": rss_tracked,
    }))
}

// ------------------------------------------------------------------------------- hooks

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn u32_of(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// The container as the runtime describes it over NRI, built from its OCI spec (the same
/// fields NRI carries: process, namespaces, cgroups path, mounts, annotations).
fn target_from(file: &Path) -> Res<Target> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let spec = &v["spec"];
    let p = &spec["process"];
    let caps = &p["capabilities"];
    let process = ProcessSpec {
        args: strings(&p["args"]),
        env: strings(&p["env"]),
        cwd: p["cwd"].as_str().unwrap_or("/").to_string(),
        uid: u32_of(&p["user"]["uid"]),
        gid: u32_of(&p["user"]["gid"]),
        additional_gids: p["user"]["additionalGids"]
            .as_array()
            .map(|a| a.iter().filter_map(u32_of).collect())
            .unwrap_or_default(),
        no_new_privileges: p["noNewPrivileges"].as_bool().unwrap_or(false),
        capabilities: caps.is_object().then(|| Capabilities {
            bounding: strings(&caps["bounding"]),
            effective: strings(&caps["effective"]),
            permitted: strings(&caps["permitted"]),
            inheritable: strings(&caps["inheritable"]),
            ambient: strings(&caps["ambient"]),
        }),
        oom_score_adj: p["oomScoreAdj"].as_i64(),
        // As NRI v0.10 runtimes send it: the policy itself, or none.
        seccomp: match &spec["linux"]["seccomp"] {
            Value::Null => RuntimeSeccomp::Unconfined,
            policy => RuntimeSeccomp::Policy(
                serde_json::from_value(policy.clone())
                    .map_err(|e| format!("{}: linux.seccomp: {e}", file.display()))?,
            ),
        },
    };
    let namespaces: Vec<Namespace> = spec["linux"]["namespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| Namespace {
                    kind: n["type"].as_str().unwrap_or_default().to_string(),
                    path: n["path"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let mounts = spec["mounts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| Mount {
                    destination: m["destination"].as_str().unwrap_or_default().to_string(),
                    kind: m["type"].as_str().unwrap_or_default().to_string(),
                    source: m["source"].as_str().unwrap_or_default().to_string(),
                    options: strings(&m["options"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let annotations = string_map(&spec["annotations"]);
    let pid = u32_of(&v["pid"]).ok_or("target file has no pid")?;
    let container = Container {
        id: v["container_id"].as_str().unwrap_or_default().to_string(),
        pod_id: v["pod_id"].as_str().unwrap_or_default().to_string(),
        name: annotations
            .get("io.kubernetes.cri.container-name")
            .cloned()
            .unwrap_or_else(|| "app".into()),
        state: ContainerState::Running,
        labels: BTreeMap::new(),
        annotations,
        mounts,
        process,
        namespaces: namespaces.clone(),
        cgroups_path: spec["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        pid,
    };
    let pod = Pod {
        id: container.pod_id.clone(),
        name: v["pod_name"].as_str().unwrap_or_default().to_string(),
        namespace: "default".into(),
        ips: v["pod_ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .into_iter()
            .collect(),
        // The pod's network namespace is the one its containers join.
        namespaces: namespaces
            .into_iter()
            .filter(|n| n.kind == "network")
            .collect(),
        ..Default::default()
    };
    let init = PidFd::open(container.pid).map_err(|e| e.to_string())?;
    Ok(Target {
        container_id: container.id.clone(),
        init: Some(std::sync::Arc::new(init)),
        process: Some(container.process.clone()),
        // As the plugin finds it: the spec is read from the bundle on every hook.
        bundle: v["bundle"].as_str().map(PathBuf::from),
        pod_ips: pod.ips.clone(),
        pod_netns: pod.netns_path().map(PathBuf::from),
        pod_namespace: pod.namespace.clone(),
    })
}

fn spec_of(json: &str, container: &str) -> Res<HookSpec> {
    let mut ann = BTreeMap::new();
    ann.insert(
        format!("poststart.lifecycle.nri.io/container.{container}"),
        json.to_string(),
    );
    annotations::hooks_for(container, &BTreeMap::new(), &ann)
        .map_err(|e| e.to_string())?
        .post_start
        .ok_or_else(|| "no hook parsed".to_string())
}

fn outcome_line(outcome: &HookOutcome, ns: u64) -> String {
    match outcome {
        HookOutcome::Succeeded { .. } => format!("ok {ns}"),
        HookOutcome::Failed { reason } => format!("err {ns} {}", reason.replace('\n', " ")),
        HookOutcome::TimedOut { .. } => format!("err {ns} timed out"),
        HookOutcome::ContainerGone => format!("err {ns} container gone"),
    }
}

/// A plain HTTP/1.1 GET on a fresh connection, the body read to the end.
fn plain_get(ip: &str, port: &str, path: &str) -> Res<()> {
    let addr = format!("{ip}:{port}");
    let mut s = std::net::TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: bench\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.starts_with(b"HTTP/1.1 2") || buf.starts_with(b"HTTP/1.0 2") {
        Ok(())
    } else {
        Err(format!(
            "answer: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(40)])
        ))
    }
}

async fn hooks() -> Res<()> {
    let stdin = std::io::stdin();
    let mut target: Option<Target> = None;
    let limits = hooks::Limits {
        default_timeout: Duration::from_secs(10),
        ..hooks::Limits::default()
    };
    let mut out = std::io::stdout().lock();
    // The plugin's own effects: `run_hook` is what the core calls for every hook.
    let (inbox, _inlet) = core::channel();
    let node = Node::new(Logging::init("warn"), inbox, Default::default());
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["target", file] => match target_from(Path::new(file)) {
                Ok(t) => {
                    target = Some(t);
                    "ok".to_string()
                }
                Err(e) => format!("err 0 {e}"),
            },
            ["exec", cmd @ ..] if !cmd.is_empty() => match (&target, exec_spec(cmd)) {
                (Some(t), Ok(spec)) => {
                    let start = Instant::now();
                    let outcome = node.run_hook(&spec, t, &limits).await;
                    outcome_line(&outcome, start.elapsed().as_nanos() as u64)
                }
                (None, _) => "err 0 no target".into(),
                (_, Err(e)) => format!("err 0 {e}"),
            },
            ["http", port, path] => {
                let json = format!(r#"{{"httpGet":{{"port":{port},"path":"{path}"}}}}"#);
                match (&target, spec_of(&json, "app")) {
                    (Some(t), Ok(spec)) => {
                        let start = Instant::now();
                        let outcome = node.run_hook(&spec, t, &limits).await;
                        outcome_line(&outcome, start.elapsed().as_nanos() as u64)
                    }
                    (None, _) => "err 0 no target".into(),
                    (_, Err(e)) => format!("err 0 {e}"),
                }
            }
            ["plain", ip, port, path] => {
                let start = Instant::now();
                let r = plain_get(ip, port, path);
                let ns = start.elapsed().as_nanos() as u64;
                match r {
                    Ok(()) => format!("ok {ns}"),
                    Err(e) => format!("err {ns} {e}"),
                }
            }
            _ => format!("err 0 unknown command {line:?}"),
        };
        writeln!(out, "{answer}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn exec_spec(cmd: &[&str]) -> Res<HookSpec> {
    let json = json!({ "exec": { "command": cmd } }).to_string();
    spec_of(&json, "app")
}
