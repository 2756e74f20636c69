//! nri-harness: a private containerd node driven over CRI the way a kubelet drives it, for
//! the end-to-end tests, the demo and the benchmarks of nri-lifecycle.
//!
//! # Layout
//!
//! - [`install`]: where containerd 1.7/2.1, the CNI plugins, the test binary and the image
//!   tars live (`.cache/harness`, filled by `harness/scripts/setup.sh`, run on demand).
//! - [`node`]: one private containerd: config, start with only fds 0–2, wait for CRI, image
//!   import, teardown (by PID, cgroup, mount), leftover check, cleanup of interrupted runs,
//!   a plugin's registration recognised in containerd's log.
//! - [`net`]: the CNI bridge on a private /24, the safety route, `ip_forward` restore.
//! - [`plugin`]: the plugin in external mode (built on [`node`], never the other way),
//!   waiting for its registration.
//! - [`cri`]: the CRI client (RunPodSandbox ... RemovePodSandbox, ExecSync, logs).
//! - [`manifests`]: `deploy/kubernetes` read like the kubelet reads it, as CRI requests.
//! - [`sys`]: small OS helpers (locks, /proc, cgroups, mounts).
//! - [`bench`]: what `make bench` judges and writes: samples, typed targets and verdicts,
//!   BENCHMARKS.md (no node needed; the `bench` binary measures).
//!
//! Everything but [`bench`] needs root; [`require_root`] says so loudly.

pub mod bench;
pub mod cri;
pub mod install;
pub mod manifests;
pub mod net;
pub mod node;
pub mod plugin;
pub mod sys;

pub use cri::{ContainerSpec, Cri, CriError, ExecResult, Pod, PodSpec};
pub use install::{images, Install, Version};
pub use node::{Node, NodeError, NodeOptions, PluginMode};

/// Now, in unix seconds (as the test app and hooks write their time stamps).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The last time stamp (`<secs>.<nanos>`) the test app or a hook wrote into `path`, if the
/// file exists.
pub fn stamp(path: &std::path::Path) -> Option<f64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Returns false, after printing a loud notice, when not running as root: tests then skip.
/// With `NRI_E2E_REQUIRED=1` (set by `make test`, which CI runs) a test that cannot run
/// fails instead, so nothing is skipped silently there.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return true;
    }
    let required = std::env::var("NRI_E2E_REQUIRED").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test} needs root (uid 0: namespaces, cgroups, a private containerd) and NRI_E2E_REQUIRED=1 forbids skipping it; uid is {uid}"
    );
    eprintln!("\n!!!!! SKIPPED {test}: needs root (uid 0: namespaces, cgroups, a private containerd); uid is {uid} !!!!!\n");
    false
}

/// Polls `path` until `pred` holds for its content, at most `limit`; the content then.
pub async fn wait_file(
    path: &std::path::Path,
    limit: std::time::Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if pred(&text) {
                return Some(text);
            }
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
