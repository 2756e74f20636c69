//! Where the installed parts live (the cache filled by `harness/scripts/setup.sh`), and running
//! that script when something is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Errors of locating or installing the node's parts.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the harness needs root (uid 0) to install packages and run containerd; uid is {0}")]
    NotRoot(u32),
    #[error("cannot run the set-up script {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the set-up script {path} failed with {status}")]
    Script {
        path: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("missing after set-up: {0}")]
    Missing(PathBuf),
}

/// The containerd versions the harness can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// containerd 1.7 (pinned 1.7.24, Debian trixie); config `version = 2`.
    V1_7,
    /// containerd 2.1 (pinned 2.1.9, Debian sid); config `version = 3`.
    V2_1,
}

impl Version {
    /// Both versions, oldest first.
    pub const ALL: [Version; 2] = [Version::V1_7, Version::V2_1];

    /// The cache sub-directory the version is unpacked into.
    pub fn dir_name(self) -> &'static str {
        match self {
            Version::V1_7 => "containerd-1.7",
            Version::V2_1 => "containerd-2.1",
        }
    }

    /// A short label, e.g. for test output.
    pub fn label(self) -> &'static str {
        match self {
            Version::V1_7 => "containerd 1.7",
            Version::V2_1 => "containerd 2.1",
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// The installed parts: binaries, CNI plugins, image tars.
#[derive(Debug, Clone)]
pub struct Install {
    /// The cache directory (`.cache/harness` at the repository root unless
    /// `NRI_HARNESS_CACHE` says otherwise).
    pub cache: PathBuf,
}

static SETUP: Mutex<bool> = Mutex::new(false);

/// The repository root (the parent of the harness crate).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

impl Install {
    /// Locates the cache without installing anything.
    pub fn locate() -> Install {
        let cache = std::env::var_os("NRI_HARNESS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".cache").join("harness"));
        Install { cache }
    }

    /// Locates the cache and runs the (idempotent) set-up script once per process, so a
    /// fresh machine gets everything on the first test. Fails when not root.
    pub fn ensure() -> Result<Install, InstallError> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(InstallError::NotRoot(uid));
        }
        let install = Install::locate();
        let mut done = SETUP.lock().unwrap_or_else(|p| p.into_inner());
        if !*done {
            let script = repo_root().join("harness").join("scripts").join("setup.sh");
            let status = Command::new("bash")
                .arg(&script)
                .env("NRI_HARNESS_CACHE", &install.cache)
                .status()
                .map_err(|source| InstallError::Spawn {
                    path: script.clone(),
                    source,
                })?;
            if !status.success() {
                return Err(InstallError::Script {
                    path: script,
                    status,
                });
            }
            *done = true;
        }
        for v in Version::ALL {
            install.require(&install.containerd(v))?;
        }
        install.require(&install.cni_bin_dir().join("bridge"))?;
        install.require(&install.image_tar("distroless"))?;
        Ok(install)
    }

    fn require(&self, p: &Path) -> Result<(), InstallError> {
        if p.exists() {
            Ok(())
        } else {
            Err(InstallError::Missing(p.to_path_buf()))
        }
    }

    /// The directory holding `containerd`, `ctr` and the runc shim of a version.
    pub fn bin_dir(&self, v: Version) -> PathBuf {
        self.cache.join(v.dir_name()).join("usr").join("bin")
    }

    /// The containerd binary of a version.
    pub fn containerd(&self, v: Version) -> PathBuf {
        self.bin_dir(v).join("containerd")
    }

    /// The `ctr` binary of a version.
    pub fn ctr(&self, v: Version) -> PathBuf {
        self.bin_dir(v).join("ctr")
    }

    /// The Debian package version of containerd being tested (e.g. `1.7.24~ds1-6+deb13u1`).
    pub fn package_version(&self, v: Version) -> String {
        std::fs::read_to_string(self.cache.join(format!("{}.version", v.dir_name())))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string())
    }

    /// The CNI plugin directory.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.cache.join("cni").join("usr").join("lib").join("cni")
    }

    /// The OCI-layout tar of a test image (`busybox`, `pause` or `distroless`).
    pub fn image_tar(&self, name: &str) -> PathBuf {
        self.cache.join("images").join(format!("{name}.tar"))
    }

    /// The static test binary (also the only file of the distroless image).
    pub fn testapp(&self) -> PathBuf {
        self.cache.join("images").join("testapp")
    }

    /// Where the per-node run directories live.
    pub fn run_dir(&self) -> PathBuf {
        self.cache.join("run")
    }

    /// Where the node-slot locks and the saved `ip_forward` live. Machine-wide (not per
    /// checkout), because slots own machine-wide things: bridge names and subnets.
    /// `NRI_HARNESS_LOCK_DIR` overrides it.
    pub fn lock_dir(&self) -> PathBuf {
        std::env::var_os("NRI_HARNESS_LOCK_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/nri-harness"))
    }
}

/// The image references of the local test images.
pub mod images {
    /// Busybox with applet symlinks; default command `sh`.
    pub const BUSYBOX: &str = "nri-harness.local/busybox:1";
    /// The sandbox image: busybox running `sleep`.
    pub const PAUSE: &str = "nri-harness.local/pause:1";
    /// Only `/testapp` (entrypoint), no shell, no sleep.
    pub const DISTROLESS: &str = "nri-harness.local/distroless:1";
    /// The path of the test binary inside the distroless image.
    pub const TESTAPP: &str = "/testapp";
}
