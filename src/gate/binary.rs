//! The embedded gate binary and writing it out.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::GateError;

static GATE: &[u8] = include_bytes!(env!("NRI_LIFECYCLE_GATE_BIN"));

/// The gate binary built with this plugin (a static executable).
pub fn embedded_gate() -> &'static [u8] {
    GATE
}

/// FNV-1a, 64 bits: a stable content hash that needs no dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// File name of this build's gate: `nri-lifecycle-gate-<version>-<content hash>`. Two plugin
/// builds never share a name unless their gates are byte for byte the same.
pub fn gate_file_name() -> String {
    // Hashing the binary is the only cost here; do it once per process.
    static HASH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    format!(
        "nri-lifecycle-gate-{}-{:016x}",
        env!("CARGO_PKG_VERSION"),
        HASH.get_or_init(|| fnv1a(GATE))
    )
}

fn same_content(path: &Path, want: &[u8]) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    match f.metadata() {
        Ok(m) if m.len() == want.len() as u64 => {}
        _ => return false,
    }
    let mut have = Vec::with_capacity(want.len());
    f.read_to_end(&mut have).is_ok() && have == want
}

/// Writes the embedded gate to `dir/<gate_file_name()>` (mode 0555) unless an identical file
/// is already there, atomically (temporary file, fsync, rename), and returns its path.
/// Gates of other versions are left alone: containers created by an older plugin may still
/// start with them.
pub fn install_gate(dir: &Path) -> Result<PathBuf, GateError> {
    fs::create_dir_all(dir).map_err(|source| GateError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(gate_file_name());
    if same_content(&path, GATE) {
        return Ok(path);
    }
    let tmp = dir.join(format!(".{}.{}.tmp", gate_file_name(), std::process::id()));
    let wrap = |source: std::io::Error| GateError::WriteBinary {
        path: path.clone(),
        source,
    };
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(wrap(e)),
        _ => {}
    }
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o555)
            .open(&tmp)?;
        f.write_all(GATE)?;
        f.set_permissions(fs::Permissions::from_mode(0o555))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(wrap(e));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_gate_is_a_small_elf() {
        assert_eq!(&GATE[..4], b"\x7fELF");
        assert!(GATE.len() < 1024 * 1024, "gate is {} bytes", GATE.len());
    }

    #[test]
    fn install_is_idempotent_and_executable() {
        let dir = tempfile::tempdir().unwrap();
        let a = install_gate(dir.path()).unwrap();
        let b = install_gate(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(fs::read(&a).unwrap(), GATE);
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o555);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(a
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("nri-lifecycle-gate-"));
    }

    #[test]
    fn install_replaces_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(gate_file_name());
        fs::write(&path, b"junk").unwrap();
        install_gate(dir.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), GATE);
    }
}
