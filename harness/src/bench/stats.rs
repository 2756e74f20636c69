//! Samples and their summary figures (nearest-rank percentiles), as [`Duration`]s.

use std::time::Duration;

/// Durations, sorted.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut v: Vec<Duration>) -> Samples {
        v.sort();
        Samples(v)
    }

    pub fn from_ns(v: &[u64]) -> Samples {
        Samples::new(v.iter().map(|n| Duration::from_nanos(*n)).collect())
    }

    pub fn n(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (0–100), nearest rank; None without samples.
    pub fn pct(&self, p: f64) -> Option<Duration> {
        if self.0.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        Some(self.0[rank.clamp(1, self.0.len()) - 1])
    }

    pub fn median(&self) -> Option<Duration> {
        self.pct(50.0)
    }

    pub fn p95(&self) -> Option<Duration> {
        self.pct(95.0)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.pct(99.0)
    }

    pub fn max(&self) -> Option<Duration> {
        self.0.last().copied()
    }
}

impl FromIterator<Duration> for Samples {
    fn from_iter<I: IntoIterator<Item = Duration>>(iter: I) -> Samples {
        Samples::new(iter.into_iter().collect())
    }
}

/// The `took_ms` values (milliseconds) of the "hook succeeded" lines of a phase in the
/// plugin's log, as durations.
pub fn hook_times(log: &str, phase: &str) -> Vec<Duration> {
    log.lines()
        .filter(|l| l.contains("hook succeeded") && l.contains(phase))
        .filter_map(|l| {
            let rest = &l[l.find("took_ms=")? + "took_ms=".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let ms: f64 = rest[..end].parse().ok()?;
            Duration::try_from_secs_f64(ms / 1e3).ok()
        })
        .collect()
}

/// The time from `from` to `to`, both unix times in seconds; zero when `to` is earlier.
pub fn between_unix(from: f64, to: f64) -> Option<Duration> {
    Duration::try_from_secs_f64((to - from).max(0.0)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        // 1..=100 µs: the p-th percentile of 100 samples is the p-th smallest.
        let s = Samples::new((1..=100).rev().map(Duration::from_micros).collect());
        assert_eq!(s.n(), 100);
        assert_eq!(s.median(), Some(Duration::from_micros(50)));
        assert_eq!(s.p95(), Some(Duration::from_micros(95)));
        assert_eq!(s.p99(), Some(Duration::from_micros(99)));
        assert_eq!(s.max(), Some(Duration::from_micros(100)));
        assert_eq!(s.pct(0.0), Some(Duration::from_micros(1)));
    }

    #[test]
    fn nanoseconds_in() {
        let s = Samples::from_ns(&[222_000, 1_000]);
        assert_eq!(s.max(), Some(Duration::from_micros(222)));
    }

    #[test]
    fn no_samples_no_figures() {
        let s = Samples::default();
        assert_eq!(
            (s.median(), s.p95(), s.p99(), s.max()),
            (None, None, None, None)
        );
    }

    #[test]
    fn took_ms_is_milliseconds() {
        let log = "\
2025-01-01T00:00:00Z  INFO hook succeeded container=a hook=\"preStop\" handler=\"exec\" took_ms=12.5 output=\"\"
2025-01-01T00:00:00Z  INFO hook succeeded container=b hook=\"postStart\" handler=\"exec\" took_ms=3 output=\"\"
2025-01-01T00:00:00Z  WARN hook failed container=c hook=\"preStop\" took_ms=40
";
        assert_eq!(
            hook_times(log, "preStop"),
            vec![Duration::from_micros(12_500)]
        );
        assert_eq!(hook_times(log, "postStart"), vec![Duration::from_millis(3)]);
    }

    #[test]
    fn unix_times_apart() {
        let d = between_unix(1_700_000_000.25, 1_700_000_000.5).unwrap();
        assert!((d.as_secs_f64() - 0.25).abs() < 1e-6);
        assert_eq!(between_unix(10.0, 9.0), Some(Duration::ZERO));
    }
}
