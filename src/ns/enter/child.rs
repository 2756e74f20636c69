//! Which system calls the forked processes make, in which order, to enter the container and
//! become the hook: sequences over [`Syscalls`], so the order and the arguments are
//! unit-tested with the recording fake while production runs them with [`super::syscalls::Raw`]
//! (see there why that is allocation-free after the fork).

use std::os::fd::RawFd;

use super::plan::Plan;
use super::step::Step;
use super::syscalls::{Errno, Syscalls};

/// A step that failed, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed {
    pub step: Step,
    pub errno: i32,
}

trait At<T> {
    /// Names the step a failed call belongs to.
    fn at(self, step: Step) -> Result<T, Failed>;
}

impl<T> At<T> for Result<T, Errno> {
    fn at(self, step: Step) -> Result<T, Failed> {
        self.map_err(|Errno(errno)| Failed { step, errno })
    }
}

/// The first forked process, still in the plugin's namespaces: becomes non-dumpable (it
/// holds descriptors of the container), joins every cgroup of the container (`cgroup_procs`:
/// the open `cgroup.procs` files), enters all differing namespaces at once through the
/// init's pidfd, then takes the container's root directory (`root`: an `O_PATH` descriptor
/// of it). The PID namespace only applies to children: the caller forks next.
pub fn enter<S: Syscalls>(
    sys: &S,
    plan: &Plan,
    cgroup_procs: impl Iterator<Item = RawFd>,
    pidfd: RawFd,
    root: RawFd,
) -> Result<(), Failed> {
    sys.set_undumpable().at(Step::Dumpable)?;
    // Still in our own user namespace, where lowering the score is allowed; inherited by the
    // forks that follow, as runc sets it before entering the container.
    if let Some(adj) = &plan.oom_score_adj {
        sys.set_oom_score_adj(adj).at(Step::OomScoreAdj)?;
    }
    for procs in cgroup_procs {
        sys.join_cgroup(procs).at(Step::JoinCgroup)?;
    }
    if plan.ns_flags != 0 {
        sys.setns(pidfd, plan.ns_flags).at(Step::Setns)?;
    }
    sys.enter_root(root).at(Step::EnterRoot)
}

/// The hook process, before exec: a new session; the bounding set reduced to the
/// container's; groups, gid, then uid (capabilities kept across the uid change); the
/// effective, permitted and inheritable sets; the ambient set; no_new_privs when the
/// container has it; the working directory; the container's seccomp filter. Stops at the
/// first failure.
///
/// The filter goes where runc puts it: with no_new_privs, last (after no_new_privs, so the
/// kernel allows it without `CAP_SYS_ADMIN`, and the filter never sees our own set-up
/// calls); without no_new_privs, right after `setsid`, while the process still holds
/// `CAP_SYS_ADMIN` (loading a filter without no_new_privs needs it), before any privilege
/// is dropped.
pub fn become_hook<S: Syscalls>(sys: &S, plan: &Plan) -> Result<(), Failed> {
    sys.setsid().at(Step::Setsid)?;
    if let (Some(filter), false) = (&plan.seccomp, plan.no_new_privs) {
        sys.seccomp(filter).at(Step::Seccomp)?;
    }
    for cap in 0..=plan.last_cap {
        if plan.caps.bounding & (1u64 << cap) == 0 {
            sys.drop_bounding(cap).at(Step::DropBounding)?;
        }
    }
    sys.set_keepcaps(true).at(Step::KeepCaps)?;
    sys.setgroups(&plan.groups).at(Step::Setgroups)?;
    sys.setresgid(plan.gid).at(Step::Setresgid)?;
    sys.setresuid(plan.uid).at(Step::Setresuid)?;
    let caps = &plan.caps;
    sys.capset(caps.effective, caps.permitted, caps.inheritable)
        .at(Step::Capset)?;
    sys.clear_ambient().at(Step::Ambient)?;
    for cap in 0..=plan.last_cap {
        if caps.ambient & (1u64 << cap) != 0 {
            sys.raise_ambient(cap).at(Step::Ambient)?;
        }
    }
    sys.set_keepcaps(false).at(Step::KeepCaps)?;
    if plan.no_new_privs {
        sys.set_no_new_privs().at(Step::NoNewPrivs)?;
    }
    sys.chdir(&plan.cwd).at(Step::Chdir)?;
    if let (Some(filter), true) = (&plan.seccomp, plan.no_new_privs) {
        sys.seccomp(filter).at(Step::Seccomp)?;
    }
    Ok(())
}

