//! The system calls that enter a container and take on its identity, behind a trait:
//! [`Raw`] makes them; the recording fake of the unit tests writes them down.
//!
//! # No allocation after the fork
//!
//! These calls are made in processes forked from the multi-threaded plugin, where only
//! async-signal-safe work is sound: no allocation, no locks. [`Raw`] is a zero-sized type
//! whose every method is one or two raw system calls on its arguments (integers, descriptors
//! and pointers into data prepared before the fork), reading `errno` on failure. The
//! sequences in [`super::child`] are generic over [`Syscalls`], so the production code is
//! compiled for `Raw` alone: no trait object, no allocation, nothing but the calls. The fake
//! allocates; it exists only in unit tests and never runs after a fork.

use std::ffi::CStr;
use std::os::fd::RawFd;

use super::plan::CStrings;
use crate::ns::lsm::AttrWrite;
use crate::ns::seccomp::Filter;

/// An `errno` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's `errno` (no allocation).
    pub fn last() -> Errno {
        // SAFETY: __errno_location returns a valid pointer to this thread's errno.
        Errno(unsafe { *libc::__errno_location() })
    }
}

/// The calls that enter a container and make the hook process, one method each.
pub trait Syscalls {
    /// `prctl(PR_SET_DUMPABLE, 0)`.
    fn set_undumpable(&self) -> Result<(), Errno>;
    /// Writes `0` (this process) into the `cgroup.procs` file open as `procs`.
    fn join_cgroup(&self, procs: RawFd) -> Result<(), Errno>;
    /// `setns(fd, flags)`; `fd` is a pidfd or a namespace file.
    fn setns(&self, fd: RawFd, flags: libc::c_int) -> Result<(), Errno>;
    /// `fchdir(root)` then `chroot(".")`.
    fn enter_root(&self, root: RawFd) -> Result<(), Errno>;
    /// `setsid()`.
    fn setsid(&self) -> Result<(), Errno>;
    /// `prctl(PR_CAPBSET_DROP, cap)`.
    fn drop_bounding(&self, cap: u32) -> Result<(), Errno>;
    /// `prctl(PR_SET_KEEPCAPS, keep)`.
    fn set_keepcaps(&self, keep: bool) -> Result<(), Errno>;
    /// `setgroups(groups)` (the raw system call: this thread only, which is all there is).
    fn setgroups(&self, groups: &[libc::gid_t]) -> Result<(), Errno>;
    /// `setresgid(gid, gid, gid)`.
    fn setresgid(&self, gid: libc::gid_t) -> Result<(), Errno>;
    /// `setresuid(uid, uid, uid)`.
    fn setresuid(&self, uid: libc::uid_t) -> Result<(), Errno>;
    /// `capset` of the effective, permitted and inheritable sets (64-bit, version 3).
    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno>;
    /// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)`.
    fn clear_ambient(&self) -> Result<(), Errno>;
    /// `prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)`.
    fn raise_ambient(&self, cap: u32) -> Result<(), Errno>;
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    fn set_no_new_privs(&self) -> Result<(), Errno>;
    /// `chdir(dir)`.
    fn chdir(&self, dir: &CStr) -> Result<(), Errno>;
    /// Writes `value` (a decimal number) to `/proc/self/oom_score_adj`.
    fn set_oom_score_adj(&self, value: &CStr) -> Result<(), Errno>;
    /// `seccomp(SECCOMP_SET_MODE_FILTER, flags, program)` of a compiled filter.
    fn seccomp(&self, filter: &Filter) -> Result<(), Errno>;
    /// Writes the value of `attr` to its path under the directory `proc` (an open `/proc`),
    /// in one `write`, as the kernel's `attr` files want it.
    fn write_attr(&self, proc: RawFd, attr: &AttrWrite) -> Result<(), Errno>;
    /// `execve(path, argv, envp)`: returns only when it failed, with why.
    fn execve(&self, path: &CStr, argv: &CStrings, envp: &CStrings) -> Errno;
}

/// The real system calls. Zero-sized; every method is a raw call, allocation-free.
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

/// Writes `bytes` to `fd` in one `write(2)` (a short write is an error: the files written
/// here take their value whole) and closes `fd`, which the caller opened for this alone.
fn write_and_close(fd: libc::c_int, bytes: &[u8]) -> Result<(), Errno> {
    // SAFETY: a write of `bytes` to the fd the caller just opened.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    let result = if n == bytes.len() as isize {
        Ok(())
    } else if n < 0 {
        Err(Errno::last())
    } else {
        Err(Errno(libc::EIO))
    };
    // SAFETY: closing the fd the caller opened, used by nothing else.
    unsafe { libc::close(fd) };
    result
}

