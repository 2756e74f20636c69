//! The container's LSM labels (the OCI spec's `process.apparmorProfile` and
//! `process.selinuxLabel`), applied to an exec hook as `runc exec` applies them: written to
//! the hook process's own `attr/exec` files before `execve`, so the kernel puts the command
//! into the container's profile or domain as it starts.
//!
//! What runc writes, and where:
//!
//! - AppArmor: `exec <profile>` (what libapparmor's `aa_change_onexec` writes) to
//!   `/proc/thread-self/attr/apparmor/exec`, or to `/proc/thread-self/attr/exec` on kernels
//!   without the per-LSM directory; after the identity change, before the seccomp filter
//!   that is loaded last. An empty profile writes nothing.
//! - SELinux: the label itself to `/proc/thread-self/attr/exec`, before the seccomp filter
//!   that is loaded first (without no_new_privs) and before the identity change. An empty
//!   label writes nothing (runc writes the empty string, which resets a label nobody set
//!   in a freshly forked process: the same).
//!
//! When the host does not have the LSM: runc refuses a container with an SELinux label on a
//! host without SELinux ("selinux label is specified in config, but selinux is disabled or
//! not supported"), and its AppArmor write fails on a host without AppArmor. Either way the
//! process never starts; so here the hook fails, before any fork, saying why. A spec that
//! names no label runs on any host.
//!
//! Whether the host has the LSM, as runc (and go-selinux) decide it:
//!
//! - AppArmor: `/sys/module/apparmor/parameters/enabled` starts with `Y`. runc also wants
//!   securityfs at `/sys/kernel/security`; that only says where securityfs is mounted (a
//!   plugin running in a pod has none), and runc's own write never asks.
//! - SELinux: a read-write `selinuxfs` is mounted (`/proc/filesystems` lists it and
//!   `/proc/self/mountinfo` has one) and our own label (`/proc/self/attr/current`) is not
//!   `kernel`.
//!
//! The writes go through a descriptor of the plugin's own `/proc`, opened before the fork:
//! a container cannot redirect them by mounting something over its `/proc` (the hook
//! process is visible in the plugin's PID namespace, so `thread-self` names it there).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::sys::{RealSys, Sys};

/// Where `/proc` and `/sys` are (injected by tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Roots {
    /// This machine's.
    pub fn host() -> Roots {
        Roots {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

/// The LSMs this node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Host {
    /// `None`: no AppArmor. `Some(true)`: the kernel has `attr/apparmor/`.
    pub apparmor: Option<bool>,
    pub selinux: bool,
}

impl Host {
    /// Reads what the node has, from `roots`.
    pub fn detect(sys: &dyn Sys, roots: &Roots) -> Host {
        let apparmor_on = sys
            .read(&roots.sys.join("module/apparmor/parameters/enabled"))
            .is_ok_and(|b| b.first() == Some(&b'Y'));
        let apparmor = apparmor_on.then(|| {
            sys.inode(&roots.proc.join("self/attr/apparmor/exec"))
                .is_ok()
        });
        Host {
            apparmor,
            selinux: selinux_enabled(sys, &roots.proc),
        }
    }

    /// This node's, read once.
    pub fn this_node() -> Host {
        static HOST: OnceLock<Host> = OnceLock::new();
        *HOST.get_or_init(|| Host::detect(&RealSys, &Roots::host()))
    }
}

fn selinux_enabled(sys: &dyn Sys, proc: &Path) -> bool {
    let listed = sys
        .read(&proc.join("filesystems"))
        .is_ok_and(|b| b.windows(11).any(|w| w == b"\tselinuxfs\n"));
    if !listed {
        return false;
    }
    let mounted = sys.read(&proc.join("self/mountinfo")).is_ok_and(|b| {
        String::from_utf8_lossy(&b).lines().any(|line| {
            let Some((before, after)) = line.split_once(" - ") else {
                return false;
            };
            let read_only = before
                .split(' ')
                .nth(5)
                .is_some_and(|opts| opts.split(',').any(|o| o == "ro"));
            after.split(' ').next() == Some("selinuxfs") && !read_only
        })
    });
    mounted
        && sys
            .read(&proc.join("self/attr/current"))
            .is_ok_and(|b| attr_text(&b) != "kernel")
}

/// The text of an `attr` file: up to the first NUL, without surrounding white space.
fn attr_text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim().to_string()
}

/// The labels a container's processes run with (empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub apparmor_profile: String,
    pub selinux_label: String,
}