/// Executes the first candidate that can be executed. Returns only when none could, with
/// the most telling errno: as `execvp`, a permission problem rather than "not found".
pub fn exec<S: Syscalls>(sys: &S, plan: &Plan) -> Failed {
    let mut best = libc::ENOENT;
    for candidate in &plan.candidates {
        let Errno(e) = sys.execve(candidate, &plan.argv, &plan.env);
        if e != libc::ENOENT && e != libc::ENOTDIR {
            best = e;
        }
    }
    Failed {
        step: Step::Exec,
        errno: best,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::confinement::Confinement;
    use crate::ns::enter::syscalls::fake::{Call, Recorder};
    use crate::ns::identity::{CapSets, Identity, Source};
    use crate::ns::namespace::NsKind;

    const NET_BIND_SERVICE: u32 = 10;
    const KILL: u32 = 5;

    fn plan(namespaces: Vec<NsKind>, no_new_privs: bool) -> Plan {
        let identity = Identity {
            uid: 1000,
            gid: 1001,
            groups: vec![1001, 2000],
            env: vec!["PATH=/usr/local/bin:/bin".into()],
            cwd: "/home/app".into(),
            caps: CapSets {
                bounding: (1 << KILL) | (1 << NET_BIND_SERVICE),
                effective: 1 << NET_BIND_SERVICE,
                permitted: 1 << NET_BIND_SERVICE,
                inheritable: 1 << NET_BIND_SERVICE,
                ambient: 1 << NET_BIND_SERVICE,
            },
            no_new_privs,
            cgroups: vec![],
            source: Source::Proc,
        };
        Plan::new(
            42,
            &identity,
            namespaces,
            &[],
            &["ls".to_string(), "-l".to_string()],
            12,
        )
        .unwrap()
    }

    #[test]
    fn entering_joins_cgroups_then_namespaces_then_root() {
        let sys = Recorder::default();
        let p = plan(vec![NsKind::Mount, NsKind::Pid, NsKind::Net], true);
        enter(&sys, &p, [7, 8].into_iter(), 3, 9).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::SetUndumpable,
                Call::JoinCgroup(7),
                Call::JoinCgroup(8),
                Call::Setns(
                    3,
                    libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET
                ),
                Call::EnterRoot(9),
            ]
        );
    }

    #[test]
    fn no_setns_when_no_namespace_differs() {
        let sys = Recorder::default();
        enter(&sys, &plan(vec![], true), std::iter::empty(), 3, 9).unwrap();
        assert_eq!(sys.calls(), vec![Call::SetUndumpable, Call::EnterRoot(9)]);
    }

    #[test]
    fn a_failed_setns_stops_before_the_root() {
        let flags = libc::CLONE_NEWNET;
        let sys = Recorder::failing(Call::Setns(3, flags), libc::EPERM);
        let failed = enter(&sys, &plan(vec![NsKind::Net], true), [7].into_iter(), 3, 9);
        assert_eq!(
            failed,
            Err(Failed {
                step: Step::Setns,
                errno: libc::EPERM
            })
        );
        assert_eq!(sys.calls().last(), Some(&Call::Setns(3, flags)));
        assert!(!sys.calls().contains(&Call::EnterRoot(9)));
    }

    #[test]
    fn identity_order_groups_gid_uid_caps_then_no_new_privs_and_cwd() {
        let sys = Recorder::default();
        become_hook(&sys, &plan(vec![], true)).unwrap();
        let mut want = vec![Call::Setsid];
        // last_cap 12: every capability up to it but KILL and NET_BIND_SERVICE is dropped
        want.extend(
            (0..=12)
                .filter(|c| *c != KILL && *c != NET_BIND_SERVICE)
                .map(Call::DropBounding),
        );
        want.extend([
            Call::SetKeepcaps(true),
            Call::Setgroups(vec![1001, 2000]),
            Call::Setresgid(1001),
            Call::Setresuid(1000),
            Call::Capset(1 << 10, 1 << 10, 1 << 10),
            Call::ClearAmbient,
            Call::RaiseAmbient(NET_BIND_SERVICE),
            Call::SetKeepcaps(false),
            Call::SetNoNewPrivs,
            Call::Chdir("/home/app".into()),
        ]);
        assert_eq!(sys.calls(), want);

        let sys = Recorder::default();
        become_hook(&sys, &plan(vec![], false)).unwrap();
        assert!(!sys.calls().contains(&Call::SetNoNewPrivs));
        assert_eq!(sys.calls().last(), Some(&Call::Chdir("/home/app".into())));
    }

    #[test]
    fn a_failed_uid_change_stops_before_capabilities() {
        let sys = Recorder::failing(Call::Setresuid(1000), libc::EPERM);
        assert_eq!(
            become_hook(&sys, &plan(vec![], true)),
            Err(Failed {
                step: Step::Setresuid,
                errno: libc::EPERM
            })
        );
        let calls = sys.calls();
        assert_eq!(calls.last(), Some(&Call::Setresuid(1000)));
        assert!(!calls.iter().any(|c| matches!(c, Call::Capset(..))));
        assert!(!calls.iter().any(|c| matches!(c, Call::Chdir(..))));

        let sys = Recorder::failing(Call::Chdir("/home/app".into()), libc::ENOENT);
        assert_eq!(
            become_hook(&sys, &plan(vec![], true)),
            Err(Failed {
                step: Step::Chdir,
                errno: libc::ENOENT
            })
        );
    }

    fn confined(no_new_privs: bool) -> (Plan, usize) {
        let profile: crate::ns::seccomp::Profile = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let filter = crate::ns::seccomp::compile(&profile).unwrap();
        let len = filter.program().len();
        let plan = plan(vec![], no_new_privs).confined(Confinement {
            seccomp: Some(std::sync::Arc::new(filter)),
            oom_score_adj: Some(-3),
        });
        (plan, len)
    }

    #[test]
    fn the_oom_score_is_set_first_in_our_own_namespaces() {
        let sys = Recorder::default();
        let (p, _) = confined(true);
        enter(&sys, &p, [7].into_iter(), 3, 9).unwrap();
        assert_eq!(
            sys.calls(),
            vec![
                Call::SetUndumpable,
                Call::OomScoreAdj("-3".into()),
                Call::JoinCgroup(7),
                Call::EnterRoot(9),
            ]
        );
        let sys = Recorder::failing(Call::OomScoreAdj("-3".into()), libc::EACCES);
        assert_eq!(
            enter(&sys, &p, [7].into_iter(), 3, 9),
            Err(Failed {
                step: Step::OomScoreAdj,
                errno: libc::EACCES
            })
        );
        assert!(!sys.calls().contains(&Call::EnterRoot(9)));
    }

    #[test]
    fn seccomp_is_last_with_no_new_privs_and_first_without() {
        let log = libc::SECCOMP_FILTER_FLAG_LOG;
        let sys = Recorder::default();
        let (p, len) = confined(true);
        become_hook(&sys, &p).unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls[calls.len() - 3..],
            [
                Call::SetNoNewPrivs,
                Call::Chdir("/home/app".into()),
                Call::Seccomp(len, log)
            ]
        );
        assert_eq!(
            calls
                .iter()
                .filter(|c| matches!(c, Call::Seccomp(..)))
                .count(),
            1
        );

        // without no_new_privs the filter needs CAP_SYS_ADMIN: before anything is dropped
        let sys = Recorder::default();
        let (p, len) = confined(false);
        become_hook(&sys, &p).unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls[..3],
            [Call::Setsid, Call::Seccomp(len, log), Call::DropBounding(0)]
        );
        assert_eq!(
            calls
                .iter()
                .filter(|c| matches!(c, Call::Seccomp(..)))
                .count(),
            1
        );
        assert_eq!(calls.last(), Some(&Call::Chdir("/home/app".into())));

        // a filter the kernel refuses stops everything: the command never runs unconfined
        let (p, len) = confined(true);
        let sys = Recorder::failing(Call::Seccomp(len, log), libc::EINVAL);
        assert_eq!(
            become_hook(&sys, &p),
            Err(Failed {
                step: Step::Seccomp,
                errno: libc::EINVAL
            })
        );
    }

    #[test]
    fn exec_tries_every_candidate_and_keeps_the_telling_errno() {
        let sys = Recorder::default();
        sys.exec_errnos
            .borrow_mut()
            .extend([libc::ENOENT, libc::EACCES]);
        let failed = exec(&sys, &plan(vec![], true));
        assert_eq!(
            sys.calls(),
            vec![
                Call::Execve("/usr/local/bin/ls".into()),
                Call::Execve("/bin/ls".into())
            ]
        );
        assert_eq!(
            failed,
            Failed {
                step: Step::Exec,
                errno: libc::EACCES
            }
        );

        let sys = Recorder::default();
        assert_eq!(exec(&sys, &plan(vec![], true)).errno, libc::ENOENT);
    }
}
