//! Helpers shared by the integration tests.

/// Writes the embedded gate to `path` with `nri-lifecycle gate --output` (a child process: a
/// write descriptor held by this multi-threaded test process could leak into a concurrent
/// fork and make exec fail with ETXTBSY). Also exercises the `gate` subcommand.
pub fn write_gate(path: &std::path::Path) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_nri-lifecycle"))
        .arg("gate")
        .arg("--output")
        .arg(path)
        .status()
        .expect("run nri-lifecycle gate");
    assert!(status.success(), "cannot write {}", path.display());
    let written = std::fs::read(path).expect("read the written gate");
    assert_eq!(
        written,
        nri_lifecycle::gate::embedded_gate(),
        "gate written as embedded"
    );
}
