//! Processes and namespaces: everything that touches another process's kernel objects.
//!
//! - [`pidfd`]: processes held as pidfds, so a recycled PID is never entered or signalled, and
//!   an async "wait until this process exits".
//! - [`namespace`]: namespace handles (`/proc/<pid>/ns/*` as [`std::os::fd::OwnedFd`]) and
//!   which of a process's namespaces differ from ours.
//! - [`identity`]: who a container's processes are (uid, gids, env, cwd, capabilities,
//!   no_new_privs, cgroups), from the runtime's spec, the bundle or `/proc`.
//! - [`confinement`]: what else confines them (the seccomp filter, the OOM score
//!   adjustment), from the bundle's OCI spec; fails closed.
//! - [`seccomp`]: an OCI seccomp profile compiled into a BPF program with libseccomp.
//! - [`libseccomp`]: the few functions of libseccomp used, loaded at run time.
//! - [`lsm`]: the AppArmor profile and SELinux label, as `runc exec` applies them.
//! - [`enter`]: starting a command inside a container (the exec hook's engine).
//! - [`netsock`]: sockets created inside a network namespace.
//! - [`sys`]: the few reads of `/proc` behind a trait, with a recording fake for unit tests.

pub mod confinement;
pub mod enter;
pub mod identity;
pub mod libseccomp;
pub mod lsm;
pub mod namespace;
pub mod netsock;
pub mod pidfd;
pub mod seccomp;
pub mod sys;

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// Opens the regular file `path` of a container for reading, resolving it (and every symlink
/// on the way) inside the container's root directory `root`, never on the host.
pub fn open_in_root(root: BorrowedFd<'_>, path: &str) -> std::io::Result<std::fs::File> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_how is a plain C struct of integers; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid directory fd, a C string and a correctly sized open_how
    // that outlives the call; returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: freshly opened by the kernel for us, owned by nobody else.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Errors of the namespace layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid} is gone")]
    ProcessGone { pid: u32 },
    #[error("pidfd_open of pid {pid}: {source}")]
    PidfdOpen { pid: u32, source: std::io::Error },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("no mounted cgroup hierarchy for {controllers:?} of pid {pid}")]
    NoCgroupMount { pid: u32, controllers: String },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("entering container of pid {pid} failed at {step}: {source}")]
    Enter {
        pid: u32,
        step: &'static str,
        source: std::io::Error,
    },
    #[error("invalid argument for container of pid {pid}: {reason}")]
    Invalid { pid: u32, reason: String },
    #[error(
        "the OCI spec of the container of pid {pid} cannot be read ({reason}): its seccomp \
         filter cannot be known, so nothing runs"
    )]
    NoSpec { pid: u32, reason: String },
    #[error(
        "the seccomp profile in {config} cannot be applied ({reason}): nothing runs unconfined"
    )]
    Seccomp { config: PathBuf, reason: String },
    #[error(
        "the seccomp policy the runtime sent for the container of pid {pid} cannot be applied \
         ({reason}): nothing runs unconfined"
    )]
    RuntimeSeccomp { pid: u32, reason: String },
    #[error("{reason} (container of pid {pid}): nothing runs unconfined")]
    Lsm { pid: u32, reason: String },
    #[error("network namespace {netns}: {reason}")]
    Netns { netns: String, reason: String },
}

impl Error {
    /// Whether this error only says that the target process no longer exists.
    pub fn is_gone(&self) -> bool {
        match self {
            Error::ProcessGone { .. } => true,
            Error::PidfdOpen { source, .. }
            | Error::Read { source, .. }
            | Error::Open { source, .. } => source.raw_os_error() == Some(libc::ESRCH),
            _ => false,
        }
    }
}
