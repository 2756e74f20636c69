//! Recovery of the drop-in plugin: the time from the end of a fault to the plugin connected
//! to containerd again (containerd logs the connection once the plugin is synchronized, and
//! from then on hooks run; one PostStart after the rounds checks that they do).
//!
//! Faults, one after the other on one node, `--recovery-rounds` times each:
//! - stall: the daemon frozen (SIGSTOP) for 4 s while a container is created, so that
//!   containerd drops it after its 2 s request timeout; measured from SIGCONT;
//! - SIGKILL of the daemon; measured from the kill (the launcher starts a new one).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nri_harness::bench::report::{Figure, Report, Row};
use nri_harness::bench::stats::{self, Samples};
use nri_harness::bench::targets;
use nri_harness::node::external_connected;
use nri_harness::{images, sys, ContainerSpec, Node, PodSpec, Version};

use crate::{plugin_node, say, Opts};

/// How long the stall lasts: twice containerd's default request timeout.
const STALL: Duration = Duration::from_secs(4);
/// Bound of one wait (a round that takes longer is reported as failed, not measured).
const LIMIT: Duration = Duration::from_secs(60);

fn connections(node: &Node) -> usize {
    external_connected(&node.containerd_log(), "nri-lifecycle")
}

/// Polls (every 5 ms) until containerd has logged more than `before` connections of the
/// plugin; the time from `since`.
async fn reconnected(node: &Node, before: usize, since: Instant) -> anyhow::Result<Duration> {
    loop {
        if connections(node) > before {
            return Ok(since.elapsed());
        }
        if since.elapsed() > LIMIT {
            bail!(
                "the plugin did not connect again within {} s:\n{}",
                LIMIT.as_secs(),
                node.diagnostics()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn serving_pid(node: &Node) -> anyhow::Result<i32> {
    let start = Instant::now();
    loop {
        if let Some(pid) = node.daemon_pid() {
            return Ok(pid);
        }
        if start.elapsed() > LIMIT {
            bail!("no process holds the plugin's lock");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(v: Version, opts: &Opts, rep: &mut Report) -> anyhow::Result<()> {
    say(&format!(
        "{v}: recovery of the drop-in plugin, {} rounds of each fault",
        opts.recovery_rounds
    ));
    let node = plugin_node(v, opts).await?;
    let result = measure(v, opts, &node, rep).await;
    if let Err(e) = node.stop().await {
        rep.note(format!("{v}: teardown of the recovery node: {e}"));
    }
    result
}

async fn measure(v: Version, opts: &Opts, node: &Node, rep: &mut Report) -> anyhow::Result<()> {
    let mut cri = node.cri().await?;
    let mut stalls = Vec::new();
    let mut kills = Vec::new();
    for round in 0..opts.recovery_rounds {
        // Stall during a create.
        let pod = cri
            .run_pod(&PodSpec::new(&format!("stall-{round}")))
            .await?;
        let before = connections(node);
        let pid = serving_pid(node).await?;
        sys::kill(pid, libc::SIGSTOP);
        let mut cri2 = node.cri().await?;
        let spec = ContainerSpec::new("app", images::BUSYBOX, &["sleep", "3600"]);
        let pod2 = pod.clone();
        let create = tokio::spawn(async move { cri2.create_container(&pod2, &spec).await });
        tokio::time::sleep(STALL).await;
        sys::kill(pid, libc::SIGCONT);
        let resumed = Instant::now();
        let created = create.await.context("create task")?;
        created.context("create during the stall")?;
        stalls.push(reconnected(node, before, resumed).await?);
        cri.delete_pod(&pod).await?;

        // SIGKILL.
        let before = connections(node);
        let pid = serving_pid(node).await?;
        sys::kill(pid, libc::SIGKILL);
        let killed = Instant::now();
        kills.push(reconnected(node, before, killed).await?);
    }
    // Hooks run again: one PostStart after all the faults.
    let hooks_before = stats::hook_times(&node.plugin_log(), "postStart").len();
    let pod = cri.run_pod(&PodSpec::new("after")).await?;
    let spec = ContainerSpec::new("app", images::DISTROLESS, &[]).annotation(
        "poststart.lifecycle.nri.io/container.app",
        r#"{"sleep":{"seconds":0}}"#,
    );
    let id = cri.create_container(&pod, &spec).await?;
    cri.start_container(&id).await?;
    let ran = node
        .wait_plugin_log(LIMIT, |log| {
            stats::hook_times(log, "postStart").len() > hooks_before
        })
        .await
        .is_some();
    cri.delete_pod(&pod).await?;

    let stalls = Samples::new(stalls);
    let kills = Samples::new(kills);
    let mut f = Figure::new(&format!("Recovery of the drop-in plugin, {v}"));
    f.rows.push(Row::plain(
        "stall 4 s during a create: SIGCONT → connected again",
        &stalls,
    ));
    f.rows
        .push(Row::plain("SIGKILL → a new daemon connected", &kills));
    f.checks.push(targets::recovery("stall", &stalls));
    f.checks.push(targets::recovery("SIGKILL", &kills));
    f.lines.push(format!(
        "The daemon the launcher keeps (the process holding the plugin's lock), frozen for {} s while a container is created (containerd drops it after its 2 s request timeout), then SIGKILLed; {} rounds of each on one node. Time until containerd logs the plugin connected again, which it does once the plugin is synchronized; a PostStart hook of a container created after the last round {}.",
        STALL.as_secs(),
        opts.recovery_rounds,
        if ran { "ran" } else { "did NOT run" }
    ));
    rep.figures.push(f);
    if !ran {
        rep.note(format!(
            "{v}: no PostStart ran after the recovery rounds:\n{}",
            node.diagnostics()
        ));
    }
    Ok(())
}
