//! The targets of `make bench`, each turned into [`Check`]s from the measured samples.
//! The bench builds every verdict here, so these are what its tests judge.

use std::time::Duration;

use super::stats::Samples;
use super::verdict::{Bytes, Check, Cmp, Ratio};

/// p99 of one NRI event's round trip on the fake runtime.
pub const EVENT_P99: Duration = Duration::from_micros(200);
/// CreateContainer+StartContainer with the plugin (no hooks), against NRI off.
pub const START_PLUGIN: Ratio = Ratio::times(1.05);
/// CreateContainer+StartContainer of a PreStop (gated) container, against NRI off.
pub const START_GATED: Ratio = Ratio::times(1.10);
/// StopContainer of a gated container, the hook's own time taken off, against ungated.
pub const STOP_GATED: Ratio = Ratio::times(1.10);
/// CRI ExecSync against the plugin's exec runner: at least this many times slower.
pub const EXEC_SPEEDUP: Ratio = Ratio::times(10.0);
/// The plugin's exec runner against `nsenter -a`: no slower.
pub const EXEC_VS_NSENTER: Ratio = Ratio::times(1.0);
/// The plugin's httpGet runner against a plain GET from the host.
pub const HTTP_GET: Ratio = Ratio::times(1.5);
/// The plugin's RSS, registered and configured, no containers.
pub const RSS_IDLE: Bytes = Bytes::mib(8);
/// The plugin's RSS while it tracks many containers with hooks.
pub const RSS_TRACKED: Bytes = Bytes::mib(24);
/// The gate's RSS as PID 1 of a container.
pub const GATE_RSS: Bytes = Bytes::mib(1);
/// The gate binary's size (it is embedded in the plugin and written out at start-up).
pub const GATE_SIZE: Bytes = Bytes::mib(1);

/// From the end of a fault (SIGCONT after a stall, SIGKILL) to the plugin connected again.
pub const RECOVERY: Duration = Duration::from_secs(5);

/// Recovery after a fault: every round within [`RECOVERY`].
pub fn recovery(what: &str, rounds: &Samples) -> Check {
    Check::new(
        &format!("{what}, slowest round"),
        rounds.max(),
        Cmp::AtMost,
        RECOVERY,
    )
}

/// NRI event round trips: p99 below [`EVENT_P99`].
pub fn events(lat: &Samples) -> Check {
    Check::new("p99 per event", lat.p99(), Cmp::Below, EVENT_P99)
}

/// CreateContainer+StartContainer medians against NRI off.
pub fn start(off: &Samples, plugin: &Samples, gated: &Samples) -> Vec<Check> {
    vec![
        Check::new(
            "plugin (no hooks) ÷ NRI off, median",
            Ratio::of(plugin.median(), off.median()),
            Cmp::AtMost,
            START_PLUGIN,
        ),
        Check::new(
            "PreStop (gate) ÷ NRI off, median",
            Ratio::of(gated.median(), off.median()),
            Cmp::AtMost,
            START_GATED,
        ),
    ]
}

/// StopContainer: gated ≤ [`STOP_GATED`] × ungated + the PreStop hook's own time (median),
/// i.e. (gated − hook) ÷ ungated ≤ [`STOP_GATED`].
pub fn stop(ungated: &Samples, gated: &Samples, hook: Duration) -> Check {
    Check::new(
        "(gated − the PreStop hook's own time) ÷ ungated, median",
        Ratio::of(
            gated.median().map(|g| g.saturating_sub(hook)),
            ungated.median(),
        ),
        Cmp::AtMost,
        STOP_GATED,
    )
}

/// The plugin's exec runner against CRI ExecSync (≥ [`EXEC_SPEEDUP`] faster) and
/// `nsenter -a` (no slower).
pub fn exec(ours: &Samples, exec_sync: &Samples, nsenter: &Samples) -> Vec<Check> {
    vec![
        Check::new(
            "CRI ExecSync ÷ ours, median",
            Ratio::of(exec_sync.median(), ours.median()),
            Cmp::AtLeast,
            EXEC_SPEEDUP,
        ),
        Check::new(
            "ours ÷ `nsenter -a`, median",
            Ratio::of(ours.median(), nsenter.median()),
            Cmp::AtMost,
            EXEC_VS_NSENTER,
        ),
    ]
}

