//! BENCHMARKS.md: the machine, the figures, their targets and whether they were met.

use std::time::Duration;

use super::stats::Samples;
use super::verdict::{all_met, ms, text_or_na, verdict, Bytes, Check, Quantity, Ratio};

/// What the figures were measured on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub nproc: usize,
    pub model: String,
    pub kernel: String,
    pub runc: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let runc = std::process::Command::new("/usr/sbin/runc")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            model,
            kernel,
            runc,
        }
    }
}

/// One line of a figure's table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub n: usize,
    pub median: Option<Duration>,
    pub p95: Option<Duration>,
    /// "ratio (median)", "ratio (p95)".
    pub ratio: (String, String),
}

impl Row {
    pub fn plain(name: &str, s: &Samples) -> Row {
        Row {
            name: name.into(),
            n: s.n(),
            median: s.median(),
            p95: s.p95(),
            ratio: (String::new(), String::new()),
        }
    }

    /// The reference the other rows are compared with.
    pub fn reference(name: &str, s: &Samples) -> Row {
        Row {
            ratio: ("1.00× (reference)".into(), "1.00×".into()),
            ..Row::plain(name, s)
        }
    }

    /// `s` ÷ `reference`, with the target ratio when the row has one.
    pub fn vs(name: &str, s: &Samples, reference: &Samples, target: Option<Ratio>) -> Row {
        let median = text_or_na(Ratio::of(s.median(), reference.median()));
        Row {
            ratio: (
                match target {
                    Some(t) => format!("{median} (target ≤ {})", t.text()),
                    None => median,
                },
                text_or_na(Ratio::of(s.p95(), reference.p95())),
            ),
            ..Row::plain(name, s)
        }
    }

    /// How many times slower this reference is than `ours`.
    pub fn speedup(name: &str, s: &Samples, ours: &Samples) -> Row {
        Row {
            ratio: (
                format!(
                    "ours {} faster",
                    text_or_na(Ratio::of(s.median(), ours.median()))
                ),
                format!("ours {} faster", text_or_na(Ratio::of(s.p95(), ours.p95()))),
            ),
            ..Row::plain(name, s)
        }
    }
}

/// One figure: its table, its targets and what was found.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub checks: Vec<Check>,
    pub rows: Vec<Row>,
    pub lines: Vec<String>,
}

impl Figure {
    pub fn new(title: &str) -> Figure {
        Figure {
            title: title.into(),
            checks: Vec::new(),
            rows: Vec::new(),
            lines: Vec::new(),
        }
    }

