//! Starting a command inside a running container: the engine of exec hooks.
//!
//! # Layout
//!
//! - [`plan`]: the pure part. [`Plan::gather`] reads the facts about the container's init
//!   (which namespaces differ from ours, its identity, its cgroups) and [`Plan::new`] decides
//!   every argument of every system call to come: namespace flags, `cgroup.procs` files,
//!   uid, gids, capability sets, no_new_privs, working directory, argument and environment
//!   arrays, candidate paths from the container's `PATH`, the compiled seccomp filter, the
//!   OOM score adjustment (see [`crate::ns::confinement`]) and the LSM label writes.
//! - [`child`]: which system calls the forked processes make, in which order, as sequences
//!   over the [`syscalls::Syscalls`] trait (unit-tested with a recording fake).
//! - [`syscalls`]: that trait and its real, allocation-free implementation.
//! - [`step`]: the steps, each with its report code and name.
//! - [`report`]: the records the forked processes send back over the report pipe.
//! - `launch`: opening descriptors, the forks, `pre_exec`, reading the report.
//!
//! # How
//!
//! Everything is prepared in the plugin before the fork: the [`Plan`], a pidfd of the
//! container's init, an `O_PATH` handle of its root directory, the `cgroup.procs` file of
//! every hierarchy it is a member of, and the pipes. The fork is made by
//! `std::process::Command` with a `pre_exec` closure that makes only raw system calls on that
//! prepared data (no allocation, no locks, no logging, every return value checked):
//!
//! 1. **C1** (the process `Command` forks): resets signal handlers, becomes non-dumpable,
//!    sets the container's OOM score adjustment (still in our user namespace), writes itself into every cgroup hierarchy of the container (v1: each one; v2: the
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
//! 3. **C3** (the hook): starts a new session, writes the container's SELinux label for the
//!    exec (see [`crate::ns::lsm`]), drops the bounding set to the container's,
//!    sets groups, gid and uid (keeping capabilities across the uid change), sets effective,
//!    permitted and inheritable sets with `capset`, raises the ambient set, sets
//!    no_new_privs when the container has it, changes to the container's working directory,
//!    writes the container's AppArmor profile for the exec, loads the container's seccomp
//!    filter (without no_new_privs: right after `setsid`,
//!    while it still may, as runc does) and `execve`s the first candidate from the container's `PATH` with the container's
//!    environment. stdin is `/dev/null`; stdout and stderr go to one pipe.
//!
//! Any failing step is reported with its [`Step`] code and errno over the report pipe and
//! nothing is executed: the command never runs on the host.
//!
//! # What is not applied
//!
//! - rlimits and the `umask` are inherited (as with `runc exec`), not set from the spec.
//! - Processes a hook leaves behind after it exits normally (daemons) are re-parented to
//!   the container's init, as with `runc exec`; only a timeout or cancellation kills them.

pub mod child;
mod launch;
pub mod plan;
pub mod report;
pub mod step;
pub mod syscalls;

pub use launch::{spawn, Running};
pub use plan::Plan;
pub use report::Ended;
pub use step::Step;
