//! Processes held as pidfds.
//!
//! A pidfd refers to one process for its whole life: once that process is gone the PID may be
//! given to another one, but the pidfd still refers to the old (dead) process, so signalling or
//! entering through it can never reach the newcomer.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::Error;

/// A process held by a pidfd.
#[derive(Debug)]
pub struct PidFd {
    pid: u32,
    fd: OwnedFd,
}

impl PidFd {
    /// Opens a pidfd for `pid`. Fails with [`Error::ProcessGone`] when there is no such process.
    pub fn open(pid: u32) -> Result<Self, Error> {
        if pid == 0 || pid > i32::MAX as u32 {
            return Err(Error::ProcessGone { pid });
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
        // passed.
        let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0u32) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Err(Error::ProcessGone { pid });
            }
            return Err(Error::PidfdOpen { pid, source: err });
        }
        // SAFETY: the kernel just returned this fd to us; nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(rc as RawFd) };
        Ok(PidFd { pid, fd })
    }

    /// The PID as we see it (meaningful only while [`PidFd::is_alive`]).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process has not exited yet. Facts read from `/proc/<pid>` after opening
    /// the pidfd belong to this process if it is still alive afterwards.
    pub fn is_alive(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd on our stack, zero timeout.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        rc == 0
    }

    /// A second descriptor of the same pidfd (for a thread or a child that needs its own).
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fd.try_clone()
    }

    /// Sends `signal` to the process (never to a process that reused its PID).
    pub fn send_signal(&self, signal: i32) -> Result<(), Error> {
        // SAFETY: pidfd_send_signal with a valid fd, a null siginfo and zero flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ESRCH) {
                return Err(Error::ProcessGone { pid: self.pid });
            }
            return Err(Error::Sys {
                what: "pidfd_send_signal",
                source: err,
            });
        }
        Ok(())
    }

    /// Waits until the process has exited (a pidfd becomes readable then).
    pub async fn exited(&self) -> Result<(), Error> {
        let dup = self.try_clone_fd().map_err(|source| Error::Sys {
            what: "dup pidfd",
            source,
        })?;
        // SAFETY: the AsyncFd owns `dup`, so the fd stays open and is not reused for as long
        // as it is registered.
        let afd =
            unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }.map_err(|e| {
                Error::Sys {
                    what: "register pidfd",
                    source: e.into(),
                }
            })?;
        loop {
            let mut guard = afd.readable().await.map_err(|source| Error::Sys {
                what: "poll pidfd",
                source,
            })?;
            if !self.is_alive() {
                return Ok(());
            }
            guard.clear_ready();
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_zero_is_gone() {
        assert!(matches!(PidFd::open(0), Err(Error::ProcessGone { pid: 0 })));
    }

    #[tokio::test]
    async fn waits_for_exit_of_a_child() {
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "read x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pidfd = PidFd::open(child.id()).unwrap();
        assert!(pidfd.is_alive());
        drop(child.stdin.take());
        pidfd.exited().await.unwrap();
        assert!(!pidfd.is_alive());
        child.wait().unwrap();
    }
}