    /// Every target, "; " between them.
    pub fn target(&self) -> String {
        self.checks
            .iter()
            .map(Check::target)
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn met(&self) -> Option<bool> {
        all_met(&self.checks)
    }

    /// The verdict, with the measured values: "**MISSED** (1.08×; 1.03×)".
    pub fn result(&self) -> String {
        let measured: Vec<&str> = self
            .checks
            .iter()
            .filter_map(|c| c.measured.as_deref())
            .collect();
        if measured.is_empty() {
            verdict(self.met()).to_string()
        } else {
            format!("{} ({})", verdict(self.met()), measured.join("; "))
        }
    }
}

/// The whole report.
#[derive(Debug)]
pub struct Report {
    pub machine: Machine,
    pub containerd: Vec<String>,
    pub figures: Vec<Figure>,
    /// Memory and size limits, each a table row of the summary.
    pub limits: Vec<Check>,
    /// Sizes shown for context, without a target.
    pub sizes: Vec<(String, Bytes)>,
    pub notes: Vec<String>,
    pub duration: Duration,
    pub load_before: String,
    pub load_after: String,
}

/// The 1, 5 and 15 minute load averages (other work on the machine shows in the figures).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

impl Report {
    pub fn new(machine: Machine) -> Report {
        Report {
            machine,
            containerd: Vec::new(),
            figures: Vec::new(),
            limits: Vec::new(),
            sizes: Vec::new(),
            notes: Vec::new(),
            duration: Duration::ZERO,
            load_before: loadavg(),
            load_after: String::new(),
        }
    }

    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    pub fn render(&self, opts: &str) -> String {
        let mut o = String::new();
        let m = &self.machine;
        o.push_str("# Benchmarks\n\n");
        o.push_str(
            "Generated by `make bench` (the harness's `bench` binary); do not edit by hand.\n",
        );
        o.push_str("Every figure is a ratio against its reference measured in the same run, the variants\n");
        o.push_str(
            "interleaved round by round (order rotated each round). Times in milliseconds;\n",
        );
        o.push_str("percentiles are nearest-rank; N is the number of samples per variant.\n\n");
        o.push_str(&format!(
            "- Reproduce: `make bench` (options used: `{opts}`)\n- Machine: {} × {}, Linux {}, {}\n- containerd: {}\n- Whole run: {:.0} s; load average before {}, after {} (on a shared machine other work shows in the figures: compare rows of one table, which ran interleaved, rather than tables)\n\n",
            m.nproc,
            m.model,
            m.kernel,
            m.runc,
            if self.containerd.is_empty() { "not run".to_string() } else { self.containerd.join(", ") },
            self.duration.as_secs_f64(),
            self.load_before,
            self.load_after
        ));
        o.push_str("## Summary\n\n| figure | target | result |\n|---|---|---|\n");
        for f in &self.figures {
            o.push_str(&format!(
                "| {} | {} | {} |\n",
                f.title,
                f.target(),
                f.result()
            ));
        }
        for c in &self.limits {
            o.push_str(&format!("| {} | {} | {} |\n", c.what, c.bound, c.result()));
        }
        for (what, size) in &self.sizes {
            o.push_str(&format!("| {what} | — | (context) ({}) |\n", size.text()));
        }
        o.push('\n');
        for f in &self.figures {
            o.push_str(&format!("## {}\n\n", f.title));
            match f.checks.as_slice() {
                [] => o.push_str("Target: none (context)\n\n"),
                [c] => o.push_str(&format!("Target: {c}\n\n")),
                checks => {
                    o.push_str(&format!("Targets — {}:\n\n", verdict(f.met())));
                    for c in checks {
                        o.push_str(&format!("- {c}\n"));
                    }
                    o.push('\n');
                }
            }
            o.push_str("| variant | N | median | p95 | ratio (median) | ratio (p95) |\n|---|---:|---:|---:|---|---|\n");
            for r in &f.rows {
                o.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    r.name,
                    r.n,
                    r.median.map_or_else(|| "—".to_string(), ms),
                    r.p95.map_or_else(|| "—".to_string(), ms),
                    r.ratio.0,
                    r.ratio.1
                ));
            }
            o.push('\n');
            for l in &f.lines {
                o.push_str(l);
                o.push_str("\n\n");
            }
        }
        if !self.notes.is_empty() {
            o.push_str("## Notes from this run\n\n");
            for n in &self.notes {
                o.push_str(&format!("- {n}\n"));
            }
            o.push('\n');
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::targets;

    fn machine() -> Machine {
        Machine {
            nproc: 2,
            model: "test".into(),
            kernel: "test".into(),
            runc: "test".into(),
        }
    }

    #[test]
    fn summary_and_section_carry_the_verdict() {
        let mut rep = Report::new(machine());
        let lat: Samples = (0..100)
            .map(|i| Duration::from_micros(if i < 98 { 80 } else { 222 }))
            .collect();
        let mut f = Figure::new("NRI events");
        f.rows.push(Row::plain("round trip", &lat));
        f.checks.push(targets::events(&lat));
        rep.figures.push(f);
        rep.limits.push(targets::memory(
            "plugin RSS, idle",
            Some(Bytes::kib(6451)),
            targets::RSS_IDLE,
        ));
        rep.limits
            .push(targets::gate_size("gate binary", Bytes::mib(2)));
        rep.sizes.push(("plugin binary".into(), Bytes::kib(6688)));
        let text = rep.render("");
        for line in [
            "| NRI events | p99 per event < 200 µs | **MISSED** (222 µs) |",
            "| plugin RSS, idle | ≤ 8.0 MiB | **met** (6.3 MiB) |",
            "| gate binary | < 1.0 MiB | **MISSED** (2.0 MiB) |",
            "| plugin binary | — | (context) (6.5 MiB) |",
            "Target: p99 per event < 200 µs — **MISSED** (222 µs)",
            "| round trip | 100 | 0.080 | 0.080 |  |  |",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }

    #[test]
    fn several_targets_listed_with_one_verdict() {
        let mut rep = Report::new(machine());
        let ms = |v: u64| -> Samples { vec![Duration::from_millis(v); 3].into_iter().collect() };
        let mut f = Figure::new("start");
        f.checks = targets::start(&ms(100), &ms(104), &ms(120));
        rep.figures.push(f);
        let text = rep.render("");
        for line in [
            "| start | plugin (no hooks) ÷ NRI off, median ≤ 1.05×; PreStop (gate) ÷ NRI off, median ≤ 1.10× | **MISSED** (1.04×; 1.20×) |",
            "Targets — **MISSED**:",
            "- plugin (no hooks) ÷ NRI off, median ≤ 1.05× — **met** (1.04×)",
            "- PreStop (gate) ÷ NRI off, median ≤ 1.10× — **MISSED** (1.20×)",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }
}
