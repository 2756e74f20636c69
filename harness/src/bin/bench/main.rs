//! `make bench`: every figure of the benchmark measured side by side with its reference in one
//! run (variants interleaved round by round, the order rotated each round), written to
//! BENCHMARKS.md.
//!
//! Real containerd (private nodes of the harness): exec and httpGet hook latency, CRI
//! create+start with and without the plugin, stop with and without the PreStop gate, a burst of
//! containers with PostStart hooks, and the gate's RSS as PID 1. The fake runtime (the
//! `bench_probe` example of the plugin crate, which drives the release binary): NRI event
//! latency and throughput in both protocol generations, and the plugin's RSS. Recovery: how
//! long the drop-in plugin takes to serve again after a stall past the runtime's request
//! timeout and after a SIGKILL.

mod probe;
mod recovery;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use nri_harness::bench::report::{self, Figure, Machine, Report, Row};
use nri_harness::bench::stats::{self, Samples};
use nri_harness::bench::targets;
use nri_harness::bench::verdict::{text_or_na, Bytes, Quantity};
use nri_harness::cri::ContainerState;
use nri_harness::cri::Seccomp;
use nri_harness::{images, plugin, ContainerSpec, Node, NodeOptions, PluginMode, PodSpec, Version};

/// Everything the command line can change.
#[derive(Debug, Clone)]
struct Opts {
    plugin: PathBuf,
    output: PathBuf,
    versions: Vec<Version>,
    exec_rounds: usize,
    http_rounds: usize,
    start_rounds: usize,
    burst: usize,
    events: usize,
    tracked: usize,
    /// Only the hook latency figures (exec with and without a seccomp profile, httpGet) on
    /// the plugin's node: no fake-runtime figures, no start/stop, no burst.
    only_hooks: bool,
    recovery_rounds: usize,
    sections: Vec<Section>,
}

/// The parts of the bench; `--sections` runs some of them only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// NRI events on the fake runtime, memory and sizes.
    Events,
    /// Real containerd: create/start/stop, hook latency, burst.
    Nodes,
    /// Real containerd: recovery of the drop-in plugin after a stall and a SIGKILL.
    Recovery,
}

const USAGE: &str = "usage: bench --plugin BIN [--output BENCHMARKS.md] [--versions 2.1,1.7] \
[--exec-rounds 100] [--http-rounds 100] [--start-rounds 80] [--burst 100] [--events 10000] [--tracked 1000] \
[--recovery-rounds 5] [--sections events,nodes,recovery] [--only hooks]";

