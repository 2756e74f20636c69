//! The launch: opens what the forked processes need, forks them and reads their report.
//! Everything here after the fork makes raw system calls only (see [`super`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use super::child::{self, Failed};
use super::plan::Plan;
use super::report::{self, Ended, Record};
use super::step::Step;
use super::syscalls::{Errno, Raw};
use crate::ns::pidfd::PidFd;
use crate::ns::Error;

/// A plan with the descriptors it needs, opened before the fork.
struct Launch {
    plan: Plan,
    pidfd: RawFd,
    root: OwnedFd,
    /// The plugin's `/proc`, for the hook's LSM writes (only when it makes some).
    proc: Option<OwnedFd>,
    cgroup_procs: Vec<OwnedFd>,
    report_w: OwnedFd,
    kill_r: OwnedFd,
}

/// A hook process started inside a container.
pub struct Running {
    /// The first forked process; it exits once the hook and its helper have ended.
    pub child: tokio::process::Child,
    report: OwnedFd,
    kill: Option<OwnedFd>,
}

impl Running {
    /// Asks the helper inside the container to kill the hook's whole process tree. Dropping
    /// a [`Running`] does the same.
    pub fn kill_tree(&mut self) {
        self.kill = None;
    }

    /// After `child` has exited: how the hook ended.
    pub fn ended(&self) -> Ended {
        report::read(&self.report)
    }
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into our array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(Error::Sys {
            what: "pipe2",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts the command of `plan` inside the container whose init is held by `container`.
/// `output` becomes the hook's stdout and stderr.
pub fn spawn(container: &PidFd, mut plan: Plan, output: OwnedFd) -> Result<Running, Error> {
    let pid = plan.pid;
    let root = open_path(
        &PathBuf::from(format!("/proc/{pid}/root")),
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    let proc = if plan.lsm.any() {
        Some(open_path(&plan.lsm.proc, libc::O_PATH | libc::O_DIRECTORY)?)
    } else {
        None
    };
    let mut cgroup_procs = Vec::new();
    for procs in &plan.cgroup_procs {
        cgroup_procs.push(open_path(procs, libc::O_WRONLY)?);
    }
    // Everything read or opened through /proc/<pid> so far belongs to the container's init
    // if it is still alive now.
    if !container.is_alive() {
        return Err(Error::ProcessGone { pid });
    }
    if plan.needs_home() {
        let passwd = read_in_root(&root, "etc/passwd", 256 * 1024).ok();
        plan.add_home(passwd.as_deref())?;
    }
    let (report_r, report_w) = pipe_cloexec()?;
    let (kill_r, kill_w) = pipe_cloexec()?;
    set_nonblocking(&report_r)?;
    let launch = Arc::new(Launch {
        plan,
        pidfd: container.as_raw_fd(),
        root,
        proc,
        cgroup_procs,
        report_w,
        kill_r,
    });
    let out2 = output.try_clone().map_err(|source| Error::Sys {
        what: "dup output pipe",
        source,
    })?;
    // Never executed: the pre_exec closure either fails or execs the hook itself. Should it
    // ever return Ok, exec'ing /dev/null fails, so nothing runs on the host.
    let mut cmd = tokio::process::Command::new("/dev/null");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(output))
        .stderr(Stdio::from(out2))
        .env_clear();
    let child_launch = Arc::clone(&launch);
    // SAFETY: the closure runs in the forked child and only makes raw system calls on data
    // prepared above (see `c1_main`); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || c1_main(&child_launch));
    }
    let spawned = cmd.spawn();
    drop(cmd);
    // Our copies of the child's ends must go, so EOFs mean what they should.
    drop(launch);
    match spawned {
        Ok(child) => Ok(Running {
            child,
            report: report_r,
            kill: Some(kill_w),
        }),
        Err(source) => match report::read(&report_r) {
            Ended::StepFailed { step, errno } => Err(Error::Enter {
                pid,
                step: step.name(),
                source: io::Error::from_raw_os_error(errno),
            }),
            _ => Err(Error::Enter {
                pid,
                step: "spawn",
                source,
            }),
        },
    }
}

fn open_path(path: &Path, flags: libc::c_int) -> Result<OwnedFd, Error> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Open {
        path: path.to_owned(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: a valid C string and flags; returns a new fd or -1.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Open {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: freshly opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), Error> {
    // SAFETY: fcntl on a valid fd we own.
    let rc = unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
    };
    if rc < 0 {
        return Err(Error::Sys {
            what: "fcntl O_NONBLOCK",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Reads a file of the container, resolving `path` (and every symlink on the way) inside
/// the container's root `root`, never on the host; at most `limit` bytes.
fn read_in_root(root: &OwnedFd, path: &str, limit: usize) -> io::Result<String> {
    use std::io::Read;
    use std::os::fd::AsFd;
    let file = crate::ns::open_in_root(root.as_fd(), path)?;
    let mut text = String::new();
    file.take(limit as u64).read_to_string(&mut text)?;
    Ok(text)
}

// ---------------------------------------------------------------------------------------
// Code below runs in forked children: raw system calls on prepared data only.
// ---------------------------------------------------------------------------------------

/// Reports a failed step.
fn report_failed(launch: &Launch, failed: Failed) {
    report::send(
        launch.report_w.as_raw_fd(),
        Record::StepFailed {
            step: failed.step,
            errno: failed.errno,
        },
    );
}

/// Reports the failure of a step done here (not through [`child`]), reading `errno`.
fn report_errno(launch: &Launch, step: Step) -> Failed {
    let failed = Failed {
        step,
        errno: Errno::last().0,
    };
    report_failed(launch, failed);
    failed
}

/// Ends this forked process (in processes that must not return into std).
fn exit(code: i32) -> ! {
    // SAFETY: _exit ends this forked process without running any user-space cleanup.
    unsafe { libc::_exit(code) }
}

fn raw_fork() -> libc::pid_t {
    // SAFETY: clone with only SIGCHLD behaves as fork without running atfork handlers; the
    // child continues on a copy of this stack.
    unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t
    }
}

fn wait_pid(pid: libc::pid_t, status: &mut libc::c_int, flags: libc::c_int) -> libc::pid_t {
    loop {
        // SAFETY: wait4 writes the status into our local; no rusage.
        let r = unsafe { libc::wait4(pid, status, flags, std::ptr::null_mut()) };
        if r < 0 && Errno::last().0 == libc::EINTR {
            continue;
        }
        return r;
    }
}

fn close_range(first: u32, last: u32) {
    if first <= last {
        // SAFETY: closes fds in a range; only fds this forked process does not use.
        unsafe {
            libc::syscall(libc::SYS_close_range, first, last, 0u32);
        }
    }
}

/// C1: cgroups, namespaces, root; then fork into the PID namespace and wait.
fn c1_main(launch: &Launch) -> io::Result<()> {
    // SAFETY: signal() with plain integers.
    unsafe {
        for sig in [
            libc::SIGCHLD,
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let cgroups = launch.cgroup_procs.iter().map(AsRawFd::as_raw_fd);
    let root = launch.root.as_raw_fd();
    if let Err(failed) = child::enter(&Raw, &launch.plan, cgroups, launch.pidfd, root) {
        report_failed(launch, failed);
        return Err(io::Error::from_raw_os_error(failed.errno));
    }
    let c2 = raw_fork();
    if c2 < 0 {
        let failed = report_errno(launch, Step::ForkPid);
        return Err(io::Error::from_raw_os_error(failed.errno));
    }
    if c2 == 0 {
        c2_main(launch);
    }
    // Close everything (std's exec-status pipe included, so spawn() returns now).
    close_range(3, u32::MAX);
    let mut status = 0;
    wait_pid(c2, &mut status, 0);
    exit(0);
}

/// C2: subreaper inside the PID namespace; runs the hook and kills its tree on request.
fn c2_main(launch: &Launch) -> ! {
    // SAFETY (whole function): raw system calls on locals and on fds of `launch`.
    unsafe {
        // Everything but the report pipe, the kill pipe and /proc (when the hook writes
        // LSM labels) is closed.
        let mut keep = [
            launch.report_w.as_raw_fd() as u32,
            launch.kill_r.as_raw_fd() as u32,
            launch
                .proc
                .as_ref()
                .map_or(u32::MAX, |fd| fd.as_raw_fd() as u32),
        ];
        keep.sort_unstable();
        let mut first = 3u32;
        for fd in keep {
            if fd == u32::MAX {
                break;
            }
            if fd > first {
                close_range(first, fd - 1);
            }
            first = fd.saturating_add(1);
        }
        close_range(first, u32::MAX);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            report_errno(launch, Step::Subreaper);
            exit(1);
        }
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut());
        let sfd = libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if sfd < 0 {
            report_errno(launch, Step::Signalfd);
            exit(1);
        }
        let c3 = raw_fork();
        if c3 < 0 {
            report_errno(launch, Step::ForkHook);
            exit(1);
        }
        if c3 == 0 {
            c3_main(launch);
        }
        let report_w = launch.report_w.as_raw_fd();
        let mut fds = [
            libc::pollfd {
                fd: launch.kill_r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            fds[0].revents = 0;
            fds[1].revents = 0;
            let r = libc::poll(fds.as_mut_ptr(), 2, -1);
            // Cannot wait for orders any more, or ordered to stop: kill the tree.
            if (r < 0 && Errno::last().0 != libc::EINTR) || fds[0].revents != 0 {
                kill_tree(c3);
                report::send(report_w, Record::Killed);
                exit(0);
            }
            let mut info = [0u8; 128];
            while libc::read(sfd, info.as_mut_ptr().cast(), info.len()) > 0 {}
            loop {
                let mut status = 0;
                let p = wait_pid(-1, &mut status, libc::WNOHANG);
                if p <= 0 {
                    break;
                }
                if p == c3 {
                    report::send(report_w, Record::Exited(status));
                    exit(0);
                }
            }
        }
    }
}

/// Kills the hook's process group and everything re-parented to us, until we have no
/// children left.
fn kill_tree(c3: libc::pid_t) {
    // SAFETY (whole function): kill/open/read/close/wait4 on locals.
    unsafe {
        let mut buf = [0u8; 4096];
        loop {
            libc::kill(-c3, libc::SIGKILL);
            libc::kill(c3, libc::SIGKILL);
            let fd = libc::open(
                c"/proc/thread-self/children".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                libc::close(fd);
                let mut cur: libc::pid_t = 0;
                let mut in_num = false;
                let end = if n > 0 { n as usize } else { 0 };
                for &ch in buf.iter().take(end).chain(std::iter::once(&b' ')) {
                    if ch.is_ascii_digit() {
                        cur = cur
                            .saturating_mul(10)
                            .saturating_add((ch - b'0') as libc::pid_t);
                        in_num = true;
                    } else if in_num {
                        libc::kill(-cur, libc::SIGKILL);
                        libc::kill(cur, libc::SIGKILL);
                        cur = 0;
                        in_num = false;
                    }
                }
            }
            let mut status = 0;
            if wait_pid(-1, &mut status, 0) < 0 {
                // ECHILD: nothing of the hook is left.
                return;
            }
        }
    }
}

/// C3: take on the container's identity and exec the command.
fn c3_main(launch: &Launch) -> ! {
    // SAFETY: sigprocmask/signal with a local set and plain integers.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let proc = launch.proc.as_ref().map_or(-1, AsRawFd::as_raw_fd);
    let failed = match child::become_hook(&Raw, &launch.plan, proc) {
        Ok(()) => child::exec(&Raw, &launch.plan),
        Err(failed) => failed,
    };
    report_failed(launch, failed);
    exit(127);
}
