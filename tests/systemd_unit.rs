//! The systemd unit in packaging/ passes `systemd-analyze verify` without a single warning,
//! and its command line is one our binary accepts. A unit with a misspelt key is shown to
//! fail the same check, so the check itself can fail.

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../packaging/nri-lifecycle.service");
/// Where the unit expects the binary; `make install-systemd` rewrites it for another PREFIX.
const INSTALLED_BIN: &str = "/usr/local/bin/nri-lifecycle";

/// The unit with its binary path pointing at the binary under test (verify checks that the
/// command exists and is executable).
fn unit_for_test() -> String {
    assert_eq!(
        UNIT.matches(INSTALLED_BIN).count(),
        1,
        "the unit names {INSTALLED_BIN} exactly once (the Makefile rewrites that path)"
    );
    UNIT.replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_nri-lifecycle"))
}

/// `systemd-analyze verify` on `text` as nri-lifecycle.service: its exit status and output.
fn verify(dir: &Path, text: &str) -> Option<(bool, String)> {
    let path = dir.join("nri-lifecycle.service");
    std::fs::write(&path, text).unwrap();
    let out = match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running systemd-analyze: {e}"),
    };
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), output))
}

fn systemd_analyze_missing() {
    let required = std::env::var("NRI_E2E_REQUIRED").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "systemd-analyze is not installed (Debian package systemd; `make deps` installs it) and NRI_E2E_REQUIRED=1 forbids skipping"
    );
    eprintln!("\n!!!!! SKIPPED systemd unit check: systemd-analyze is not installed (Debian package systemd) !!!!!\n");
}

#[test]
fn unit_verifies_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let Some((ok, output)) = verify(dir.path(), &unit_for_test()) else {
        return systemd_analyze_missing();
    };
    assert!(ok && output.trim().is_empty(), "verify: {output}");

    // The same check rejects a broken unit: a misspelt key is only a warning to systemd
    // (exit status 0), so any output counts as a failure.
    let broken = unit_for_test().replace("\nRestartSec=", "\nRestartSecs=");
    let (ok, output) = verify(dir.path(), &broken).unwrap();
    assert!(!ok || !output.trim().is_empty(), "a misspelt key passed");
    assert!(output.contains("RestartSecs"), "{output}");
}

#[test]
fn unit_restarts_always_after_containerd() {
    let lines: Vec<&str> = UNIT.lines().map(str::trim).collect();
    for wanted in [
        "Restart=always",
        "RestartSec=1",
        "After=containerd.service",
        "ProtectSystem=full",
    ] {
        assert!(lines.contains(&wanted), "missing {wanted}");
    }
    // See the unit's comments: hooks inherit these, so none may be set.
    for key in [
        "NoNewPrivileges=",
        "CapabilityBoundingSet=",
        "SystemCallFilter=",
        "PrivateDevices=",
        "ProtectControlGroups=",
    ] {
        assert!(
            !lines.iter().any(|l| l.starts_with(key)),
            "{key} must not be set"
        );
    }
}

#[test]
fn unit_command_line_is_accepted_by_run() {
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let args: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(args[0], INSTALLED_BIN);
    assert_eq!(args[1], "run");
    let help = Command::new(env!("CARGO_BIN_EXE_nri-lifecycle"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(&format!("{flag} <")), "run has no {flag}");
    }
    assert!(args.contains(&"--socket") && args.contains(&"--config"));
}