/// The plugin's exec runner in a container that runs the runtime's default seccomp profile
/// (its filter loaded into every hook) against CRI ExecSync on that container: at least
/// [`EXEC_SPEEDUP`] faster in the median.
pub fn exec_seccomp(ours: &Samples, exec_sync: &Samples) -> Check {
    Check::new(
        "CRI ExecSync ÷ ours, RuntimeDefault seccomp, median",
        Ratio::of(exec_sync.median(), ours.median()),
        Cmp::AtLeast,
        EXEC_SPEEDUP,
    )
}

/// The plugin's httpGet runner against a plain GET from the host to the pod.
pub fn http(ours: &Samples, plain: &Samples) -> Check {
    Check::new(
        "ours ÷ plain GET, median",
        Ratio::of(ours.median(), plain.median()),
        Cmp::AtMost,
        HTTP_GET,
    )
}

/// The burst: every hook ran, no StartContainer failed, containerd logged no NRI timeout.
pub fn burst(
    containers: usize,
    hooks_ran: usize,
    start_errors: usize,
    timeouts: usize,
) -> Vec<Check> {
    vec![
        Check::new("hooks that ran", Some(hooks_ran), Cmp::Exactly, containers),
        Check::new("StartContainer errors", Some(start_errors), Cmp::Exactly, 0),
        Check::new(
            "NRI timeout lines in containerd's log",
            Some(timeouts),
            Cmp::Exactly,
            0,
        ),
    ]
}

/// A memory figure (None: not measured) against its limit.
pub fn memory(what: &str, rss: Option<Bytes>, limit: Bytes) -> Check {
    Check::new(what, rss, Cmp::AtMost, limit)
}

