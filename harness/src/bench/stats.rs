//! Samples and their summary figures (nearest-rank percentiles).

/// Durations in seconds, sorted.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn from_secs(v: &[f64]) -> Samples {
        let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        s.sort_by(|a, b| a.total_cmp(b));
        Samples(s)
    }

    pub fn from_ns(v: &[u64]) -> Samples {
        Samples::from_secs(&v.iter().map(|n| *n as f64 / 1e9).collect::<Vec<_>>())
    }

    pub fn n(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (0–100), nearest rank; 0 without samples.
    pub fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn median(&self) -> f64 {
        self.pct(50.0)
    }

    pub fn p95(&self) -> f64 {
        self.pct(95.0)
    }

    pub fn p99(&self) -> f64 {
        self.pct(99.0)
    }

    pub fn max(&self) -> f64 {
        self.0.last().copied().unwrap_or(0.0)
    }
}

/// Seconds as milliseconds with a precision that suits the value.
pub fn ms(secs: f64) -> String {
    let m = secs * 1e3;
    if m >= 100.0 {
        format!("{m:.0}")
    } else if m >= 10.0 {
        format!("{m:.1}")
    } else if m >= 1.0 {
        format!("{m:.2}")
    } else {
        format!("{m:.3}")
    }
}

/// A ratio with two decimals, or "n/a".
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}