impl Labels {
    /// The labels the container's init runs with, read from `/proc/<pid>/attr` (for when its
    /// spec cannot be read). Only the LSMs the node has are asked.
    pub fn of_process(sys: &dyn Sys, proc: &Path, pid: u32, host: &Host) -> Result<Labels, String> {
        let read = |rel: &str| -> Result<String, String> {
            let path = proc.join(format!("{pid}/{rel}"));
            sys.read(&path)
                .map(|b| attr_text(&b))
                .map_err(|e| format!("reading {}: {e}", path.display()))
        };
        let mut labels = Labels::default();
        if let Some(per_lsm) = host.apparmor {
            let current = read(if per_lsm {
                "attr/apparmor/current"
            } else {
                "attr/current"
            })?;
            // "name (mode)", or "unconfined"
            let name = match current.rsplit_once(" (") {
                Some((name, mode)) if mode.ends_with(')') => name,
                _ => current.as_str(),
            };
            if name != "unconfined" {
                labels.apparmor_profile = name.to_string();
            }
        }
        if host.selinux {
            labels.selinux_label = read("attr/current")?;
        }
        Ok(labels)
    }
}

/// One write to an `attr` file of the hook process: the path under `/proc` and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrWrite {
    pub path: CString,
    pub value: CString,
}

/// The writes an exec hook makes before `execve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Writes {
    /// Where `/proc` is (opened by the plugin before the fork when there is a write).
    pub proc: PathBuf,
    /// To be written early (before the first seccomp filter and the identity change).
    pub selinux: Option<AttrWrite>,
    /// To be written late (after the identity change, before the last seccomp filter).
    pub apparmor: Option<AttrWrite>,
}

impl Writes {
    /// Whether anything is written (and `/proc` must be opened).
    pub fn any(&self) -> bool {
        self.selinux.is_some() || self.apparmor.is_some()
    }

