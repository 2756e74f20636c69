//! Starting a command inside a running container: the engine of exec hooks.
//!
//! # How
//!
//! Everything is prepared in the plugin before the fork: a pidfd of the container's init, an
//! `O_PATH` handle of its root directory, the `cgroup.procs` file of every hierarchy it is a
//! member of, the identity to take on, the argument and environment arrays and the list of
//! candidate paths from the container's `PATH`. The fork is made by `std::process::Command`
//! with a `pre_exec` closure that makes only raw system calls on that prepared data (no
//! allocation, no locks, no logging, every return value checked):
//!
//! 1. **C1** (the process `Command` forks): resets signal handlers, becomes non-dumpable,
//!    writes itself into every cgroup hierarchy of the container (v1: each one; v2: the
//!    unified one), enters all namespaces that differ from ours with a single
//!    `setns(pidfd, flags)` (user, mount, pid, net, ipc, uts, cgroup, time — atomic, and a
//!    recycled PID can never be entered), takes the container's root directory, then forks
//!    once more because a PID namespace only applies to children.
//! 2. **C2** (in the container's PID namespace, PID > 1): closes every file descriptor it
//!    does not need, becomes a child subreaper and forks the hook process. It waits for the
//!    hook's exit and reports its status. When the plugin closes the kill pipe (timeout,
//!    cancellation, or the plugin itself died) it kills the hook's process group and every
//!    process that was re-parented to it (daemonising children land on C2 because it is the
//!    subreaper), until none is left.
//! 3. **C3** (the hook): starts a new session, drops the bounding set to the container's,
//!    sets groups, gid and uid (keeping capabilities across the uid change), sets effective,
//!    permitted and inheritable sets with `capset`, raises the ambient set, sets
//!    no_new_privs when the container has it, changes to the container's working directory
//!    and `execve`s the first candidate from the container's `PATH` with the container's
//!    environment. stdin is `/dev/null`; stdout and stderr go to one pipe.
//!
//! Any failing step is reported with its name and errno over a report pipe and nothing is
//! executed: the command never runs on the host.
//!
//! # What is not applied
//!
//! - seccomp: the container's seccomp filter is **not** installed for the hook.
//! - LSM labels: the AppArmor profile and the SELinux process label are **not** applied.
//! - rlimits, the OOM score adjustment, the container's `umask` and the hostname-related
//!   `/etc/hosts` view are inherited from the plugin / the namespaces, not set from the spec.
//! - Processes a hook leaves behind after it exits normally (daemons) are re-parented to
//!   the container's init, as with `runc exec`; only a timeout or cancellation kills them.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use super::identity::Identity;
use super::namespace::NsKind;
use super::pidfd::PidFd;
use super::Error;

/// Names of the steps, indexed by the step number sent over the report pipe.
const STEPS: [&str; 19] = [
    "join cgroup",
    "setns",
    "enter root directory",
    "fork into pid namespace",
    "become subreaper",
    "signalfd",
    "fork hook process",
    "drop bounding capabilities",
    "setgroups",
    "setresgid",
    "setresuid",
    "capset",
    "ambient capabilities",
    "no_new_privs",
    "chdir to working directory",
    "exec (not found or not executable in the container's PATH)",
    "keepcaps",
    "dumpable",
    "setsid",
];
const S_CGROUP: u32 = 0;
const S_SETNS: u32 = 1;
const S_ROOT: u32 = 2;
const S_FORK_PID: u32 = 3;
const S_SUBREAPER: u32 = 4;
const S_SIGNALFD: u32 = 5;
const S_FORK_HOOK: u32 = 6;
const S_BOUNDING: u32 = 7;
const S_SETGROUPS: u32 = 8;
const S_SETGID: u32 = 9;
const S_SETUID: u32 = 10;
const S_CAPSET: u32 = 11;
const S_AMBIENT: u32 = 12;
const S_NNP: u32 = 13;
const S_CHDIR: u32 = 14;
const S_EXEC: u32 = 15;
const S_KEEPCAPS: u32 = 16;
const S_DUMPABLE: u32 = 17;
const S_SETSID: u32 = 18;

const R_STEP_FAILED: u32 = 1;
const R_EXITED: u32 = 2;
const R_KILLED: u32 = 3;

/// How a hook process ended, as reported by C2/C3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The command ran and exited with this code.
    Exited(i32),
    /// The command ran and was killed by this signal.
    Signaled(i32),
    /// Entering the container or starting the command failed at `step`; nothing ran.
    StepFailed { step: &'static str, errno: i32 },
    /// The tree was killed on request (timeout or cancellation).
    Killed,
    /// No report: the hook's helpers were killed from outside (e.g. the container's PID
    /// namespace went away).
    Vanished,
}

