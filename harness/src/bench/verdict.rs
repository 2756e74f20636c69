//! Verdicts: a measured value compared with its target in one typed unit.
//!
//! A target is a [`Check`]: what is measured, a [`Cmp`] and a bound of the same [`Quantity`]
//! type as the measurement (a [`Duration`], a [`Ratio`], [`Bytes`] or a count). Comparing a
//! time with a ratio, or seconds with a plain number, does not compile, and the target's text
//! is printed from the very bound the comparison uses.

use std::fmt;
use std::time::Duration;

/// Something a target can be stated in: ordered, and printed with its unit.
pub trait Quantity: PartialOrd + Copy {
    /// The value with its unit, e.g. "222 µs", "1.05×", "6.3 MiB".
    fn text(self) -> String;

    /// The value without rounding, for when [`Quantity::text`] of a measurement reads like
    /// its bound (a ratio of 1.104 against ≤ 1.10).
    fn exact(self) -> String {
        self.text()
    }
}

impl Quantity for Duration {
    fn text(self) -> String {
        let us = self.as_secs_f64() * 1e6;
        if us < 10.0 {
            format!("{us:.2} µs")
        } else if us < 1000.0 {
            format!("{us:.0} µs")
        } else if us < 1e6 {
            format!("{} ms", ms(self))
        } else {
            format!("{:.2} s", self.as_secs_f64())
        }
    }

    fn exact(self) -> String {
        format!("{} ns", self.as_nanos())
    }
}

/// A count of things (hooks that ran, errors, log lines).
impl Quantity for usize {
    fn text(self) -> String {
        self.to_string()
    }
}