fn parse_opts() -> anyhow::Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Opts {
        plugin: PathBuf::new(),
        output: PathBuf::from("BENCHMARKS.md"),
        versions: vec![Version::V2_1, Version::V1_7],
        exec_rounds: 100,
        http_rounds: 100,
        start_rounds: 80,
        burst: 100,
        events: 10_000,
        tracked: 1_000,
        only_hooks: false,
        recovery_rounds: 5,
        sections: vec![Section::Events, Section::Nodes, Section::Recovery],
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned();
        let need = || {
            value
                .clone()
                .with_context(|| format!("{} needs a value\n{USAGE}", args[i]))
        };
        let num = |v: String| -> anyhow::Result<usize> {
            v.parse().with_context(|| format!("{v:?} is not a number"))
        };
        match args[i].as_str() {
            "--plugin" => o.plugin = PathBuf::from(need()?),
            "--output" => o.output = PathBuf::from(need()?),
            "--versions" => {
                o.versions = need()?
                    .split(',')
                    .map(|v| match v.trim() {
                        "1.7" => Ok(Version::V1_7),
                        "2.1" => Ok(Version::V2_1),
                        other => bail!("unknown containerd version {other:?} (1.7 or 2.1)"),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--exec-rounds" => o.exec_rounds = num(need()?)?,
            "--http-rounds" => o.http_rounds = num(need()?)?,
            "--start-rounds" => o.start_rounds = num(need()?)?,
            "--burst" => o.burst = num(need()?)?,
            "--events" => o.events = num(need()?)?,
            "--tracked" => o.tracked = num(need()?)?,
            "--recovery-rounds" => o.recovery_rounds = num(need()?)?,
            "--sections" => {
                o.sections = need()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "events" => Ok(Section::Events),
                        "nodes" => Ok(Section::Nodes),
                        "recovery" => Ok(Section::Recovery),
                        other => bail!("unknown section {other:?} (events, nodes or recovery)"),
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--only" => match need()?.as_str() {
                "hooks" => {
                    o.only_hooks = true;
                    o.sections = vec![Section::Nodes];
                }
                other => bail!("unknown section {other:?} (hooks)\n{USAGE}"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
        i += 2;
    }
    if o.plugin.as_os_str().is_empty() {
        bail!("--plugin is required\n{USAGE}");
    }
    o.plugin = std::fs::canonicalize(&o.plugin)
        .with_context(|| format!("plugin binary {}", o.plugin.display()))?;
    Ok(o)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if !nri_harness::require_root("bench") {
        bail!("the benchmarks need root");
    }
    let opts = parse_opts()?;
    let began = Instant::now();
    let mut rep = Report::new(Machine::detect());
    let wants = |s: Section| opts.sections.contains(&s);
    let probe_bin = if wants(Section::Events) || wants(Section::Nodes) {
        say("building the in-process probe (bench_probe example, release)");
        Some(probe::build().context("building the bench_probe example")?)
    } else {
        None
    };

    // ---------------------------------------------------------------- fake runtime figures
    if let (true, Some(probe_bin)) = (wants(Section::Events), &probe_bin) {
        fake_runtime(&opts, probe_bin, &mut rep);
    }

    // ---------------------------------------------------------------- real containerd
    for v in &opts.versions {
        let v = *v;
        if let (true, Some(probe_bin)) = (wants(Section::Nodes), &probe_bin) {
            say(&format!(
                "{v}: starting nodes: NRI off, NRI on without plugins, the plugin pre-installed"
            ));
            if let Err(e) = on_version(v, &opts, probe_bin, &mut rep).await {
                rep.note(format!("{v}: {e:#}"));
                eprintln!("bench: {v}: {e:#}");
            }
        }
        if wants(Section::Recovery) {
            if let Err(e) = recovery::run(v, &opts, &mut rep).await {
                rep.note(format!("{v}: recovery: {e:#}"));
                eprintln!("bench: {v}: recovery: {e:#}");
            }
        }
    }
    finish(&opts, rep, began)
}

/// The figures measured on the fake runtime, and the binaries' sizes.
fn fake_runtime(opts: &Opts, probe_bin: &Path, rep: &mut Report) {
    say(&format!(
        "NRI events on the fake runtime: {} per generation, then {} tracked containers",
        opts.events, opts.tracked
    ));
    match probe::events(probe_bin, &opts.plugin, opts.events, opts.tracked) {
        Ok(gens) => figures_events(rep, &gens),
        Err(e) => rep.note(format!("NRI event figures failed: {e:#}")),
    }
    match gate_size(&opts.plugin) {
        Ok((gate, plugin)) => {
            rep.limits.push(targets::gate_size(
                "gate binary (embedded, written out at start-up)",
                gate,
            ));
            rep.sizes
                .push(("plugin binary (release, stripped)".into(), plugin));
        }
        Err(e) => rep.note(format!("binary sizes: {e:#}")),
    }
}

/// Renders the report and writes it to `--output`.
fn finish(opts: &Opts, mut rep: Report, began: Instant) -> anyhow::Result<()> {
    rep.duration = began.elapsed();
    rep.load_after = report::loadavg();
    let mut text = rep.render(&opts_line(opts));
    // The hand-written analysis (profiles, causes, before/after) follows the measurements.
    let notes = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-notes.md");
    if let Ok(analysis) = std::fs::read_to_string(&notes) {
        text.push('\n');
        text.push_str(&analysis);
    }
    std::fs::write(&opts.output, &text)
        .with_context(|| format!("writing {}", opts.output.display()))?;
    println!("{text}");
    say(&format!(
        "wrote {} in {:.0} s",
        opts.output.display(),
        began.elapsed().as_secs_f64()
    ));
    Ok(())
}

pub(crate) fn say(msg: &str) {
    eprintln!("[bench] {msg}");
}

fn opts_line(o: &Opts) -> String {
    format!(
        "--exec-rounds {} --http-rounds {} --start-rounds {} --burst {} --events {} --tracked {} --recovery-rounds {} --sections {} --versions {}",
        o.exec_rounds,
        o.http_rounds,
        o.start_rounds,
        o.burst,
        o.events,
        o.tracked,
        o.recovery_rounds,
        o.sections
            .iter()
            .map(|s| match s {
                Section::Events => "events",
                Section::Nodes => "nodes",
                Section::Recovery => "recovery",
            })
            .collect::<Vec<_>>()
            .join(","),
        o.versions
            .iter()
            .map(|v| match v {
                Version::V1_7 => "1.7",
                Version::V2_1 => "2.1",
            })
            .collect::<Vec<_>>()
            .join(",")
    ) + if o.only_hooks { " --only hooks" } else { "" }
}

fn gate_size(plugin: &Path) -> anyhow::Result<(Bytes, Bytes)> {
    let dir = std::env::temp_dir().join(format!("nri-bench-gate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let gate = dir.join("gate");
    let st = Command::new(plugin)
        .args(["gate", "--output"])
        .arg(&gate)
        .status()?;
    if !st.success() {
        bail!("`{} gate --output` failed: {st}", plugin.display());
    }
    let g = std::fs::metadata(&gate)?.len();
    let p = std::fs::metadata(plugin)?.len();
    let _ = std::fs::remove_dir_all(&dir);
    Ok((Bytes::new(g), Bytes::new(p)))
}

fn figures_events(rep: &mut Report, gens: &[probe::Generation]) {
    for g in gens {
        let s = Samples::from_ns(&g.lat_ns);
        let total = Duration::from_nanos(g.total_ns);
        let mut f = Figure::new(&format!("NRI event handling, fake runtime, {}", g.name));
        f.rows
            .push(Row::plain("round trip per event (runtime side)", &s));
        f.checks.push(targets::events(&s));
        f.lines.push(format!(
            "{} events of hook-less containers (CreateContainer, PostCreateContainer, PostStartContainer, StopContainer, RemoveContainer: the events the plugin subscribes to), sent one after the other: p50 {}, p99 {}, max {}; {:.0} events/s.",
            g.events,
            text_or_na(s.median()),
            text_or_na(s.p99()),
            text_or_na(s.max()),
            g.events as f64 / total.as_secs_f64()
        ));
        rep.figures.push(f);
    }
    // Memory: the worst of the two generations; not measured unless every one reported it.
    let worst = |kib: fn(&probe::Generation) -> Option<u64>| -> Option<Bytes> {
        if gens.is_empty() {
            return None;
        }
        gens.iter()
            .map(kib)
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().max())
            .map(Bytes::kib)
    };
    let n = gens.first().map(|g| g.tracked).unwrap_or(0);
    let sockets = gens
        .iter()
        .map(|g| g.tracked_socket_dirs)
        .min()
        .unwrap_or(0);
    rep.limits.push(targets::memory(
        "plugin RSS, idle (registered and configured)",
        worst(|g| g.rss_idle_kib),
        targets::RSS_IDLE,
    ));
    rep.limits.push(targets::memory(
        &format!("plugin RSS with {n} tracked containers (PreStop exec + PostStart hooks; {sockets} gate sockets open)"),
        worst(|g| g.rss_tracked_kib),
        targets::RSS_TRACKED,
    ));
}

/// A container spec of the benchmark: the distroless test app (exits 0 on SIGTERM).
fn app() -> ContainerSpec {
    ContainerSpec::new("app", images::DISTROLESS, &[])
}

const PRESTOP_NOOP: &str = r#"{"sleep":{"seconds":0}}"#;
const PRESTOP_KEY: &str = "prestop.lifecycle.nri.io/container.app";

/// A node of version `v` with the plugin pre-installed, configured with [`plugin_config`].
pub(crate) async fn plugin_node(v: Version, opts: &Opts) -> anyhow::Result<Node> {
    Node::start_with(
        v,
        PluginMode::Preinstalled(opts.plugin.clone()),
        NodeOptions {
            plugin_config: Some(plugin_config()),
            ..Default::default()
        },
    )
    .await
    .context("node with the plugin")
}

/// Notes under a figure how many runs of each variant failed, with the first error.
fn note_errors(
    f: &mut Figure,
    names: &[&str],
    errors: &[usize],
    first: &[Option<String>],
    runs: usize,
) {
    for (k, name) in names.iter().enumerate() {
        if errors[k] > 0 {
            f.lines.push(format!(
                "{name}: {} of {runs} runs failed, first: {}",
                errors[k],
                first[k].clone().unwrap_or_default()
            ));
        }
    }
}

pub(crate) fn plugin_config() -> String {
    // As shipped (log level info), with everything inside the node directory.
    "log_file = \"{plugin_log}\"\nlog_level = \"info\"\nruntime_dir = \"{dir}/plugin-run\"\n".into()
}

async fn on_version(
    v: Version,
    opts: &Opts,
    probe_bin: &Path,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let off = Node::start_with(
        v,
        PluginMode::None,
        NodeOptions {
            nri: false,
            plugin_config: None,
            ..Default::default()
        },
    )
    .await
    .context("node without NRI")?;
    let bare = Node::start_with(
        v,
        PluginMode::None,
        NodeOptions {
            plugin_config: None,
            ..Default::default()
        },
    )
    .await
    .context("node with NRI and no plugin")?;
    let on = plugin_node(v, opts).await?;
    rep.containerd
        .push(format!("{v} ({})", on.install().package_version(v)));
    if !plugin::wait_registered(&on, "nri-lifecycle", Duration::from_secs(10)).await {
        bail!("the plugin did not register:\n{}", on.containerd_log());
    }
    let result = async {
        if !opts.only_hooks {
            start_and_stop(v, opts, [&off, &bare, &on], rep).await?;
        }
        hook_latency(v, opts, &on, probe_bin, rep).await?;
        if !opts.only_hooks {
            burst(v, opts, &on, rep).await?;
        }
        anyhow::Ok(())
    }
    .await;
    let timeouts = nri_timeouts(&on.containerd_log());
    if !timeouts.is_empty() {
        rep.note(format!(
            "{v}: containerd logged {} NRI timeout line(s), e.g. {}",
            timeouts.len(),
            timeouts[0]
        ));
    }
    if let Err(e) = off.stop().await {
        rep.note(format!("{v}: teardown of the NRI-off node: {e}"));
    }
    if let Err(e) = bare.stop().await {
        rep.note(format!(
            "{v}: teardown of the NRI-on node without plugin: {e}"
        ));
    }
    if let Err(e) = on.stop().await {
        rep.note(format!("{v}: teardown of the plugin node: {e}"));
    }
    result
}

fn nri_timeouts(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            (l.contains("level=warning") || l.contains("level=error"))
                && l.contains("nri")
                && (l.contains("timeout")
                    || l.contains("timed out")
                    || l.contains("deadline exceeded"))
                && !l.contains("plugin_request_timeout")
                && !l.contains("registration_timeout")
        })
        .map(|l| l.chars().take(300).collect())
        .collect()
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn first_arg(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| {
            c.split(|b| *b == 0)
                .next()
                .map(|a| String::from_utf8_lossy(a).into_owned())
        })
        .unwrap_or_default()
}

/// Figures 3 and 7: CRI CreateContainer+StartContainer, then StopContainer, for a plain
/// container without NRI, with NRI but no plugin (context), with the plugin, and a gated one
/// (PreStop no-op) with the plugin.
async fn start_and_stop(
    v: Version,
    opts: &Opts,
    nodes: [&Node; 3],
    rep: &mut Report,
) -> anyhow::Result<()> {
    say(&format!(
        "{v}: create+start and stop, {} rounds",
        opts.start_rounds
    ));
    let [off, bare, on] = nodes;
    let mut cris = [off.cri().await?, bare.cri().await?, on.cri().await?];
    // Variant k runs on node NODE_OF[k].
    const NODE_OF: [usize; 4] = [0, 1, 2, 2];
    let names = [
        "NRI off",
        "NRI on, no plugin (context)",
        "plugin, no hooks",
        "plugin, PreStop (gate)",
    ];
    let mut pods = Vec::new();
    for (k, name) in ["bench-off", "bench-bare", "bench-plain", "bench-gated"]
        .iter()
        .enumerate()
    {
        pods.push(cris[NODE_OF[k]].run_pod(&PodSpec::new(name)).await?);
    }
    let gated_spec = app().annotation(PRESTOP_KEY, PRESTOP_NOOP);
    let mut start: [Vec<Duration>; 4] = Default::default();
    let mut stop: [Vec<Duration>; 4] = Default::default();
    let mut gate_rss = Vec::new();
    let mut gate_pid1 = 0usize;
    let warmup = 3;
    for round in 0..(opts.start_rounds + warmup) {
        let order: Vec<usize> = (0..4).map(|k| (k + round) % 4).collect();
        let mut ids: [String; 4] = Default::default();
        for &k in &order {
            let spec = if k == 3 { gated_spec.clone() } else { app() };
            let cri = &mut cris[NODE_OF[k]];
            let t = Instant::now();
            let id = cri.create_container(&pods[k], &spec).await?;
            cri.start_container(&id).await?;
            let s = t.elapsed();
            if round >= warmup {
                start[k].push(s);
            }
            ids[k] = id;
        }
        // The gate as PID 1 of the gated container.
        let pid = cris[2].container_pid(&ids[3]).await.unwrap_or(0);
        if pid != 0 && first_arg(pid).ends_with("/gate") {
            gate_pid1 += 1;
            if let Some(kib) = vm_rss_kib(pid) {
                gate_rss.push(kib);
            }
        }
        for &k in &order {
            let cri = &mut cris[NODE_OF[k]];
            let t = Instant::now();
            cri.stop_container(&ids[k], 10).await?;
            let s = t.elapsed();
            if round >= warmup {
                stop[k].push(s);
            }
            cri.remove_container(&ids[k]).await?;
        }
    }
    for (k, pod) in pods.iter().enumerate() {
        cris[NODE_OF[k]].delete_pod(pod).await?;
    }

    let s: Vec<Samples> = start.into_iter().map(Samples::new).collect();
    let mut f = Figure::new(&format!("CRI CreateContainer + StartContainer, {v}"));
    f.rows.push(Row::reference(names[0], &s[0]));
    f.rows.push(Row::vs(names[1], &s[1], &s[0], None));
    f.rows
        .push(Row::vs(names[2], &s[2], &s[0], Some(targets::START_PLUGIN)));
    f.rows
        .push(Row::vs(names[3], &s[3], &s[0], Some(targets::START_GATED)));
    f.checks = targets::start(&s[0], &s[2], &s[3]);
    f.lines.push(format!(
        "Distroless test app; three nodes of the same containerd side by side (NRI off; NRI on without plugins; the plugin pre-installed), the four variants interleaved, order rotated each round, {warmup} warm-up rounds dropped. The \"NRI on, no plugin\" row separates what containerd's NRI adapter costs from what the plugin costs. The gate was PID 1 of the PreStop container in {gate_pid1} of {} rounds (stored-spec rewrite on this containerd).",
        opts.start_rounds + warmup
    ));
    rep.figures.push(f);

    let hook_times = stats::hook_times(&on.plugin_log(), "preStop");
    let hook = Samples::new(hook_times.clone())
        .median()
        .unwrap_or(Duration::ZERO);
    let t: Vec<Samples> = stop.into_iter().map(Samples::new).collect();
    let mut f = Figure::new(&format!("CRI StopContainer, {v}"));
    f.rows
        .push(Row::reference("plugin, no hooks (ungated)", &t[2]));
    f.rows.push(Row::vs(
        "plugin, PreStop sleep 0 (gated)",
        &t[3],
        &t[2],
        Some(targets::STOP_GATED),
    ));
    f.rows.push(Row::plain("NRI off (context)", &t[0]));
    f.rows
        .push(Row::plain("NRI on, no plugin (context)", &t[1]));
    f.checks.push(targets::stop(&t[2], &t[3], hook));
    f.lines.push(format!(
        "StopContainer(timeout 10 s); the app exits on SIGTERM. PreStop `{PRESTOP_NOOP}`; the plugin logged {} successful PreStop hooks (median own time {}, added to the allowance).",
        hook_times.len(),
        hook.text()
    ));
    if hook_times.is_empty() {
        f.lines.push("No PreStop hook succeeded (see the plugin log): the gate was answered with a failure and forwarded the signal; the figure still measures the gate's round trip.".into());
    }
    rep.figures.push(f);
    if let Some(max) = gate_rss.iter().copied().max() {
        rep.limits.push(targets::memory(
            &format!(
                "gate RSS as PID 1 of a real container, {v} (max of {})",
                gate_rss.len()
            ),
            Some(Bytes::kib(max)),
            targets::GATE_RSS,
        ));
    } else {
        rep.note(format!(
            "{v}: the gate was never seen as PID 1: no gate RSS"
        ));
    }
    Ok(())
}

/// Figures 1 and 2: exec and httpGet hook latency on the same running containers.
async fn hook_latency(
    v: Version,
    opts: &Opts,
    on: &Node,
    probe_bin: &Path,
    rep: &mut Report,
) -> anyhow::Result<()> {
    say(&format!(
        "{v}: exec hook latency ({} rounds) and httpGet ({} rounds)",
        opts.exec_rounds, opts.http_rounds
    ));
    let mut cri = on.cri().await?;
    let pod = cri.run_pod(&PodSpec::new("bench-hooks")).await?;
    let sh = ContainerSpec::new("sh", images::BUSYBOX, &["sleep", "3600"]);
    let web = ContainerSpec {
        args: vec!["--http".into(), "8080".into()],
        ..ContainerSpec::new("web", images::DISTROLESS, &[])
    };
    // The same, running the runtime's default seccomp profile (a RuntimeDefault pod).
    let confined = ContainerSpec {
        seccomp: Some(Seccomp::RuntimeDefault),
        ..ContainerSpec::new("sh-seccomp", images::BUSYBOX, &["sleep", "3600"])
    };
    let sh_id = cri.create_container(&pod, &sh).await?;
    cri.start_container(&sh_id).await?;
    let web_id = cri.create_container(&pod, &web).await?;
    cri.start_container(&web_id).await?;
    let confined_id = cri.create_container(&pod, &confined).await?;
    cri.start_container(&confined_id).await?;
    for id in [&sh_id, &web_id, &confined_id] {
        cri.wait_state(
            id,
            ContainerState::ContainerRunning,
            Duration::from_secs(30),
        )
        .await?;
    }
    let pid = cri.container_pid(&sh_id).await?;
    let web_pid = cri.container_pid(&web_id).await?;
    let confined_pid = cri.container_pid(&confined_id).await?;
    let ip = cri.pod_ip(&pod.id).await?;
    if pid == 0 || web_pid == 0 || confined_pid == 0 || ip.is_empty() {
        bail!("no pid or pod ip (pid {pid}, web {web_pid}, seccomp {confined_pid}, ip {ip:?})");
    }
    let dir = on.host_dir("bench-probe")?;
    let mut p = probe::Hooks::start(probe_bin)?;
    let sh_target = dir.join("sh.json");
    let web_target = dir.join("web.json");
    let state = &on.paths().state;
    write_target(state, &sh_id, &pod.id, "bench-hooks", &ip, pid, &sh_target)?;
    write_target(
        state,
        &web_id,
        &pod.id,
        "bench-hooks",
        &ip,
        web_pid,
        &web_target,
    )?;
    let confined_target = dir.join("sh-seccomp.json");
    write_target(
        state,
        &confined_id,
        &pod.id,
        "bench-hooks",
        &ip,
        confined_pid,
        &confined_target,
    )?;

    // ---- exec
    p.target(&sh_target)?;
    let runc_root = on.paths().runc_root.join("k8s.io");
    if !runc_root.join(&sh_id).exists() {
        rep.note(format!(
            "{v}: runc state of {sh_id} not found under the node's runc root; `runc exec` will fail"
        ));
    }
    let names = [
        "ours (plugin's exec runner)",
        "CRI ExecSync",
        "runc exec",
        "nsenter -t PID -a",
    ];
    let mut s: [Vec<Duration>; 4] = Default::default();
    let mut errors: [usize; 4] = [0; 4];
    let mut first_err: [Option<String>; 4] = Default::default();
    let warmup = 5;
    for round in 0..(opts.exec_rounds + warmup) {
        for j in 0..4 {
            let k = (j + round) % 4;
            let r: anyhow::Result<Duration> = match k {
                0 => p.exec(&["true"]),
                1 => {
                    let t = Instant::now();
                    let r = cri.exec_sync(&sh_id, &["true"], 10).await?;
                    let e = t.elapsed();
                    if r.exit_code == 0 {
                        Ok(e)
                    } else {
                        Err(anyhow::anyhow!("exit {}: {}", r.exit_code, r.stderr))
                    }
                }
                2 => timed_cmd(
                    Command::new("/usr/sbin/runc")
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["exec", &sh_id, "true"]),
                ),
                _ => {
                    timed_cmd(Command::new("nsenter").args(["-t", &pid.to_string(), "-a", "true"]))
                }
            };
            match r {
                Ok(e) if round >= warmup => s[k].push(e),
                Ok(_) => {}
                Err(e) => {
                    errors[k] += 1;
                    first_err[k].get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
    let x: Vec<Samples> = s.into_iter().map(Samples::new).collect();
    let mut f = Figure::new(&format!("exec hook latency (`true`), same container, {v}"));
    f.rows.push(Row::plain(names[0], &x[0]));
    for k in 1..4 {
        f.rows.push(Row::speedup(names[k], &x[k], &x[0]));
    }
    f.checks = targets::exec(&x[0], &x[1], &x[3]);
    f.lines.push(format!(
        "busybox container running `sleep 3600`; the four variants interleaved, order rotated each round, {warmup} warm-up rounds dropped. \"ours\" times `Effects::run_hook` of the plugin's `node::Node` (the call its core makes for every hook) in the bench_probe process; the others are timed around the CRI call or the child process. Ratios are reference ÷ ours (how many times faster ours is)."
    ));
    note_errors(
        &mut f,
        &names,
        &errors,
        &first_err,
        opts.exec_rounds + warmup,
    );
    rep.figures.push(f);

    // ---- exec under the runtime's default seccomp profile
    exec_seccomp(
        v,
        opts,
        &mut cri,
        &mut p,
        &confined_id,
        &confined_target,
        rep,
    )
    .await?;

    // ---- httpGet
    on.check_pod_route(&ip)
        .context("the pod IP is not routed via the node's bridge: no HTTP traffic sent")?;
    p.target(&web_target)?;
    let mut h: [Vec<Duration>; 2] = Default::default();
    let mut herr: [usize; 2] = [0; 2];
    let mut hfirst: [Option<String>; 2] = Default::default();
    for round in 0..(opts.http_rounds + warmup) {
        for j in 0..2 {
            let k = (j + round) % 2;
            let r = if k == 0 {
                p.http(8080, "/")
            } else {
                p.plain(&ip, 8080, "/")
            };
            match r {
                Ok(e) if round >= warmup => h[k].push(e),
                Ok(_) => {}
                Err(e) => {
                    herr[k] += 1;
                    hfirst[k].get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
    let y: Vec<Samples> = h.into_iter().map(Samples::new).collect();
    let mut f = Figure::new(&format!("httpGet hook latency, {v}"));
    f.rows.push(Row::reference(
        "plain GET from the host to the pod IP",
        &y[1],
    ));
    f.rows.push(Row::vs(
        "ours (plugin's httpGet runner)",
        &y[0],
        &y[1],
        Some(targets::HTTP_GET),
    ));
    f.checks.push(targets::http(&y[0], &y[1]));
    f.lines.push(format!(
        "The test app serving HTTP in the pod on port 8080; `ip route get {ip}` checked to go via the node's bridge first. Both on a fresh connection each time, from the same process (bench_probe), interleaved; the plain GET is a hand-written HTTP/1.1 request over a std TcpStream. \"ours\" times `Effects::run_hook` with an httpGet handler for the pod (its connection is made from inside the pod's network namespace)."
    ));
    for k in 0..2 {
        if herr[k] > 0 {
            f.lines.push(format!(
                "{}: {} of {} runs failed, first: {}",
                ["ours", "plain GET"][k],
                herr[k],
                opts.http_rounds + warmup,
                hfirst[k].clone().unwrap_or_default()
            ));
        }
    }
    rep.figures.push(f);
    drop(p);
    cri.delete_pod(&pod).await?;
    Ok(())
}

/// Figure 1b: exec hook latency in a container that runs the runtime's default seccomp
/// profile, against CRI ExecSync on the same container (every hook loads the filter, compiled
/// once for the profile).
async fn exec_seccomp(
    v: Version,
    opts: &Opts,
    cri: &mut nri_harness::Cri,
    p: &mut probe::Hooks,
    id: &str,
    target: &Path,
    rep: &mut Report,
) -> anyhow::Result<()> {
    p.target(target)?;
    let names = ["ours (plugin's exec runner)", "CRI ExecSync"];
    let mut s: [Vec<Duration>; 2] = Default::default();
    let mut errors: [usize; 2] = [0; 2];
    let mut first_err: [Option<String>; 2] = Default::default();
    let warmup = 5;
    for round in 0..(opts.exec_rounds + warmup) {
        for j in 0..2 {
            let k = (j + round) % 2;
            let r: anyhow::Result<Duration> = if k == 0 {
                p.exec(&["true"])
            } else {
                let t = Instant::now();
                let r = cri.exec_sync(id, &["true"], 10).await?;
                let e = t.elapsed();
                if r.exit_code == 0 {
                    Ok(e)
                } else {
                    Err(anyhow::anyhow!("exit {}: {}", r.exit_code, r.stderr))
                }
            };
            match r {
                Ok(e) if round >= warmup => s[k].push(e),
                Ok(_) => {}
                Err(e) => {
                    errors[k] += 1;
                    first_err[k].get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }
    }
    let x: Vec<Samples> = s.into_iter().map(Samples::new).collect();
    let mut f = Figure::new(&format!(
        "exec hook latency (`true`), RuntimeDefault seccomp profile, same container, {v}"
    ));
    f.rows.push(Row::plain(names[0], &x[0]));
    f.rows.push(Row::speedup(names[1], &x[1], &x[0]));
    f.checks.push(targets::exec_seccomp(&x[0], &x[1]));
    f.lines.push(format!(
        "busybox container running `sleep 3600` with `seccompProfile: RuntimeDefault` (containerd's default profile in its OCI spec); both variants interleaved, order rotated each round, {warmup} warm-up rounds dropped. Every hook reads the bundle's spec and loads the container's filter into the hook process; the filter is compiled by libseccomp once per distinct profile and then taken from the plugin's cache. Ratios are reference ÷ ours."
    ));
    note_errors(
        &mut f,
        &names,
        &errors,
        &first_err,
        opts.exec_rounds + warmup,
    );
    rep.figures.push(f);
    Ok(())
}

fn timed_cmd(cmd: &mut Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .context("spawning")?;
    let e = t.elapsed();
    if out.status.success() {
        Ok(e)
    } else {
        bail!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }
}

/// Writes the probe's target file: the container's OCI spec (the bundle's `config.json`, as
/// the runtime created the task), PID and pod.
fn write_target(
    state: &Path,
    id: &str,
    pod_id: &str,
    pod_name: &str,
    ip: &str,
    pid: u32,
    file: &Path,
) -> anyhow::Result<()> {
    let bundle = state
        .join("io.containerd.runtime.v2.task")
        .join("k8s.io")
        .join(id)
        .join("config.json");
    let text = std::fs::read_to_string(&bundle)
        .with_context(|| format!("reading {}", bundle.display()))?;
    let spec: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", bundle.display()))?;
    let v = serde_json::json!({
        "container_id": id,
        "pod_id": pod_id,
        "pod_name": pod_name,
        "pod_ip": ip,
        "pid": pid,
        "spec": spec,
        "bundle": bundle.parent(),
    });
    std::fs::write(file, v.to_string()).with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

/// Figure 6: N containers started at once, each with a PostStart exec hook that records when
/// it ran.
async fn burst(v: Version, opts: &Opts, on: &Node, rep: &mut Report) -> anyhow::Result<()> {
    let n = opts.burst;
    if n == 0 {
        return Ok(());
    }
    let per_pod = 10usize;
    let pods_n = n.div_ceil(per_pod);
    say(&format!(
        "{v}: burst of {n} containers ({pods_n} pods) with a PostStart exec hook"
    ));
    let shared = on.host_dir("burst")?;
    let done = shared.join("done");
    let _ = std::fs::remove_file(&done);
    let mut cri = on.cri().await?;
    let mut ids = Vec::with_capacity(n);
    let mut pods = Vec::new();
    for p in 0..pods_n {
        let pod = cri.run_pod(&PodSpec::new(&format!("burst-{p}"))).await?;
        for c in 0..per_pod.min(n - p * per_pod) {
            let name = format!("c{c}");
            let hook = serde_json::json!({
                "exec": { "command": ["/testapp", "write", "/shared/done", "{now}", format!("p{p}-{name}")] }
            })
            .to_string();
            let spec = ContainerSpec::new(&name, images::DISTROLESS, &[])
                .annotation(
                    &format!("poststart.lifecycle.nri.io/container.{name}"),
                    &hook,
                )
                .mount(&shared, "/shared", false);
            let id = cri.create_container(&pod, &spec).await?;
            ids.push((format!("p{p}-{name}"), id));
        }
        pods.push(pod);
    }
    let log_before = on.plugin_log().len();
    let t0 = now_unix();
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (tag, id) in &ids {
        let mut c = cri.clone();
        let id = id.clone();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.start_container(&id).await;
            (tag, r.map(|_| now_unix()))
        }));
    }
    let mut started = std::collections::HashMap::new();
    let mut start_errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok((tag, Ok(at))) => {
                started.insert(tag, at);
            }
            Ok((tag, Err(e))) => start_errors.push(format!("{tag}: {e}")),
            Err(e) => start_errors.push(format!("task: {e}")),
        }
    }
    let all_started = began.elapsed();
    // Wait for every hook (or give up after 60 s).
    let limit = Instant::now() + Duration::from_secs(60);
    let mut hooks: std::collections::HashMap<String, f64> = Default::default();
    loop {
        hooks.clear();
        for line in std::fs::read_to_string(&done).unwrap_or_default().lines() {
            let mut w = line.split_whitespace();
            if let (Some(at), Some(tag)) = (w.next(), w.next()) {
                if let Ok(at) = at.parse::<f64>() {
                    hooks.insert(tag.to_string(), at);
                }
            }
        }
        if hooks.len() >= started.len() || Instant::now() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = on.plugin_log();
    let new_log = log.get(log_before..).unwrap_or("");
    let failed = new_log
        .lines()
        .filter(|l| l.contains("hook failed") && l.contains("postStart"))
        .count();
    let took = stats::hook_times(new_log, "postStart");
    // Unix times in seconds (the hook's from inside the container): a hook can finish before
    // its StartContainer reply reaches us; such a gap counts as zero.
    let early = hooks
        .iter()
        .filter(|(tag, at)| started.get(*tag).is_some_and(|s| *at < s))
        .count();
    let from_reply: Samples = hooks
        .iter()
        .filter_map(|(tag, at)| stats::between_unix(*started.get(tag)?, *at))
        .collect();
    let from_t0: Samples = hooks
        .values()
        .filter_map(|at| stats::between_unix(t0, *at))
        .collect();
    let timeouts = nri_timeouts(&on.containerd_log());
    let mut f = Figure::new(&format!(
        "burst: {n} containers started at once, PostStart exec hook each, {v}"
    ));
    f.rows.push(Row::plain("burst start → hook done", &from_t0));
    f.rows.push(Row::plain(
        "its StartContainer reply → hook done",
        &from_reply,
    ));
    if !took.is_empty() {
        f.rows.push(Row::plain(
            "hook's own time (plugin log took_ms)",
            &Samples::new(took),
        ));
    }
    f.checks = targets::burst(n, hooks.len(), start_errors.len(), timeouts.len());
    f.lines.push(format!(
        "{n} distroless containers in {pods_n} pods of {per_pod}, created beforehand, then {n} concurrent CRI StartContainer calls (all answered after {}). Hook: `/testapp write /shared/done {{now}} TAG` (a bind mount). Hooks that ran: {} of {n} ({early} finished before their StartContainer reply arrived: counted as 0 in the second row); hooks the plugin reported failed: {failed}; StartContainer errors: {}; NRI timeout lines in containerd's log: {}. Why {n}: {}",
        all_started.text(),
        hooks.len(),
        start_errors.len(),
        timeouts.len(),
        if n >= 100 { "the full burst; it fits in this machine's 2 cores (one shim per pod, 10 pods)." } else { "reduced on the command line." }
    ));
    if let Some(e) = start_errors.first() {
        f.lines.push(format!("first StartContainer error: {e}"));
    }
    rep.figures.push(f);
    for pod in &pods {
        cri.delete_pod(pod).await?;
    }
    Ok(())
}
