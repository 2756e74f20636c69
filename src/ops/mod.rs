//! Operating the plugin: Prometheus metrics, liveness and readiness.
//!
//! [`Ops`] is made once by the daemon and handed down: the core records NRI requests, hooks
//! and the gate through it, and [`http`] serves it on the config's `http_address`:
//!
//! - `/metrics`: the metrics below, in the OpenMetrics text format Prometheus scrapes;
//! - `/readyz`: 200 only while the plugin is registered with the runtime and synchronized;
//! - `/healthz`: 503 ("restart me") when an NRI request has been in the core longer than twice
//!   the runtime's request timeout, or when the core's event loop does not answer.
//!
//! Labels only take bounded values (phases, handler kinds, results, event names, reasons):
//! never a container or pod name.

pub mod http;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::lock::lock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    phase: &'static str,
    handler: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookKind {
    phase: &'static str,
    handler: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn hook_buckets() -> Histogram {
    // 1 ms … ~65 s: exec hooks take milliseconds, sleeps and drains seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn request_buckets() -> Histogram {
    // 10 µs … ~2.6 s: the runtime's timeout is 2 s; the target is well under a millisecond.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 19))
}

/// How a hook ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookResult {
    Succeeded,
    Failed,
    TimedOut,
    /// The container exited before or during the hook.
    ContainerGone,
}

impl HookResult {
    fn as_str(self) -> &'static str {
        match self {
            HookResult::Succeeded => "succeeded",
            HookResult::Failed => "failed",
            HookResult::TimedOut => "timed_out",
            HookResult::ContainerGone => "container_gone",
        }
    }
}

/// Why a container's stop was, or will be, let through without its PreStop hook holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOpen {
    /// The gate could not be injected at create.
    NotInjected,
    /// Injected, but the runtime runs the original entrypoint (no stored-spec rewrite).
    Ungated,
    /// The PreStop hook ran out of its bound: the gate forwarded the signal.
    HookTimedOut,
}

impl FailOpen {
    fn as_str(self) -> &'static str {
        match self {
            FailOpen::NotInjected => "not_injected",
            FailOpen::Ungated => "ungated",
            FailOpen::HookTimedOut => "hook_timed_out",
        }
    }
}

/// The plugin's metrics, liveness and readiness.
pub struct Ops {
    registry: Registry,
    hooks: Family<HookLabels, Counter>,
    hook_duration: Histograms<HookKind>,
    nri_requests: Family<EventLabel, Counter>,
    nri_duration: Histograms<EventLabel>,
    registered_gauge: Gauge,
    gated: Gauge,
    failopen: Family<ReasonLabel, Counter>,
    registered: AtomicBool,
    synchronized: AtomicBool,
    request_timeout_ms: AtomicU64,
    next_request: AtomicU64,
    in_flight: Mutex<BTreeMap<u64, Instant>>,
}

impl Default for Ops {
    fn default() -> Self {
        Ops::new()
    }
}