/// Milliseconds, without the unit, with a precision that suits the value (the tables' cells).
pub fn ms(d: Duration) -> String {
    let m = d.as_secs_f64() * 1e3;
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

/// A value that may not have been measured: its text, or "n/a".
pub fn text_or_na<Q: Quantity>(q: Option<Q>) -> String {
    q.map_or_else(|| "n/a".to_string(), Quantity::text)
}

/// How many times one time is another: dimensionless.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ratio(f64);

impl Ratio {
    /// A target factor, e.g. `Ratio::times(1.05)` for "≤ 1.05× the reference".
    pub const fn times(factor: f64) -> Ratio {
        Ratio(factor)
    }

    /// `num ÷ den`; None when either was not measured or `den` is zero.
    pub fn of(num: Option<Duration>, den: Option<Duration>) -> Option<Ratio> {
        let (num, den) = (num?, den?);
        if den.is_zero() {
            return None;
        }
        Some(Ratio(num.as_secs_f64() / den.as_secs_f64()))
    }

    pub fn factor(self) -> f64 {
        self.0
    }
}

impl Quantity for Ratio {
    fn text(self) -> String {
        format!("{:.2}×", self.0)
    }

    fn exact(self) -> String {
        format!("{:.4}×", self.0)
    }
}

/// An amount of memory or a file size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(u64);

impl Bytes {
    pub const fn new(bytes: u64) -> Bytes {
        Bytes(bytes)
    }

    /// `kib` KiB (what /proc reports as "kB").
    pub const fn kib(kib: u64) -> Bytes {
        Bytes(kib * 1024)
    }

    pub const fn mib(mib: u64) -> Bytes {
        Bytes(mib * 1024 * 1024)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl Quantity for Bytes {
    fn text(self) -> String {
        let kib = self.0 as f64 / 1024.0;
        if self.0 >= 1024 * 1024 {
            format!("{:.1} MiB", kib / 1024.0)
        } else if self.0 >= 1024 {
            format!("{kib:.0} KiB")
        } else {
            format!("{} B", self.0)
        }
    }

    fn exact(self) -> String {
        format!("{} B", self.0)
    }
}

/// How a measured value must compare with its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// measured < bound
    Below,
    /// measured ≤ bound
    AtMost,
    /// measured ≥ bound
    AtLeast,
    /// measured = bound
    Exactly,
}

impl Cmp {
    pub fn holds<Q: Quantity>(self, measured: Q, bound: Q) -> bool {
        match self {
            Cmp::Below => measured < bound,
            Cmp::AtMost => measured <= bound,
            Cmp::AtLeast => measured >= bound,
            Cmp::Exactly => measured == bound,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Cmp::Below => "<",
            Cmp::AtMost => "≤",
            Cmp::AtLeast => "≥",
            Cmp::Exactly => "=",
        }
    }
}

/// One target and, once measured, whether it was met.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What is measured, e.g. "p99 per event" (may be empty when a table row says it).
    pub what: String,
    /// The comparison and its bound, e.g. "< 200 µs".
    pub bound: String,
    /// The measured value with its unit; None when it was not measured.
    pub measured: Option<String>,
    /// None when not measured.
    pub met: Option<bool>,
}

impl Check {
    /// `measured` compared with `bound` by `cmp`, in the one unit both have.
    pub fn new<Q: Quantity>(what: &str, measured: Option<Q>, cmp: Cmp, bound: Q) -> Check {
        let shown = |m: Q| {
            if m.text() == bound.text() && m != bound {
                m.exact()
            } else {
                m.text()
            }
        };
        Check {
            what: what.to_string(),
            bound: format!("{} {}", cmp.symbol(), bound.text()),
            measured: measured.map(shown),
            met: measured.map(|m| cmp.holds(m, bound)),
        }
    }

    /// The target as one phrase: "p99 per event < 200 µs".
    pub fn target(&self) -> String {
        if self.what.is_empty() {
            self.bound.clone()
        } else {
            format!("{} {}", self.what, self.bound)
        }
    }

    /// The verdict with the measured value: "**MISSED** (222 µs)".
    pub fn result(&self) -> String {
        match &self.measured {
            Some(m) => format!("{} ({m})", verdict(self.met)),
            None => verdict(None).to_string(),
        }
    }
}

/// Several targets together: MISSED if one is missed, met if every one is met, otherwise
/// (one not measured, none missed, or no target at all) not measured.
pub fn all_met(checks: &[Check]) -> Option<bool> {
    if checks.iter().any(|c| c.met == Some(false)) {
        Some(false)
    } else if !checks.is_empty() && checks.iter().all(|c| c.met == Some(true)) {
        Some(true)
    } else {
        None
    }
}

/// The word BENCHMARKS.md prints for a verdict.
pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**MISSED**",
        None => "**not measured**",
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — {}", self.target(), self.result())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: fn(u64) -> Duration = Duration::from_micros;

    #[test]
    fn below_a_time() {
        let c = Check::new("p99", Some(US(222)), Cmp::Below, US(200));
        assert_eq!(c.met, Some(false));
        assert_eq!(c.to_string(), "p99 < 200 µs — **MISSED** (222 µs)");
        let c = Check::new("p99", Some(US(150)), Cmp::Below, US(200));
        assert_eq!(c.met, Some(true));
        assert_eq!(c.to_string(), "p99 < 200 µs — **met** (150 µs)");
        // The bound itself is not below the bound.
        assert_eq!(
            Check::new("p99", Some(US(200)), Cmp::Below, US(200)).met,
            Some(false)
        );
    }

    #[test]
    fn each_comparison_at_and_beside_its_bound() {
        let r = Ratio::times;
        assert!(Cmp::AtMost.holds(r(1.05), r(1.05)));
        assert!(!Cmp::AtMost.holds(r(1.06), r(1.05)));
        assert!(Cmp::AtLeast.holds(r(10.0), r(10.0)));
        assert!(!Cmp::AtLeast.holds(r(9.9), r(10.0)));
        assert!(Cmp::Exactly.holds(3usize, 3));
        assert!(!Cmp::Exactly.holds(2usize, 3));
        assert!(!Cmp::Below.holds(Bytes::mib(1), Bytes::mib(1)));
        assert!(Cmp::Below.holds(Bytes::kib(1023), Bytes::mib(1)));
    }

    #[test]
    fn not_measured_is_never_met() {
        let c = Check::new("p99", None::<Duration>, Cmp::Below, US(200));
        assert_eq!(c.met, None);
        assert_eq!(c.result(), "**not measured**");
        assert_eq!(Ratio::of(Some(US(5)), None), None);
        assert_eq!(Ratio::of(None, Some(US(5))), None);
        assert_eq!(Ratio::of(Some(US(5)), Some(Duration::ZERO)), None);
    }

    #[test]
    fn ratio_is_num_over_den() {
        let r = Ratio::of(Some(US(300)), Some(US(200))).unwrap();
        assert!((r.factor() - 1.5).abs() < 1e-12);
        assert_eq!(r.text(), "1.50×");
    }

    #[test]
    fn all_met_needs_every_check() {
        let met = Check::new("a", Some(1usize), Cmp::Exactly, 1);
        let missed = Check::new("b", Some(0usize), Cmp::Exactly, 1);
        let unmeasured = Check::new("c", None::<usize>, Cmp::Exactly, 1);
        assert_eq!(all_met(&[met.clone(), met.clone()]), Some(true));
        assert_eq!(all_met(&[met.clone(), missed.clone()]), Some(false));
        assert_eq!(all_met(&[unmeasured.clone(), missed]), Some(false));
        assert_eq!(all_met(&[met, unmeasured]), None);
        assert_eq!(all_met(&[]), None);
    }

    #[test]
    fn a_measurement_that_rounds_to_its_bound_is_shown_exactly() {
        let c = Check::new(
            "gated ÷ off",
            Some(Ratio::times(1.1039)),
            Cmp::AtMost,
            Ratio::times(1.10),
        );
        assert_eq!(c.result(), "**MISSED** (1.1039×)");
        let c = Check::new(
            "p99",
            Some(Duration::from_nanos(200_400)),
            Cmp::Below,
            US(200),
        );
        assert_eq!(c.result(), "**MISSED** (200400 ns)");
        let c = Check::new("p99", Some(US(200)), Cmp::AtMost, US(200));
        assert_eq!(c.result(), "**met** (200 µs)");
    }

    #[test]
    fn texts_carry_their_unit() {
        assert_eq!(US(222).text(), "222 µs");
        assert_eq!(Duration::from_nanos(4_500).text(), "4.50 µs");
        assert_eq!(Duration::from_micros(2_140).text(), "2.14 ms");
        assert_eq!(Duration::from_millis(2_533).text(), "2.53 s");
        assert_eq!(Bytes::kib(712).text(), "712 KiB");
        assert_eq!(Bytes::kib(6451).text(), "6.3 MiB");
        assert_eq!(Bytes::mib(8).text(), "8.0 MiB");
        assert_eq!(ms(US(87)), "0.087");
        assert_eq!(ms(Duration::from_millis(2194)), "2194");
    }
}
