//! Building and driving the plugin crate's `bench_probe` example.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

/// Builds the example in release mode (the plugin's own profile) and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(nri_harness::install::repo_root())
        .args([
            "build",
            "--release",
            "-p",
            "nri-lifecycle",
            "--example",
            "bench_probe",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!(
            "cargo build of the bench_probe example failed: {}",
            out.status
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "bench_probe" {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo did not name the bench_probe executable")
}

/// One protocol generation's results.
#[derive(Debug, Clone)]
pub struct Generation {
    pub name: String,
    pub events: usize,
    pub total_ns: u64,
    pub lat_ns: Vec<u64>,
    /// None when the probe did not report it.
    pub rss_idle_kib: Option<u64>,
    pub rss_tracked_kib: Option<u64>,
    pub tracked: usize,
    pub tracked_socket_dirs: usize,
}

/// Runs `bench_probe events`.
pub fn events(
    probe: &Path,
    plugin: &Path,
    n: usize,
    tracked: usize,
) -> anyhow::Result<Vec<Generation>> {
    let out = Command::new(probe)
        .arg("events")
        .arg("--plugin")
        .arg(plugin)
        .args([
            "--events",
            &n.to_string(),
            "--tracked",
            &tracked.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running bench_probe events")?;
    if !out.status.success() {
        bail!("bench_probe events failed: {}", out.status);
    }
    let mut gens = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).context("bench_probe output")?;
        let u = |k: &str| v[k].as_u64().unwrap_or(0);
        gens.push(Generation {
            name: v["generation"].as_str().unwrap_or("?").to_string(),
            events: u("events") as usize,
            total_ns: u("total_ns"),
            lat_ns: v["lat_ns"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
                .unwrap_or_default(),
            rss_idle_kib: v["rss_idle_kib"].as_u64().filter(|k| *k > 0),
            rss_tracked_kib: v["rss_tracked_kib"].as_u64().filter(|k| *k > 0),
            tracked: u("tracked") as usize,
            tracked_socket_dirs: u("tracked_socket_dirs") as usize,
        });
    }
    Ok(gens)
}

/// A running `bench_probe hooks`; killed by PID when dropped.
pub struct Hooks {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Hooks {
    pub fn start(probe: &Path) -> anyhow::Result<Hooks> {
        let mut child = Command::new(probe)
            .arg("hooks")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting bench_probe hooks")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("bench_probe hooks: no pipes");
        };
        Ok(Hooks {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }

    fn ask(&mut self, line: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        let mut answer = String::new();
        if self.stdout.read_line(&mut answer)? == 0 {
            bail!("bench_probe hooks exited");
        }
        Ok(answer.trim_end().to_string())
    }

    /// "ok NANOS" → the duration; "err NANOS REASON" → error.
    fn timed(&mut self, line: &str) -> anyhow::Result<Duration> {
        let a = self.ask(line)?;
        let mut w = a.splitn(3, ' ');
        match (w.next(), w.next()) {
            (Some("ok"), Some(ns)) => Ok(Duration::from_nanos(ns.parse().context("nanoseconds")?)),
            _ => bail!("{}", a.splitn(3, ' ').nth(2).unwrap_or(&a)),
        }
    }

    pub fn target(&mut self, file: &Path) -> anyhow::Result<()> {
        let a = self.ask(&format!("target {}", file.display()))?;
        if a != "ok" {
            bail!("bench_probe target: {a}");
        }
        Ok(())
    }

    pub fn exec(&mut self, cmd: &[&str]) -> anyhow::Result<Duration> {
        self.timed(&format!("exec {}", cmd.join(" ")))
    }

    pub fn http(&mut self, port: u16, path: &str) -> anyhow::Result<Duration> {
        self.timed(&format!("http {port} {path}"))
    }

    pub fn plain(&mut self, ip: &str, port: u16, path: &str) -> anyhow::Result<Duration> {
        self.timed(&format!("plain {ip} {port} {path}"))
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