    /// Decides the writes of `labels` on a node that has `host`'s LSMs, `/proc` being at
    /// `proc`. Fails, saying why, when a label is named for an LSM the node does not have.
    pub fn decide(host: &Host, labels: &Labels, proc: &Path) -> Result<Writes, String> {
        let cstring = |what: &str, s: String| {
            CString::new(s).map_err(|_| format!("the {what} contains a NUL byte"))
        };
        let apparmor = match (labels.apparmor_profile.as_str(), host.apparmor) {
            ("", _) => None,
            (profile, None) => {
                return Err(format!(
                    "the container's AppArmor profile {profile:?} cannot be applied: \
                     AppArmor is not enabled on this node"
                ))
            }
            (profile, Some(per_lsm)) => Some(AttrWrite {
                path: cstring(
                    "path",
                    if per_lsm {
                        "thread-self/attr/apparmor/exec".into()
                    } else {
                        "thread-self/attr/exec".into()
                    },
                )?,
                value: cstring("AppArmor profile", format!("exec {profile}"))?,
            }),
        };
        let selinux = match (labels.selinux_label.as_str(), host.selinux) {
            ("", _) => None,
            (label, false) => {
                return Err(format!(
                    "the container's SELinux label {label:?} cannot be applied: SELinux is \
                     disabled or not supported on this node"
                ))
            }
            (label, true) => Some(AttrWrite {
                path: cstring("path", "thread-self/attr/exec".into())?,
                value: cstring("SELinux label", label.to_string())?,
            }),
        };
        Ok(Writes {
            proc: proc.to_owned(),
            selinux,
            apparmor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::sys::FakeSys;

    fn roots() -> Roots {
        Roots {
            proc: "/fake/proc".into(),
            sys: "/fake/sys".into(),
        }
    }

    const MOUNTINFO_SELINUX: &str =
        "22 1 0:21 / /sys/fs/selinux rw,relatime - selinuxfs selinuxfs rw\n";

    #[test]
    fn the_host_is_read_as_runc_reads_it() {
        let none = FakeSys::default();
        assert_eq!(Host::detect(&none, &roots()), Host::default());

        let aa = |enabled: &str| {
            FakeSys::default().file("/fake/sys/module/apparmor/parameters/enabled", enabled)
        };
        assert_eq!(Host::detect(&aa("N\n"), &roots()).apparmor, None);
        assert_eq!(Host::detect(&aa("Y\n"), &roots()).apparmor, Some(false));
        let per_lsm = aa("Y\n").inode("/fake/proc/self/attr/apparmor/exec", 1, 2);
        assert_eq!(Host::detect(&per_lsm, &roots()).apparmor, Some(true));

        let se = |filesystems: &str, mountinfo: &str, current: &str| {
            let sys = FakeSys::default()
                .file("/fake/proc/filesystems", filesystems)
                .file("/fake/proc/self/mountinfo", mountinfo)
                .file("/fake/proc/self/attr/current", current);
            Host::detect(&sys, &roots()).selinux
        };
        let fs = "nodev\tproc\nnodev\tselinuxfs\n";
        assert!(se(
            fs,
            MOUNTINFO_SELINUX,
            "system_u:system_r:container_runtime_t:s0\0"
        ));
        // the kernel's own label: SELinux is not really on
        assert!(!se(fs, MOUNTINFO_SELINUX, "kernel\0"));
        // not in the kernel, not mounted, or mounted read-only
        assert!(!se("nodev\tproc\n", MOUNTINFO_SELINUX, "u:r:t:s0"));
        assert!(!se(
            fs,
            "22 1 0:21 / /sys rw - sysfs sysfs rw\n",
            "u:r:t:s0"
        ));
        assert!(!se(
            fs,
            "22 1 0:21 / /sys/fs/selinux ro,relatime - selinuxfs selinuxfs rw\n",
            "u:r:t:s0"
        ));
    }

    /// Every host (LSM on or off) against every spec (label set or empty).
    #[test]
    fn labels_are_written_only_where_the_node_has_the_lsm_and_refused_where_not() {
        let proc = Path::new("/fake/proc");
        let set = Labels {
            apparmor_profile: "cri-containerd.apparmor.d".into(),
            selinux_label: "system_u:system_r:container_t:s0:c1,c2".into(),
        };
        let empty = Labels::default();
        let write = |path: &str, value: &str| AttrWrite {
            path: CString::new(path).unwrap(),
            value: CString::new(value).unwrap(),
        };
        for (apparmor, selinux) in [
            (None, false),
            (Some(true), false),
            (Some(false), false),
            (None, true),
            (Some(true), true),
        ] {
            let host = Host { apparmor, selinux };
            // no label: nothing written, on any node
            let w = Writes::decide(&host, &empty, proc).unwrap();
            assert!(!w.any(), "{host:?}");

            let decided = Writes::decide(&host, &set, proc);
            match (apparmor, selinux) {
                (None, _) => assert!(
                    decided
                        .as_ref()
                        .unwrap_err()
                        .contains("AppArmor is not enabled on this node"),
                    "{host:?}: {decided:?}"
                ),
                (Some(_), false) => assert!(
                    decided
                        .as_ref()
                        .unwrap_err()
                        .contains("SELinux is disabled or not supported on this node"),
                    "{host:?}: {decided:?}"
                ),
                (Some(per_lsm), true) => {
                    let w = decided.unwrap();
                    let aa_path = if per_lsm {
                        "thread-self/attr/apparmor/exec"
                    } else {
                        "thread-self/attr/exec"
                    };
                    assert_eq!(
                        w.apparmor,
                        Some(write(aa_path, "exec cri-containerd.apparmor.d"))
                    );
                    assert_eq!(
                        w.selinux,
                        Some(write(
                            "thread-self/attr/exec",
                            "system_u:system_r:container_t:s0:c1,c2"
                        ))
                    );
                    assert_eq!(w.proc, proc);
                }
            }
            // one label at a time
            let only_aa = Labels {
                apparmor_profile: "p".into(),
                ..Default::default()
            };
            let w = Writes::decide(&host, &only_aa, proc);
            assert_eq!(w.is_ok(), apparmor.is_some(), "{host:?}");
            if let Ok(w) = w {
                assert!(w.selinux.is_none() && w.apparmor.is_some());
            }
            let only_se = Labels {
                selinux_label: "u:r:t:s0".into(),
                ..Default::default()
            };
            let w = Writes::decide(&host, &only_se, proc);
            assert_eq!(w.is_ok(), selinux, "{host:?}");
            if let Ok(w) = w {
                assert!(w.apparmor.is_none() && w.selinux.is_some());
            }
        }
    }

    #[test]
    fn the_inits_labels_stand_in_for_the_spec() {
        let sys = FakeSys::default()
            .file(
                "/fake/proc/9/attr/apparmor/current",
                "cri-containerd.apparmor.d (enforce)\n",
            )
            .file(
                "/fake/proc/9/attr/current",
                "system_u:system_r:container_t:s0:c4,c5\0",
            );
        let proc = Path::new("/fake/proc");
        let both = Host {
            apparmor: Some(true),
            selinux: true,
        };
        let labels = Labels::of_process(&sys, proc, 9, &both).unwrap();
        assert_eq!(labels.apparmor_profile, "cri-containerd.apparmor.d");
        assert_eq!(
            labels.selinux_label,
            "system_u:system_r:container_t:s0:c4,c5"
        );
        // no LSM on the node: nothing is read
        let labels = Labels::of_process(&FakeSys::default(), proc, 9, &Host::default()).unwrap();
        assert_eq!(labels, Labels::default());
        // unconfined is no profile
        let sys = FakeSys::default().file("/fake/proc/9/attr/current", "unconfined\n");
        let old = Host {
            apparmor: Some(false),
            selinux: false,
        };
        assert_eq!(
            Labels::of_process(&sys, proc, 9, &old).unwrap(),
            Labels::default()
        );
        // unreadable: an error, not "no label"
        let err = Labels::of_process(&FakeSys::default(), proc, 9, &old).unwrap_err();
        assert!(err.contains("/fake/proc/9/attr/current"), "{err}");
    }
}