/// Everything the forked processes need, prepared before the fork.
struct Plan {
    pidfd: RawFd,
    ns_flags: libc::c_int,
    root: OwnedFd,
    cgroup_procs: Vec<OwnedFd>,
    report_w: OwnedFd,
    kill_r: OwnedFd,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    bounding: u64,
    effective: u64,
    permitted: u64,
    inheritable: u64,
    ambient: u64,
    last_cap: u32,
    no_new_privs: bool,
    cwd: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    candidates: Vec<CString>,
}

// SAFETY: the raw pointers point into the CStrings owned by the same Plan, which is never
// mutated after construction; sharing it between threads (as `pre_exec` requires) only ever
// reads them.
unsafe impl Send for Plan {}
// SAFETY: see above: immutable after construction.
unsafe impl Sync for Plan {}

/// A hook process started inside a container.
pub struct Running {
    /// C1; it exits once the hook and its helper have ended.
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
        read_report(&self.report)
    }
}

fn cstring(what: &str, pid: u32, s: &[u8]) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Invalid {
        pid,
        reason: format!("{what} contains a NUL byte"),
    })
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

/// Candidate paths for `arg0` from the container's `PATH` (as `execvp` would try them).
pub fn candidates(arg0: &str, path_var: &str) -> Vec<String> {
    if arg0.contains('/') {
        return vec![arg0.to_string()];
    }
    path_var
        .split(':')
        .map(|dir| {
            let dir = if dir.is_empty() { "." } else { dir };
            format!("{}/{arg0}", dir.trim_end_matches('/'))
        })
        .collect()
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// Starts `argv` inside the container whose init is held by `container`, with `identity`,
/// inside the hierarchies at `cgroup_dirs`, entering the namespaces `enter`.
/// `output` becomes the hook's stdout and stderr.
pub fn spawn(
    container: &PidFd,
    identity: &Identity,
    cgroup_dirs: &[PathBuf],
    enter: &[NsKind],
    argv: &[String],
    output: OwnedFd,
) -> Result<Running, Error> {
    let pid = container.pid();
    let Some(arg0) = argv.first() else {
        return Err(Error::Invalid {
            pid,
            reason: "empty command".into(),
        });
    };
    let root_path = PathBuf::from(format!("/proc/{pid}/root"));
    let root = open_path(&root_path, libc::O_PATH | libc::O_DIRECTORY)?;
    let mut cgroup_procs = Vec::new();
    for dir in cgroup_dirs {
        cgroup_procs.push(open_path(&dir.join("cgroup.procs"), libc::O_WRONLY)?);
    }
    if !container.is_alive() {
        return Err(Error::ProcessGone { pid });
    }
    let (report_r, report_w) = pipe_cloexec()?;
    let (kill_r, kill_w) = pipe_cloexec()?;
    set_nonblocking(&report_r)?;
    let argv_c = argv
        .iter()
        .map(|a| cstring("command", pid, a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env_c = identity
        .env
        .iter()
        .map(|e| cstring("environment", pid, e.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    // Like `runc exec`: a process without HOME gets the home directory of its uid from the
    // container's /etc/passwd, else "/".
    if !identity.env.iter().any(|e| e.starts_with("HOME=")) {
        let home = read_in_root(&root, "etc/passwd", 256 * 1024)
            .ok()
            .and_then(|text| home_of(&text, identity.uid))
            .unwrap_or_else(|| "/".to_string());
        env_c.push(cstring(
            "environment",
            pid,
            format!("HOME={home}").as_bytes(),
        )?);
    }
    let candidates = candidates(arg0, identity.path_var())
        .iter()
        .map(|c| cstring("command path", pid, c.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let cwd = if identity.cwd.is_empty() {
        "/"
    } else {
        &identity.cwd
    };
    let plan = Arc::new(Plan {
        pidfd: container.as_raw_fd(),
        ns_flags: enter.iter().fold(0, |f, k| f | k.clone_flag()),
        root,
        cgroup_procs,
        report_w,
        kill_r,
        uid: identity.uid,
        gid: identity.gid,
        groups: identity.groups.clone(),
        bounding: identity.caps.bounding,
        effective: identity.caps.effective,
        permitted: identity.caps.permitted,
        inheritable: identity.caps.inheritable,
        ambient: identity.caps.ambient,
        last_cap: last_cap(),
        no_new_privs: identity.no_new_privs,
        cwd: cstring("working directory", pid, cwd.as_bytes())?,
        _argv: argv_c,
        argv_ptrs,
        _envp: env_c,
        envp_ptrs,
        candidates,
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
    let child_plan = Arc::clone(&plan);
    // SAFETY: the closure runs in the forked child and only makes raw system calls on data
    // prepared above (see `c1_main`); it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || c1_main(&child_plan));
    }
    let spawned = cmd.spawn();
    drop(cmd);
    // Our copies of the child's ends must go, so EOFs mean what they should.
    drop(plan);
    match spawned {
        Ok(child) => Ok(Running {
            child,
            report: report_r,
            kill: Some(kill_w),
        }),
        Err(source) => match read_report(&report_r) {
            Ended::StepFailed { step, errno } => Err(Error::Enter {
                pid,
                step,
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

fn read_report(fd: &OwnedFd) -> Ended {
    let mut ended = Ended::Vanished;
    let mut rec = [0u8; 12];
    loop {
        // SAFETY: reading into a local buffer of the given size.
        let n = unsafe { libc::read(fd.as_raw_fd(), rec.as_mut_ptr().cast(), rec.len()) };
        if n != rec.len() as isize {
            return ended;
        }
        let word = |i: usize| u32::from_ne_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
        let (kind, a, b) = (word(0), word(4), word(8) as i32);
        let this = match kind {
            R_STEP_FAILED => Ended::StepFailed {
                step: STEPS.get(a as usize).copied().unwrap_or("unknown step"),
                errno: b,
            },
            R_EXITED => {
                let status = a as libc::c_int;
                if libc::WIFSIGNALED(status) {
                    Ended::Signaled(libc::WTERMSIG(status))
                } else {
                    Ended::Exited(libc::WEXITSTATUS(status))
                }
            }
            R_KILLED => Ended::Killed,
            _ => continue,
        };
        // A step failure is the most telling record; keep it once seen.
        if !matches!(ended, Ended::StepFailed { .. }) {
            ended = this;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Code below runs in forked children: raw system calls on prepared data only.
// ---------------------------------------------------------------------------------------

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn report(plan: &Plan, kind: u32, a: u32, b: i32) {
    let mut rec = [0u8; 12];
    rec[0..4].copy_from_slice(&kind.to_ne_bytes());
    rec[4..8].copy_from_slice(&a.to_ne_bytes());
    rec[8..12].copy_from_slice(&b.to_ne_bytes());
    // SAFETY: a write of a local buffer; a failure cannot be reported anywhere else.
    unsafe {
        libc::write(plan.report_w.as_raw_fd(), rec.as_ptr().cast(), rec.len());
    }
}

/// Reports a failed step and turns it into the error `pre_exec` returns.
fn fail(plan: &Plan, step: u32) -> io::Error {
    let e = errno();
    report(plan, R_STEP_FAILED, step, e);
    io::Error::from_raw_os_error(e)
}

/// Reports a failed step and exits (in processes that must not return into std).
fn fail_exit(plan: &Plan, step: u32, code: i32) -> ! {
    let _ = fail(plan, step);
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
        if r < 0 && errno() == libc::EINTR {
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
fn c1_main(plan: &Plan) -> io::Result<()> {
    // SAFETY (whole function): raw system calls with arguments that are plain integers or
    // point into `plan`, which outlives this process's use of it.
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
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(fail(plan, S_DUMPABLE));
        }
        for fd in &plan.cgroup_procs {
            if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(fail(plan, S_CGROUP));
            }
        }
        if plan.ns_flags != 0 && libc::setns(plan.pidfd, plan.ns_flags) != 0 {
            return Err(fail(plan, S_SETNS));
        }
        if libc::fchdir(plan.root.as_raw_fd()) != 0 || libc::chroot(c".".as_ptr()) != 0 {
            return Err(fail(plan, S_ROOT));
        }
        let c2 = raw_fork();
        if c2 < 0 {
            return Err(fail(plan, S_FORK_PID));
        }
        if c2 == 0 {
            c2_main(plan);
        }
        // Close everything (std's exec-status pipe included, so spawn() returns now).
        close_range(3, u32::MAX);
        let mut status = 0;
        wait_pid(c2, &mut status, 0);
        libc::_exit(0);
    }
}

/// C2: subreaper inside the PID namespace; runs the hook and kills its tree on request.
fn c2_main(plan: &Plan) -> ! {
    // SAFETY (whole function): raw system calls on locals and on fds/strings of `plan`.
    unsafe {
        let a = plan.report_w.as_raw_fd() as u32;
        let b = plan.kill_r.as_raw_fd() as u32;
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        close_range(3, lo.saturating_sub(1));
        close_range(lo + 1, hi - 1);
        close_range(hi + 1, u32::MAX);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            fail_exit(plan, S_SUBREAPER, 1);
        }
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut());
        let sfd = libc::signalfd(-1, &mask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if sfd < 0 {
            fail_exit(plan, S_SIGNALFD, 1);
        }
        let c3 = raw_fork();
        if c3 < 0 {
            fail_exit(plan, S_FORK_HOOK, 1);
        }
        if c3 == 0 {
            c3_main(plan);
        }
        let mut fds = [
            libc::pollfd {
                fd: plan.kill_r.as_raw_fd(),
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
            if r < 0 && errno() != libc::EINTR {
                // Cannot wait for orders any more: be safe, kill the tree.
                kill_tree(c3);
                report(plan, R_KILLED, 0, 0);
                libc::_exit(0);
            }
            if fds[0].revents != 0 {
                kill_tree(c3);
                report(plan, R_KILLED, 0, 0);
                libc::_exit(0);
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
                    report(plan, R_EXITED, status as u32, 0);
                    libc::_exit(0);
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
fn c3_main(plan: &Plan) -> ! {
    // SAFETY (whole function): raw system calls on locals and on data of `plan`.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if libc::setsid() < 0 {
            fail_exit(plan, S_SETSID, 127);
        }
        for cap in 0..=plan.last_cap {
            if plan.bounding & (1u64 << cap) == 0
                && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            {
                fail_exit(plan, S_BOUNDING, 127);
            }
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0 {
            fail_exit(plan, S_KEEPCAPS, 127);
        }
        if libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()) != 0 {
            fail_exit(plan, S_SETGROUPS, 127);
        }
        if libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid) != 0 {
            fail_exit(plan, S_SETGID, 127);
        }
        if libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid) != 0 {
            fail_exit(plan, S_SETUID, 127);
        }
        #[repr(C)]
        struct CapHeader {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct CapData {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let header = CapHeader {
            version: 0x2008_0522,
            pid: 0,
        };
        let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
        let data = [false, true].map(|hi| CapData {
            effective: half(plan.effective, hi),
            permitted: half(plan.permitted, hi),
            inheritable: half(plan.inheritable, hi),
        });
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            fail_exit(plan, S_CAPSET, 127);
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail_exit(plan, S_AMBIENT, 127);
        }
        for cap in 0..=plan.last_cap {
            if plan.ambient & (1u64 << cap) != 0
                && libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                ) != 0
            {
                fail_exit(plan, S_AMBIENT, 127);
            }
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0 {
            fail_exit(plan, S_KEEPCAPS, 127);
        }
        if plan.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail_exit(plan, S_NNP, 127);
        }
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            fail_exit(plan, S_CHDIR, 127);
        }
        let mut best = libc::ENOENT;
        for cand in &plan.candidates {
            libc::execve(
                cand.as_ptr(),
                plan.argv_ptrs.as_ptr(),
                plan.envp_ptrs.as_ptr(),
            );
            let e = errno();
            // as execvp: a permission problem is more telling than "not found"
            if e != libc::ENOENT && e != libc::ENOTDIR {
                best = e;
            }
        }
        report(plan, R_STEP_FAILED, S_EXEC, best);
        libc::_exit(127);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_path() {
        assert_eq!(candidates("ls", "/a:/b/:"), vec!["/a/ls", "/b/ls", "./ls"]);
        assert_eq!(candidates("/bin/ls", "/a"), vec!["/bin/ls"]);
        assert_eq!(candidates("./x", "/a"), vec!["./x"]);
    }

    #[test]
    fn steps_have_names() {
        assert_eq!(STEPS[S_SETNS as usize], "setns");
        assert_eq!(STEPS[S_SETSID as usize], "setsid");
    }
}

/// Reads a file of the container, resolving `path` (and every symlink on the way) inside
/// the container's root `root`, never on the host; at most `limit` bytes.
fn read_in_root(root: &OwnedFd, path: &str, limit: usize) -> io::Result<String> {
    use std::io::Read;
    let c = CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
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
        return Err(io::Error::last_os_error());
    }
    // SAFETY: freshly opened by the kernel for us, owned by nobody else.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
    if !file.metadata()?.is_file() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut text = String::new();
    file.take(limit as u64).read_to_string(&mut text)?;
    Ok(text)
}

/// The home directory of `uid` in passwd(5) text.
fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2].parse::<u32>().ok() == Some(uid) && !fields[5].is_empty())
            .then(|| fields[5].to_string())
    })
}

#[cfg(test)]
mod home_tests {
    use super::home_of;

    #[test]
    fn home_from_passwd() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/srv/web:/bin/false\nbad line\n";
        assert_eq!(home_of(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_of(passwd, 1000).as_deref(), Some("/srv/web"));
        assert_eq!(home_of(passwd, 7), None);
    }
}