fn check(rc: libc::c_long) -> Result<(), Errno> {
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> Result<(), Errno> {
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(option, arg2, arg3, 0, 0) }.into())
}

impl Syscalls for Raw {
    fn set_undumpable(&self) -> Result<(), Errno> {
        prctl(libc::PR_SET_DUMPABLE, 0, 0)
    }

    fn join_cgroup(&self, procs: RawFd) -> Result<(), Errno> {
        // SAFETY: a write of one byte from a static buffer.
        let n = unsafe { libc::write(procs, b"0".as_ptr().cast(), 1) };
        if n == 1 {
            Ok(())
        } else if n < 0 {
            Err(Errno::last())
        } else {
            Err(Errno(libc::EIO))
        }
    }

    fn setns(&self, fd: RawFd, flags: libc::c_int) -> Result<(), Errno> {
        // SAFETY: setns with a descriptor and flags.
        check(unsafe { libc::setns(fd, flags) }.into())
    }

    fn enter_root(&self, root: RawFd) -> Result<(), Errno> {
        // SAFETY: fchdir to a descriptor, then chroot with a static C string.
        check(unsafe { libc::fchdir(root) }.into())?;
        // SAFETY: as above.
        check(unsafe { libc::chroot(c".".as_ptr()) }.into())
    }

    fn setsid(&self) -> Result<(), Errno> {
        // SAFETY: no arguments.
        check(unsafe { libc::setsid() }.into())
    }

    fn drop_bounding(&self, cap: u32) -> Result<(), Errno> {
        prctl(libc::PR_CAPBSET_DROP, cap.into(), 0)
    }

    fn set_keepcaps(&self, keep: bool) -> Result<(), Errno> {
        prctl(libc::PR_SET_KEEPCAPS, keep.into(), 0)
    }

    fn setgroups(&self, groups: &[libc::gid_t]) -> Result<(), Errno> {
        // SAFETY: the raw system call with a length and a pointer to that many gids.
        check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
    }

    fn setresgid(&self, gid: libc::gid_t) -> Result<(), Errno> {
        // SAFETY: the raw system call with integers.
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })
    }

    fn setresuid(&self, uid: libc::uid_t) -> Result<(), Errno> {
        // SAFETY: the raw system call with integers.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
    }

    fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
        let data = [false, true].map(|hi| Data {
            effective: half(effective, hi),
            permitted: half(permitted, hi),
            inheritable: half(inheritable, hi),
        });
        // SAFETY: a version-3 header and two data records on our stack, as capset wants.
        check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })
    }

    fn clear_ambient(&self) -> Result<(), Errno> {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
        )
    }

    fn raise_ambient(&self, cap: u32) -> Result<(), Errno> {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            cap.into(),
        )
    }

    fn set_no_new_privs(&self) -> Result<(), Errno> {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
    }

    fn chdir(&self, dir: &CStr) -> Result<(), Errno> {
        // SAFETY: a valid C string.
        check(unsafe { libc::chdir(dir.as_ptr()) }.into())
    }

    fn set_oom_score_adj(&self, value: &CStr) -> Result<(), Errno> {
        // SAFETY: open with a static C string; returns a new fd or -1.
        let fd = unsafe {
            libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Errno::last());
        }
        write_and_close(fd, value.to_bytes())
    }

    fn seccomp(&self, filter: &Filter) -> Result<(), Errno> {
        let program = filter.program();
        let prog = libc::sock_fprog {
            // At most BPF_MAXINSNS (4096): checked when the filter was compiled.
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr().cast_mut(),
        };
        // SAFETY: the raw system call with integers and a pointer to a sock_fprog on our
        // stack that points to the filter's instructions; the kernel copies and only reads
        // them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                filter.flags(),
                &prog as *const libc::sock_fprog,
            )
        };
        match rc {
            0 => Ok(()),
            // With SECCOMP_FILTER_FLAG_TSYNC, the id of a thread that could not be
            // synchronised (there is none: this process has one thread).
            n if n > 0 => Err(Errno(libc::ESRCH)),
            _ => Err(Errno::last()),
        }
    }

    fn write_attr(&self, proc: RawFd, attr: &AttrWrite) -> Result<(), Errno> {
        // SAFETY: openat with a descriptor and a valid C string; returns a new fd or -1.
        let fd = unsafe {
            libc::openat(
                proc,
                attr.path.as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            )
        };
        if fd < 0 {
            return Err(Errno::last());
        }
        write_and_close(fd, attr.value.to_bytes())
    }

    fn execve(&self, path: &CStr, argv: &CStrings, envp: &CStrings) -> Errno {
        // SAFETY: a valid C string and two NULL-terminated arrays of valid C strings, all
        // alive for the call (it only returns on failure).
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        Errno::last()
    }
}

/// A recording fake for unit tests: writes every call down and fails the one it is told to.
#[cfg(test)]
pub mod fake {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;