impl Ops {
    pub fn new() -> Ops {
        let mut registry = Registry::with_prefix("nri_lifecycle");
        let hooks = Family::<HookLabels, Counter>::default();
        registry.register(
            "hooks",
            "Hooks run, by phase, handler and result",
            hooks.clone(),
        );
        let hook_duration: Histograms<HookKind> = Family::new_with_constructor(hook_buckets);
        registry.register(
            "hook_duration_seconds",
            "How long hooks took, by phase and handler",
            hook_duration.clone(),
        );
        let nri_requests = Family::<EventLabel, Counter>::default();
        registry.register(
            "nri_requests",
            "Requests from the runtime over NRI, by event",
            nri_requests.clone(),
        );
        let nri_duration: Histograms<EventLabel> = Family::new_with_constructor(request_buckets);
        registry.register(
            "nri_request_duration_seconds",
            "How long the plugin took to answer the runtime, by event",
            nri_duration.clone(),
        );
        let registered_gauge = Gauge::default();
        registry.register(
            "registered",
            "1 while the plugin is registered with the runtime",
            registered_gauge.clone(),
        );
        let gated = Gauge::default();
        registry.register(
            "gated_containers",
            "Containers whose stop the PreStop gate holds",
            gated.clone(),
        );
        let failopen = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "gate_failopen",
            "Stops let through without the PreStop hook holding them, by reason",
            failopen.clone(),
        );
        registry.register(
            "build",
            "The plugin's version",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Ops {
            registry,
            hooks,
            hook_duration,
            nri_requests,
            nri_duration,
            registered_gauge,
            gated,
            failopen,
            registered: AtomicBool::new(false),
            synchronized: AtomicBool::new(false),
            request_timeout_ms: AtomicU64::new(crate::nri::DEFAULT_REQUEST_TIMEOUT_MS),
            next_request: AtomicU64::new(0),
            in_flight: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records a hook that ended.
    pub fn hook(
        &self,
        phase: &'static str,
        handler: &'static str,
        result: HookResult,
        took: Duration,
    ) {
        self.hooks
            .get_or_create(&HookLabels {
                phase,
                handler,
                result: result.as_str(),
            })
            .inc();
        self.hook_duration
            .get_or_create(&HookKind { phase, handler })
            .observe(took.as_secs_f64());
    }

    /// Records a stop that the gate does not, or did not, hold.
    pub fn fail_open(&self, reason: FailOpen) {
        self.failopen
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// How many containers the gate holds now.
    pub fn set_gated(&self, n: usize) {
        self.gated.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A runtime request enters the core; the guard records it when dropped.
    pub fn request(&self, event: &'static str) -> InFlight<'_> {
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        lock(&self.in_flight).insert(id, started);
        InFlight {
            ops: self,
            id,
            event,
            started,
        }
    }

    /// The runtime configured us (it does so right after registration).
    pub fn configured(&self, request_timeout_ms: u64) {
        if request_timeout_ms > 0 {
            self.request_timeout_ms
                .store(request_timeout_ms, Ordering::Relaxed);
        }
        self.registered.store(true, Ordering::Relaxed);
        self.registered_gauge.set(1);
    }

    /// The runtime sent its containers: from now on the plugin serves.
    pub fn synchronized(&self) {
        self.synchronized.store(true, Ordering::Relaxed);
    }

    /// The runtime connection ended.
    pub fn disconnected(&self) {
        self.registered.store(false, Ordering::Relaxed);
        self.synchronized.store(false, Ordering::Relaxed);
        self.registered_gauge.set(0);
    }

    /// Whether the plugin serves the runtime (registered and synchronized).
    pub fn ready(&self) -> bool {
        self.registered.load(Ordering::Relaxed) && self.synchronized.load(Ordering::Relaxed)
    }

    /// The longest time a runtime request has been in the core, if one is.
    pub fn oldest_request(&self) -> Option<Duration> {
        lock(&self.in_flight)
            .values()
            .min()
            .map(|started| started.elapsed())
    }

    /// Twice the runtime's request timeout: a request older than this means a stuck plugin.
    pub fn stuck_after(&self) -> Duration {
        Duration::from_millis(
            self.request_timeout_ms
                .load(Ordering::Relaxed)
                .saturating_mul(2),
        )
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A runtime request being handled; recorded when dropped.
pub struct InFlight<'a> {
    ops: &'a Ops,
    id: u64,
    event: &'static str,
    started: Instant,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.ops.in_flight).remove(&self.id);
        let label = EventLabel { event: self.event };
        self.ops.nri_requests.get_or_create(&label).inc();
        self.ops
            .nri_duration
            .get_or_create(&label)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_and_labels() {
        let ops = Ops::new();
        ops.hook(
            "postStart",
            "exec",
            HookResult::Succeeded,
            Duration::from_millis(3),
        );
        ops.hook(
            "preStop",
            "httpGet",
            HookResult::TimedOut,
            Duration::from_secs(2),
        );
        ops.fail_open(FailOpen::Ungated);
        ops.set_gated(4);
        drop(ops.request("CreateContainer"));
        ops.configured(2000);
        let text = ops.encode();
        for line in [
            "nri_lifecycle_hooks_total{phase=\"postStart\",handler=\"exec\",result=\"succeeded\"} 1",
            "nri_lifecycle_hooks_total{phase=\"preStop\",handler=\"httpGet\",result=\"timed_out\"} 1",
            "nri_lifecycle_hook_duration_seconds_count{phase=\"postStart\",handler=\"exec\"} 1",
            "nri_lifecycle_nri_requests_total{event=\"CreateContainer\"} 1",
            "nri_lifecycle_nri_request_duration_seconds_count{event=\"CreateContainer\"} 1",
            "nri_lifecycle_registered 1",
            "nri_lifecycle_gated_containers 4",
            "nri_lifecycle_gate_failopen_total{reason=\"ungated\"} 1",
            "nri_lifecycle_build_info{version=\"",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.contains("# TYPE nri_lifecycle_hook_duration_seconds histogram"));
    }

    #[test]
    fn ready_only_while_registered_and_synchronized() {
        let ops = Ops::new();
        assert!(!ops.ready());
        ops.configured(0);
        assert!(!ops.ready());
        ops.synchronized();
        assert!(ops.ready());
        ops.disconnected();
        assert!(!ops.ready());
        assert!(ops.encode().contains("nri_lifecycle_registered 0"));
    }

    #[test]
    fn a_request_in_flight_ages_and_leaves() {
        let ops = Ops::new();
        assert_eq!(ops.oldest_request(), None);
        ops.configured(1500);
        assert_eq!(ops.stuck_after(), Duration::from_secs(3));
        let guard = ops.request("Synchronize");
        assert!(ops.oldest_request().is_some());
        drop(guard);
        assert_eq!(ops.oldest_request(), None);
    }
}
