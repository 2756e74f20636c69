//! Namespace handles and the comparison of a process's namespaces with ours.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::sys::Sys;
use super::Error;

/// A kind of Linux namespace, in the order `nsenter` lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsKind {
    User,
    Mount,
    Pid,
    Net,
    Ipc,
    Uts,
    Cgroup,
    Time,
}

impl NsKind {
    pub const ALL: [NsKind; 8] = [
        NsKind::User,
        NsKind::Mount,
        NsKind::Pid,
        NsKind::Net,
        NsKind::Ipc,
        NsKind::Uts,
        NsKind::Cgroup,
        NsKind::Time,
    ];

    /// File name under `/proc/<pid>/ns/`. For pid and time it is the process's own namespace
    /// (not the `*_for_children` one).
    pub fn proc_name(self) -> &'static str {
        match self {
            NsKind::User => "user",
            NsKind::Mount => "mnt",
            NsKind::Pid => "pid",
            NsKind::Net => "net",
            NsKind::Ipc => "ipc",
            NsKind::Uts => "uts",
            NsKind::Cgroup => "cgroup",
            NsKind::Time => "time",
        }
    }

    /// The `CLONE_NEW*` flag of this kind.
    pub fn clone_flag(self) -> libc::c_int {
        match self {
            NsKind::User => libc::CLONE_NEWUSER,
            NsKind::Mount => libc::CLONE_NEWNS,
            NsKind::Pid => libc::CLONE_NEWPID,
            NsKind::Net => libc::CLONE_NEWNET,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::Uts => libc::CLONE_NEWUTS,
            NsKind::Cgroup => libc::CLONE_NEWCGROUP,
            NsKind::Time => libc::CLONE_NEWTIME,
        }
    }

    pub fn proc_path(self, pid: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/ns/{}", self.proc_name()))
    }
}

/// An open namespace (`/proc/<pid>/ns/<kind>` or a bind-mounted namespace file).
#[derive(Debug)]
pub struct NsHandle {
    pub kind: NsKind,
    pub fd: OwnedFd,
    pub dev: u64,
    pub ino: u64,
}

impl NsHandle {
    /// Opens a namespace file and records its identity.
    pub fn open(kind: NsKind, path: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::MetadataExt;
        let file = std::fs::File::open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        let meta = file.metadata().map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(NsHandle {
            kind,
            dev: meta.dev(),
            ino: meta.ino(),
            fd: file.into(),
        })
    }

    /// Opens a namespace of a running process.
    pub fn of_pid(kind: NsKind, pid: u32) -> Result<Self, Error> {
        Self::open(kind, &kind.proc_path(pid))
    }

    /// Whether two handles name the same namespace.
    pub fn same_as(&self, other: &NsHandle) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// The namespaces of `pid` that differ from those of the calling process, as `CLONE_NEW*`
/// kinds. A namespace kind the kernel does not have (no `/proc/self/ns/<kind>`) is skipped;
/// one that exists for us but cannot be read for `pid` is an error (fail closed).
pub fn differing(sys: &dyn Sys, pid: u32) -> Result<Vec<NsKind>, Error> {
    let mut out = Vec::new();
    for kind in NsKind::ALL {
        let ours = PathBuf::from(format!("/proc/self/ns/{}", kind.proc_name()));
        let Ok(our_id) = sys.inode(&ours) else {
            continue;
        };
        let theirs = kind.proc_path(pid);
        let their_id = sys.inode(&theirs).map_err(|source| Error::Read {
            path: theirs.clone(),
            source,
        })?;
        if their_id != our_id {
            out.push(kind);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::sys::FakeSys;

    #[test]
    fn only_differing_namespaces_are_entered() {
        let mut sys = FakeSys::default();
        for (i, kind) in NsKind::ALL.iter().enumerate() {
            let name = kind.proc_name();
            sys = sys.inode(&format!("/proc/self/ns/{name}"), 4, 100 + i as u64);
            let theirs = if matches!(kind, NsKind::User | NsKind::Time) {
                100 + i as u64
            } else {
                200 + i as u64
            };
            sys = sys.inode(&format!("/proc/42/ns/{name}"), 4, theirs);
        }
        let kinds = differing(&sys, 42).unwrap();
        assert_eq!(
            kinds,
            vec![
                NsKind::Mount,
                NsKind::Pid,
                NsKind::Net,
                NsKind::Ipc,
                NsKind::Uts,
                NsKind::Cgroup
            ]
        );
    }

    #[test]
    fn unreadable_target_namespace_fails_closed() {
        let sys = FakeSys::default().inode("/proc/self/ns/mnt", 4, 1);
        let err = differing(&sys, 7).unwrap_err();
        assert!(err.to_string().contains("/proc/7/ns/mnt"), "{err}");
    }

    #[test]
    fn handles_of_our_own_process_compare_equal() {
        let a = NsHandle::of_pid(NsKind::Net, std::process::id()).unwrap();
        let b = NsHandle::open(NsKind::Net, Path::new("/proc/self/ns/net")).unwrap();
        assert!(a.same_as(&b));
    }
}