    /// One call with its arguments.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        SetUndumpable,
        JoinCgroup(RawFd),
        Setns(RawFd, libc::c_int),
        EnterRoot(RawFd),
        Setsid,
        DropBounding(u32),
        SetKeepcaps(bool),
        Setgroups(Vec<libc::gid_t>),
        Setresgid(libc::gid_t),
        Setresuid(libc::uid_t),
        Capset(u64, u64, u64),
        ClearAmbient,
        RaiseAmbient(u32),
        SetNoNewPrivs,
        Chdir(String),
        OomScoreAdj(String),
        /// A filter's instruction count and flags.
        Seccomp(usize, libc::c_ulong),
        /// An `attr` file (relative to the descriptor) and the value written.
        WriteAttr(RawFd, String, String),
        Execve(String),
    }

    /// Records calls; `fail` names a call that fails with an errno; `execve` fails with the
    /// queued errnos in turn (then `ENOENT`).
    #[derive(Debug, Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<Call>>,
        pub fail: Option<(Call, i32)>,
        pub exec_errnos: RefCell<VecDeque<i32>>,
    }

    impl Recorder {
        pub fn failing(call: Call, errno: i32) -> Self {
            Recorder {
                fail: Some((call, errno)),
                ..Default::default()
            }
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }

        fn record(&self, call: Call) -> Result<(), Errno> {
            let result = match &self.fail {
                Some((c, errno)) if *c == call => Err(Errno(*errno)),
                _ => Ok(()),
            };
            self.calls.borrow_mut().push(call);
            result
        }
    }

    impl Syscalls for Recorder {
        fn set_undumpable(&self) -> Result<(), Errno> {
            self.record(Call::SetUndumpable)
        }
        fn join_cgroup(&self, procs: RawFd) -> Result<(), Errno> {
            self.record(Call::JoinCgroup(procs))
        }
        fn setns(&self, fd: RawFd, flags: libc::c_int) -> Result<(), Errno> {
            self.record(Call::Setns(fd, flags))
        }
        fn enter_root(&self, root: RawFd) -> Result<(), Errno> {
            self.record(Call::EnterRoot(root))
        }
        fn setsid(&self) -> Result<(), Errno> {
            self.record(Call::Setsid)
        }
        fn drop_bounding(&self, cap: u32) -> Result<(), Errno> {
            self.record(Call::DropBounding(cap))
        }
        fn set_keepcaps(&self, keep: bool) -> Result<(), Errno> {
            self.record(Call::SetKeepcaps(keep))
        }
        fn setgroups(&self, groups: &[libc::gid_t]) -> Result<(), Errno> {
            self.record(Call::Setgroups(groups.to_vec()))
        }
        fn setresgid(&self, gid: libc::gid_t) -> Result<(), Errno> {
            self.record(Call::Setresgid(gid))
        }
        fn setresuid(&self, uid: libc::uid_t) -> Result<(), Errno> {
            self.record(Call::Setresuid(uid))
        }
        fn capset(&self, effective: u64, permitted: u64, inheritable: u64) -> Result<(), Errno> {
            self.record(Call::Capset(effective, permitted, inheritable))
        }
        fn clear_ambient(&self) -> Result<(), Errno> {
            self.record(Call::ClearAmbient)
        }
        fn raise_ambient(&self, cap: u32) -> Result<(), Errno> {
            self.record(Call::RaiseAmbient(cap))
        }
        fn set_no_new_privs(&self) -> Result<(), Errno> {
            self.record(Call::SetNoNewPrivs)
        }
        fn chdir(&self, dir: &CStr) -> Result<(), Errno> {
            self.record(Call::Chdir(dir.to_string_lossy().into_owned()))
        }
        fn set_oom_score_adj(&self, value: &CStr) -> Result<(), Errno> {
            self.record(Call::OomScoreAdj(value.to_string_lossy().into_owned()))
        }
        fn seccomp(&self, filter: &Filter) -> Result<(), Errno> {
            self.record(Call::Seccomp(filter.program().len(), filter.flags()))
        }
        fn write_attr(&self, proc: RawFd, attr: &AttrWrite) -> Result<(), Errno> {
            self.record(Call::WriteAttr(
                proc,
                attr.path.to_string_lossy().into_owned(),
                attr.value.to_string_lossy().into_owned(),
            ))
        }
        fn execve(&self, path: &CStr, _argv: &CStrings, _envp: &CStrings) -> Errno {
            self.calls
                .borrow_mut()
                .push(Call::Execve(path.to_string_lossy().into_owned()));
            Errno(
                self.exec_errnos
                    .borrow_mut()
                    .pop_front()
                    .unwrap_or(libc::ENOENT),
            )
        }
    }
}