/// The gate binary's size: below [`GATE_SIZE`].
pub fn gate_size(what: &str, size: Bytes) -> Check {
    Check::new(what, Some(size), Cmp::Below, GATE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::verdict::all_met;

    fn us(v: &[u64]) -> Samples {
        v.iter().map(|u| Duration::from_micros(*u)).collect()
    }

    /// 100 samples: 98 of 80 µs and two of `tail` µs, so the p99 (nearest rank) is `tail`.
    fn p99_of(tail: u64) -> Samples {
        let mut v = vec![80; 98];
        v.extend([tail, tail]);
        us(&v)
    }

    fn met(c: &Check) -> Option<bool> {
        c.met
    }

    #[test]
    fn recovery_is_judged_on_the_slowest_round() {
        let ms = |v: &[u64]| -> Samples { v.iter().map(|m| Duration::from_millis(*m)).collect() };
        let c = recovery("SIGKILL", &ms(&[300, 280, 5200]));
        assert_eq!(c.met, Some(false), "{c}");
        let c = recovery("SIGKILL", &ms(&[300, 280, 900]));
        assert_eq!(c.met, Some(true), "{c}");
        assert_eq!(recovery("SIGKILL", &ms(&[])).met, None);
    }

    #[test]
    fn event_p99_is_microseconds() {
        let c = events(&p99_of(222));
        assert_eq!(c.met, Some(false), "{c}");
        assert_eq!(
            c.to_string(),
            "p99 per event < 200 µs — **MISSED** (222 µs)"
        );
        let c = events(&p99_of(150));
        assert_eq!(c.met, Some(true), "{c}");
        assert_eq!(c.to_string(), "p99 per event < 200 µs — **met** (150 µs)");
        // Milliseconds are far off the target, not within it.
        let c = events(&Samples::from_ns(&[150_000_000; 100]));
        assert_eq!(c.met, Some(false), "{c}");
        assert_eq!(events(&Samples::default()).met, None);
    }

    #[test]
    fn start_ratios_against_nri_off() {
        let off = us(&[1000; 5]);
        // plugin 1.04×, gated 1.09×: both within.
        let c = start(&off, &us(&[1040; 5]), &us(&[1090; 5]));
        assert_eq!(
            c.iter().map(met).collect::<Vec<_>>(),
            [Some(true), Some(true)]
        );
        assert_eq!(
            c[0].to_string(),
            "plugin (no hooks) ÷ NRI off, median ≤ 1.05× — **met** (1.04×)"
        );
        // plugin 1.06×: missed; gated 1.11×: missed.
        let c = start(&off, &us(&[1060; 5]), &us(&[1110; 5]));
        assert_eq!(
            c.iter().map(met).collect::<Vec<_>>(),
            [Some(false), Some(false)]
        );
        // Faster than the reference is within, not a miss.
        let c = start(&off, &us(&[500; 5]), &us(&[900; 5]));
        assert_eq!(all_met(&c), Some(true));
        // No reference measured: no verdict.
        let c = start(&Samples::default(), &us(&[1000]), &us(&[1000]));
        assert_eq!(all_met(&c), None);
    }

    #[test]
    fn stop_allows_the_hook_time() {
        let ungated = us(&[10_000; 5]);
        let hook = Duration::from_millis(2);
        // 10 ms × 1.10 + 2 ms = 13 ms: 12.9 ms is within, 13.1 ms is not.
        assert_eq!(stop(&ungated, &us(&[12_900; 5]), hook).met, Some(true));
        assert_eq!(stop(&ungated, &us(&[13_100; 5]), hook).met, Some(false));
        // Without the allowance 12.9 ms would be a miss.
        assert_eq!(
            stop(&ungated, &us(&[12_900; 5]), Duration::ZERO).met,
            Some(false)
        );
        assert_eq!(stop(&ungated, &Samples::default(), hook).met, None);
    }

    #[test]
    fn exec_speedup_and_nsenter() {
        let ours = us(&[1_000; 5]);
        // ExecSync 12× slower, nsenter 1.5× slower: both met.
        let c = exec(&ours, &us(&[12_000; 5]), &us(&[1_500; 5]));
        assert_eq!(
            c.iter().map(met).collect::<Vec<_>>(),
            [Some(true), Some(true)]
        );
        assert_eq!(
            c[0].to_string(),
            "CRI ExecSync ÷ ours, median ≥ 10.00× — **met** (12.00×)"
        );
        // ExecSync only 8× slower: missed; ours slower than nsenter: missed.
        let c = exec(&ours, &us(&[8_000; 5]), &us(&[900; 5]));
        assert_eq!(
            c.iter().map(met).collect::<Vec<_>>(),
            [Some(false), Some(false)]
        );
        // ours not measured: nothing to judge.
        let c = exec(&Samples::default(), &us(&[12_000]), &us(&[1_500]));
        assert_eq!(all_met(&c), None);
    }

    #[test]
    fn exec_with_the_default_seccomp_profile_against_exec_sync() {
        let ours = us(&[1_000; 5]);
        let c = exec_seccomp(&ours, &us(&[10_000; 5]));
        assert_eq!(c.met, Some(true), "{c}");
        assert_eq!(
            c.to_string(),
            "CRI ExecSync ÷ ours, RuntimeDefault seccomp, median ≥ 10.00× — **met** (10.00×)"
        );
        assert_eq!(exec_seccomp(&ours, &us(&[9_900; 5])).met, Some(false));
        assert_eq!(exec_seccomp(&Samples::default(), &ours).met, None);
    }

    #[test]
    fn http_against_plain_get() {
        let plain = us(&[400; 5]);
        assert_eq!(http(&us(&[580; 5]), &plain).met, Some(true));
        assert_eq!(http(&us(&[620; 5]), &plain).met, Some(false));
        assert_eq!(http(&us(&[580; 5]), &Samples::default()).met, None);
    }

    #[test]
    fn burst_every_hook_no_error_no_timeout() {
        assert_eq!(all_met(&burst(100, 100, 0, 0)), Some(true));
        assert_eq!(all_met(&burst(100, 99, 0, 0)), Some(false));
        assert_eq!(all_met(&burst(100, 100, 1, 0)), Some(false));
        assert_eq!(all_met(&burst(100, 100, 0, 1)), Some(false));
    }

    #[test]
    fn memory_and_size_limits() {
        let idle = |kib| memory("idle", Some(Bytes::kib(kib)), RSS_IDLE).met;
        assert_eq!(idle(8 * 1024), Some(true));
        assert_eq!(idle(8 * 1024 + 1), Some(false));
        assert_eq!(memory("idle", None, RSS_IDLE).met, None);
        let tracked = |kib| memory("tracked", Some(Bytes::kib(kib)), RSS_TRACKED).met;
        assert_eq!(tracked(11_000), Some(true));
        assert_eq!(tracked(25_000), Some(false));
        let gate = |kib| memory("gate", Some(Bytes::kib(kib)), GATE_RSS).met;
        assert_eq!(gate(700), Some(true));
        assert_eq!(gate(1100), Some(false));
        let size = |bytes| gate_size("gate", Bytes::new(bytes)).met;
        assert_eq!(size(712 * 1024), Some(true));
        assert_eq!(size(1024 * 1024), Some(false));
        assert_eq!(
            gate_size("gate binary", Bytes::kib(712)).to_string(),
            "gate binary < 1.0 MiB — **met** (712 KiB)"
        );
    }
}
