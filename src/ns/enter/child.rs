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

/// The hook process, before exec: a new session; the container's SELinux label for the
/// exec; the bounding set reduced to the container's; groups, gid, then uid (capabilities
/// kept across the uid change); the effective, permitted and inheritable sets; the ambient
/// set; no_new_privs when the container has it; the working directory; the container's
/// AppArmor profile for the exec; the container's seccomp filter. Stops at the first
/// failure. `proc` is an open `/proc` of the plugin, for the LSM writes (unused without).
///
/// The filter goes where runc puts it: with no_new_privs, last (after no_new_privs, so the
/// kernel allows it without `CAP_SYS_ADMIN`, and the filter never sees our own set-up
/// calls); without no_new_privs, right after `setsid` and the SELinux label, while the
/// process still holds `CAP_SYS_ADMIN` (loading a filter without no_new_privs needs it),
/// before any privilege is dropped. The LSM labels go where `runc exec` writes them: the
/// SELinux label before the first filter and the identity change, the AppArmor profile
/// after the identity change and before the last filter.
pub fn become_hook<S: Syscalls>(sys: &S, plan: &Plan, proc: RawFd) -> Result<(), Failed> {
    sys.setsid().at(Step::Setsid)?;
    if let Some(label) = &plan.lsm.selinux {
        sys.write_attr(proc, label).at(Step::SelinuxLabel)?;
    }
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
    if let Some(profile) = &plan.lsm.apparmor {
        sys.write_attr(proc, profile).at(Step::AppArmorProfile)?;
    }
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
    use std::path::Path;

    use crate::ns::confinement::Confinement;
    use crate::ns::enter::syscalls::fake::{Call, Recorder};
    use crate::ns::enter::syscalls::Raw;
    use crate::ns::identity::{CapSets, Identity, Source};
    use crate::ns::lsm;
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
        become_hook(&sys, &plan(vec![], true), 5).unwrap();
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
        become_hook(&sys, &plan(vec![], false), 5).unwrap();
        assert!(!sys.calls().contains(&Call::SetNoNewPrivs));
        assert_eq!(sys.calls().last(), Some(&Call::Chdir("/home/app".into())));
    }

    #[test]
    fn a_failed_uid_change_stops_before_capabilities() {
        let sys = Recorder::failing(Call::Setresuid(1000), libc::EPERM);
        assert_eq!(
            become_hook(&sys, &plan(vec![], true), 5),
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
            become_hook(&sys, &plan(vec![], true), 5),
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
            labels: None,
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
        become_hook(&sys, &p, 5).unwrap();
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
        become_hook(&sys, &p, 5).unwrap();
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
            become_hook(&sys, &p, 5),
            Err(Failed {
                step: Step::Seccomp,
                errno: libc::EINVAL
            })
        );
    }

    fn labelled(no_new_privs: bool) -> Plan {
        let host = lsm::Host {
            apparmor: Some(true),
            selinux: true,
        };
        let labels = lsm::Labels {
            apparmor_profile: "cri-containerd.apparmor.d".into(),
            selinux_label: "system_u:system_r:container_t:s0".into(),
        };
        let writes = lsm::Writes::decide(&host, &labels, Path::new("/proc")).unwrap();
        confined(no_new_privs).0.labelled(writes)
    }

    fn selinux_write() -> Call {
        Call::WriteAttr(
            5,
            "thread-self/attr/exec".into(),
            "system_u:system_r:container_t:s0".into(),
        )
    }

    fn apparmor_write() -> Call {
        Call::WriteAttr(
            5,
            "thread-self/attr/apparmor/exec".into(),
            "exec cri-containerd.apparmor.d".into(),
        )
    }

    #[test]
    fn lsm_labels_are_written_where_runc_exec_writes_them() {
        let log = libc::SECCOMP_FILTER_FLAG_LOG;
        let position = |calls: &[Call], want: &Call| calls.iter().position(|c| c == want);
        for no_new_privs in [true, false] {
            let sys = Recorder::default();
            let p = labelled(no_new_privs);
            let len = p.seccomp.as_ref().unwrap().program().len();
            become_hook(&sys, &p, 5).unwrap();
            let calls = sys.calls();
            let at = |want: &Call| position(&calls, want).unwrap();
            // SELinux: right after setsid, before any filter and any identity change
            assert_eq!(calls[..2], [Call::Setsid, selinux_write()]);
            // AppArmor: after the identity, no_new_privs and the working directory
            let apparmor = at(&apparmor_write());
            assert!(apparmor > at(&Call::Setresuid(1000)));
            assert!(apparmor > at(&Call::Chdir("/home/app".into())));
            assert!(apparmor > at(&Call::Capset(1 << 10, 1 << 10, 1 << 10)));
            let seccomp = at(&Call::Seccomp(len, log));
            if no_new_privs {
                // the filter stays last
                assert!(apparmor > at(&Call::SetNoNewPrivs));
                assert_eq!(seccomp, calls.len() - 1);
                assert_eq!(apparmor, calls.len() - 2);
            } else {
                // the filter right after the SELinux label; AppArmor last
                assert_eq!(seccomp, 2);
                assert_eq!(apparmor, calls.len() - 1);
            }
            assert_eq!(
                calls
                    .iter()
                    .filter(|c| matches!(c, Call::WriteAttr(..)))
                    .count(),
                2
            );
        }

        // a failed write stops everything: the command never runs without its label
        for (failing, step) in [
            (selinux_write(), Step::SelinuxLabel),
            (apparmor_write(), Step::AppArmorProfile),
        ] {
            let sys = Recorder::failing(failing.clone(), libc::EACCES);
            assert_eq!(
                become_hook(&sys, &labelled(true), 5),
                Err(Failed {
                    step,
                    errno: libc::EACCES
                })
            );
            let calls = sys.calls();
            assert_eq!(calls.last(), Some(&failing));
            assert!(!calls.iter().any(|c| matches!(c, Call::Seccomp(..))));
        }
    }

    /// The whole decision and the real writes, against a fake `/proc`: every node (LSM on or
    /// off) with every spec (label set or empty), the write succeeding or failing.
    #[test]
    fn lsm_writes_against_a_fake_proc() {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;

        let set = lsm::Labels {
            apparmor_profile: "cri-containerd.apparmor.d".into(),
            selinux_label: "system_u:system_r:container_t:s0:c1,c2".into(),
        };
        let empty = lsm::Labels::default();
        for lsm_on in [false, true] {
            for labels in [&set, &empty] {
                for write_ok in [true, false] {
                    let case = format!("lsm {lsm_on}, label {:?}, write ok {write_ok}", labels);
                    let dir = tempfile::tempdir().unwrap();
                    let attr = dir.path().join("thread-self/attr");
                    std::fs::create_dir_all(attr.join("apparmor")).unwrap();
                    if write_ok {
                        std::fs::write(attr.join("exec"), "").unwrap();
                        std::fs::write(attr.join("apparmor/exec"), "").unwrap();
                    }
                    let host = lsm::Host {
                        apparmor: lsm_on.then_some(true),
                        selinux: lsm_on,
                    };
                    let decided = lsm::Writes::decide(&host, labels, dir.path());
                    if !lsm_on && !labels.apparmor_profile.is_empty() {
                        // a label for an LSM the node does not have: nothing is forked
                        assert!(decided.is_err(), "{case}");
                        continue;
                    }
                    let writes = decided.unwrap();
                    assert_eq!(writes.any(), !labels.apparmor_profile.is_empty(), "{case}");
                    let c = std::ffi::CString::new(writes.proc.as_os_str().as_bytes()).unwrap();
                    // SAFETY: open of a valid C string; the fd is owned below.
                    let fd = unsafe {
                        libc::open(
                            c.as_ptr(),
                            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                        )
                    };
                    assert!(fd >= 0);
                    // SAFETY: just opened, owned by nobody else.
                    let proc = unsafe { OwnedFd::from_raw_fd(fd) };
                    let results: Vec<_> = [&writes.selinux, &writes.apparmor]
                        .into_iter()
                        .flatten()
                        .map(|w| Raw.write_attr(proc.as_raw_fd(), w))
                        .collect();
                    if !writes.any() {
                        assert!(results.is_empty(), "{case}");
                        continue;
                    }
                    if write_ok {
                        assert!(results.iter().all(Result::is_ok), "{case}: {results:?}");
                        assert_eq!(
                            std::fs::read_to_string(attr.join("exec")).unwrap(),
                            "system_u:system_r:container_t:s0:c1,c2",
                            "{case}"
                        );
                        assert_eq!(
                            std::fs::read_to_string(attr.join("apparmor/exec")).unwrap(),
                            "exec cri-containerd.apparmor.d",
                            "{case}"
                        );
                    } else {
                        assert_eq!(results.len(), 2, "{case}");
                        for r in results {
                            assert_eq!(r, Err(Errno(libc::ENOENT)), "{case}");
                        }
                    }
                }
            }
        }
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
