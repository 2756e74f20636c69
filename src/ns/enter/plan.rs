//! The plan of an exec hook: everything decided before the fork, as plain data.
//!
//! [`Plan::gather`] reads the facts about the container's init through [`Sys`] (which
//! namespaces differ from ours, its identity, where its cgroups are mounted, the highest
//! capability the kernel knows), and [`Plan::new`] turns them into the exact arguments of the
//! system calls the forked processes will make. Neither forks, opens a descriptor or needs
//! root: both are unit-tested against [`crate::ns::sys::FakeSys`].

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::model::ProcessSpec;
use crate::ns::confinement::Confinement;
use crate::ns::identity::{cgroup_dirs, CapSets, Identity, Source};
use crate::ns::lsm::{self, Host, Labels, Roots};
use crate::ns::namespace::{differing, NsKind};
use crate::ns::seccomp::Filter;
use crate::ns::sys::Sys;
use crate::ns::Error;

/// Owned C strings together with the NULL-terminated array of pointers to them that
/// `execve` takes for `argv` and `envp`.
pub struct CStrings {
    strings: Vec<CString>,
    /// Points into the heap buffers of `strings` (which do not move when `strings` grows or
    /// the value is moved), then a NULL.
    ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the pointers only point into the C strings this value owns, and are only read
// (`execve` reads them); changing the strings goes through `&mut self`, which rebuilds them.
unsafe impl Send for CStrings {}
// SAFETY: as above: shared access only ever reads.
unsafe impl Sync for CStrings {}

impl CStrings {
    fn new(strings: Vec<CString>) -> Self {
        let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        CStrings { strings, ptrs }
    }

    fn push(&mut self, s: CString) {
        self.ptrs.pop();
        self.ptrs.push(s.as_ptr());
        self.ptrs.push(std::ptr::null());
        self.strings.push(s);
    }

    /// The strings.
    pub fn as_slice(&self) -> &[CString] {
        &self.strings
    }

    /// The NULL-terminated pointer array, valid for as long as `self` is.
    pub fn as_ptr(&self) -> *const *const libc::c_char {
        self.ptrs.as_ptr()
    }
}

impl std::fmt::Debug for CStrings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.strings).finish()
    }
}

/// Everything the forked processes need to know, decided before the fork.
#[derive(Debug)]
pub struct Plan {
    /// The container's init as we see it: for `/proc/<pid>` paths and messages only; it is
    /// entered through its pidfd.
    pub pid: u32,
    /// The namespaces to enter: those of the init that differ from ours.
    pub namespaces: Vec<NsKind>,
    /// `namespaces` as the `CLONE_NEW*` flags of one `setns(pidfd, flags)`.
    pub ns_flags: libc::c_int,
    /// The `cgroup.procs` file of every hierarchy the init is a member of.
    pub cgroup_procs: Vec<PathBuf>,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    pub caps: CapSets,
    /// The highest capability number the kernel knows: bounding drops and ambient raises
    /// go up to it.
    pub last_cap: u32,
    pub no_new_privs: bool,
    /// The working directory inside the container (`/` when the container names none).
    pub cwd: CString,
    pub argv: CStrings,
    pub env: CStrings,
    /// The paths to try for `argv[0]`, in order, as `execvp` would from the container's `PATH`.
    pub candidates: Vec<CString>,
    /// Where the identity came from (for logs).
    pub source: Source,
    /// The container's seccomp filter, compiled; installed last in the hook process.
    pub seccomp: Option<Arc<Filter>>,
    /// The container's OOM score adjustment as the decimal text written to
    /// `/proc/self/oom_score_adj`.
    pub oom_score_adj: Option<CString>,
    /// The container's AppArmor profile and SELinux label, as the writes that apply them.
    pub lsm: lsm::Writes,
}

fn cstring(pid: u32, what: &str, s: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::Invalid {
        pid,
        reason: format!("{what} contains a NUL byte"),
    })
}

fn cstrings<'a>(
    pid: u32,
    what: &str,
    items: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<CString>, Error> {
    items.into_iter().map(|s| cstring(pid, what, s)).collect()
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

/// The home directory of `uid` in passwd(5) text.
pub fn home_of(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2].parse::<u32>().ok() == Some(uid) && !fields[5].is_empty())
            .then(|| fields[5].to_string())
    })
}

/// The highest capability number, from `/proc/sys/kernel/cap_last_cap` (40 when unreadable,
/// never above 63: the sets are 64-bit masks).
fn last_cap(sys: &dyn Sys) -> u32 {
    sys.read(Path::new("/proc/sys/kernel/cap_last_cap"))
        .ok()
        .and_then(|b| String::from_utf8_lossy(&b).trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

impl Plan {
    /// Reads the facts about the container whose init is `pid` and plans running `argv` in
    /// it. `process` is the runtime's process spec, `bundle` the OCI bundle (see
    /// [`Identity::resolve`] for which source wins). The seccomp filter and the OOM score
    /// adjustment come from the bundle's `config.json` only, and without it nothing is
    /// planned (see [`Confinement`]).
    ///
    /// What is read from `/proc/<pid>` belongs to the init only if it is still alive
    /// afterwards: the launch checks its pidfd after opening the last descriptor it needs.
    pub fn gather(
        sys: &dyn Sys,
        pid: u32,
        process: Option<&ProcessSpec>,
        bundle: Option<&Path>,
        argv: &[String],
    ) -> Result<Plan, Error> {
        let node = (Host::this_node(), Roots::host());
        Plan::gather_on(sys, node, pid, process, bundle, argv)
    }

    /// [`Plan::gather`] on a node with the LSMs of `host`, whose `/proc` and `/sys` are
    /// where `roots` says.
    pub fn gather_on(
        sys: &dyn Sys,
        (host, roots): (Host, Roots),
        pid: u32,
        process: Option<&ProcessSpec>,
        bundle: Option<&Path>,
        argv: &[String],
    ) -> Result<Plan, Error> {
        // First: without the container's confinement nothing may run.
        let mut confinement = Confinement::resolve(sys, pid, bundle, process)?;
        let lsm_err = |reason| Error::Lsm { pid, reason };
        let labels = match confinement.labels.take() {
            Some(labels) => labels,
            None => Labels::of_process(sys, &roots.proc, pid, &host).map_err(lsm_err)?,
        };
        let writes = lsm::Writes::decide(&host, &labels, &roots.proc).map_err(lsm_err)?;
        let namespaces = differing(sys, pid)?;
        let userns = namespaces.contains(&NsKind::User);
        let identity = Identity::resolve(sys, pid, process, bundle, userns)?;
        let dirs = cgroup_dirs(sys, pid, &identity.cgroups)?;
        Ok(
            Plan::new(pid, &identity, namespaces, &dirs, argv, last_cap(sys))?
                .confined(confinement)
                .labelled(writes),
        )
    }

    /// Plans running `argv` with `identity` inside the cgroup directories `cgroup_dirs`,
    /// entering `namespaces`. Pure: decides, reads nothing.
    pub fn new(
        pid: u32,
        identity: &Identity,
        namespaces: Vec<NsKind>,
        cgroup_dirs: &[PathBuf],
        argv: &[String],
        last_cap: u32,
    ) -> Result<Plan, Error> {
        let Some(arg0) = argv.first() else {
            return Err(Error::Invalid {
                pid,
                reason: "empty command".into(),
            });
        };
        let cwd = if identity.cwd.is_empty() {
            "/"
        } else {
            &identity.cwd
        };
        let found = candidates(arg0, identity.path_var());
        Ok(Plan {
            pid,
            ns_flags: namespaces.iter().fold(0, |f, k| f | k.clone_flag()),
            namespaces,
            cgroup_procs: cgroup_dirs.iter().map(|d| d.join("cgroup.procs")).collect(),
            uid: identity.uid,
            gid: identity.gid,
            groups: identity.groups.clone(),
            caps: identity.caps,
            last_cap,
            no_new_privs: identity.no_new_privs,
            cwd: cstring(pid, "working directory", cwd)?,
            argv: CStrings::new(cstrings(pid, "command", argv.iter().map(String::as_str))?),
            env: CStrings::new(cstrings(
                pid,
                "environment",
                identity.env.iter().map(String::as_str),
            )?),
            candidates: cstrings(pid, "command path", found.iter().map(String::as_str))?,
            source: identity.source,
            seccomp: None,
            oom_score_adj: None,
            lsm: lsm::Writes::default(),
        })
    }

    /// The plan with the container's seccomp filter and OOM score adjustment.
    pub fn confined(mut self, confinement: Confinement) -> Plan {
        self.seccomp = confinement.seccomp;
        self.oom_score_adj = confinement
            .oom_score_adj
            .and_then(|adj| CString::new(adj.to_string()).ok());
        self
    }

    /// The plan with the writes that apply the container's LSM labels.
    pub fn labelled(mut self, writes: lsm::Writes) -> Plan {
        self.lsm = writes;
        self
    }

    /// Whether the environment has no `HOME` (see [`Plan::add_home`]).
    pub fn needs_home(&self) -> bool {
        !self
            .env
            .as_slice()
            .iter()
            .any(|e| e.as_bytes().starts_with(b"HOME="))
    }

    /// Like `runc exec`: a process without `HOME` gets the home directory of its uid from
    /// the container's `/etc/passwd` (`passwd`, when it could be read), else `/`.
    pub fn add_home(&mut self, passwd: Option<&str>) -> Result<(), Error> {
        if !self.needs_home() {
            return Ok(());
        }
        let home = passwd
            .and_then(|text| home_of(text, self.uid))
            .unwrap_or_else(|| "/".to_string());
        let entry = cstring(self.pid, "environment", &format!("HOME={home}"))?;
        self.env.push(entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::sys::FakeSys;

    fn identity() -> Identity {
        Identity {
            uid: 1000,
            gid: 1001,
            groups: vec![1001, 2000],
            env: vec!["PATH=/usr/bin:/bin/".into(), "FOO=bar".into()],
            cwd: "/work".into(),
            caps: CapSets {
                bounding: 0b1011,
                effective: 0b11,
                permitted: 0b11,
                inheritable: 0b10,
                ambient: 0b10,
            },
            no_new_privs: true,
            cgroups: vec![],
            source: Source::Runtime,
        }
    }

    fn strings(c: &CStrings) -> Vec<&str> {
        c.as_slice().iter().map(|s| s.to_str().unwrap()).collect()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn candidates_follow_path() {
        assert_eq!(candidates("ls", "/a:/b/:"), vec!["/a/ls", "/b/ls", "./ls"]);
        assert_eq!(candidates("/bin/ls", "/a"), vec!["/bin/ls"]);
        assert_eq!(candidates("./x", "/a"), vec!["./x"]);
    }

    #[test]
    fn home_from_passwd() {
        let passwd =
            "root:x:0:0:root:/root:/bin/sh\nweb:x:1000:1000::/srv/web:/bin/false\nbad line\n";
        assert_eq!(home_of(passwd, 0).as_deref(), Some("/root"));
        assert_eq!(home_of(passwd, 1000).as_deref(), Some("/srv/web"));
        assert_eq!(home_of(passwd, 7), None);
    }

    #[test]
    fn plan_from_identity() {
        let dirs = [PathBuf::from("/sys/fs/cgroup/cpu/pod/c1")];
        let kinds = vec![NsKind::Mount, NsKind::Pid, NsKind::Net];
        let plan = Plan::new(9, &identity(), kinds, &dirs, &argv(&["ls", "-l"]), 40).unwrap();
        assert_eq!(
            plan.ns_flags,
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET
        );
        assert_eq!(
            plan.cgroup_procs,
            vec![PathBuf::from("/sys/fs/cgroup/cpu/pod/c1/cgroup.procs")]
        );
        assert_eq!((plan.uid, plan.gid), (1000, 1001));
        assert_eq!(plan.groups, vec![1001, 2000]);
        assert_eq!(plan.caps, identity().caps);
        assert!(plan.no_new_privs);
        assert_eq!(plan.cwd.to_str().unwrap(), "/work");
        assert_eq!(strings(&plan.argv), vec!["ls", "-l"]);
        let found: Vec<&str> = plan
            .candidates
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect();
        assert_eq!(found, vec!["/usr/bin/ls", "/bin/ls"]);
        assert_eq!(plan.source, Source::Runtime);
        // the pointer arrays name the strings, then NULL
        // SAFETY: reading 3 pointers of a NULL-terminated array of 2 strings.
        unsafe {
            let p = plan.argv.as_ptr();
            assert_eq!(std::ffi::CStr::from_ptr(*p).to_str().unwrap(), "ls");
            assert_eq!(std::ffi::CStr::from_ptr(*p.add(1)).to_str().unwrap(), "-l");
            assert!((*p.add(2)).is_null());
        }

        let mut no_cwd = identity();
        no_cwd.cwd.clear();
        let plan = Plan::new(9, &no_cwd, vec![], &[], &argv(&["ls"]), 40).unwrap();
        assert_eq!(plan.ns_flags, 0);
        assert_eq!(plan.cwd.to_str().unwrap(), "/");
    }

    #[test]
    fn home_is_added_only_when_missing() {
        let mut plan = Plan::new(9, &identity(), vec![], &[], &argv(&["ls"]), 40).unwrap();
        assert!(plan.needs_home());
        plan.add_home(Some("web:x:1000:1000::/srv/web:/bin/false\n"))
            .unwrap();
        assert_eq!(
            strings(&plan.env),
            vec!["PATH=/usr/bin:/bin/", "FOO=bar", "HOME=/srv/web"]
        );
        assert!(!plan.needs_home());
        plan.add_home(Some("other:x:1000:1000::/other:/bin/sh\n"))
            .unwrap();
        assert_eq!(plan.env.as_slice().len(), 3);
        // SAFETY: reading the 4th pointer of a NULL-terminated array of 3 strings.
        unsafe {
            let p = plan.env.as_ptr();
            assert_eq!(
                std::ffi::CStr::from_ptr(*p.add(2)).to_str().unwrap(),
                "HOME=/srv/web"
            );
            assert!((*p.add(3)).is_null());
        }

        let mut unknown = Plan::new(9, &identity(), vec![], &[], &argv(&["ls"]), 40).unwrap();
        unknown.add_home(None).unwrap();
        assert!(strings(&unknown.env).contains(&"HOME=/"));

        let mut with_home = identity();
        with_home.env.push("HOME=/h".into());
        let plan = Plan::new(9, &with_home, vec![], &[], &argv(&["ls"]), 40).unwrap();
        assert!(!plan.needs_home());
    }

    #[test]
    fn invalid_commands_are_refused() {
        let err = |a: &[&str]| Plan::new(9, &identity(), vec![], &[], &argv(a), 40).unwrap_err();
        assert_eq!(
            err(&[]).to_string(),
            "invalid argument for container of pid 9: empty command"
        );
        assert_eq!(
            err(&["ls", "a\0b"]).to_string(),
            "invalid argument for container of pid 9: command contains a NUL byte"
        );
        let mut bad_env = identity();
        bad_env.env.push("X=\0".into());
        assert!(matches!(
            Plan::new(9, &bad_env, vec![], &[], &argv(&["ls"]), 40),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn gather_reads_the_init_through_sys() {
        let mut sys = FakeSys::default()
            .file(
                "/proc/9/status",
                "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\nCapInh:\t0\nCapPrm:\t3\n\
                 CapEff:\t3\nCapBnd:\t3\nCapAmb:\t0\nNoNewPrivs:\t0\n",
            )
            .file("/proc/9/environ", "PATH=/bin\0")
            .file("/proc/9/cgroup", "3:memory:/pod/c1\n")
            .file(
                "/proc/self/mountinfo",
                "30 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
            )
            .file("/proc/sys/kernel/cap_last_cap", "38\n")
            .file(
                "/b/config.json",
                r#"{"process":{"oomScoreAdj":-5},"linux":{"seccomp":{
                    "defaultAction":"SCMP_ACT_ALLOW",
                    "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}}}"#,
            )
            .link("/proc/9/cwd", "/rootfs/srv")
            .link("/proc/9/root", "/rootfs");
        for (i, kind) in NsKind::ALL.iter().enumerate() {
            let name = kind.proc_name();
            let theirs = if *kind == NsKind::Net { 999 } else { i as u64 };
            sys = sys
                .inode(&format!("/proc/self/ns/{name}"), 4, i as u64)
                .inode(&format!("/proc/9/ns/{name}"), 4, theirs);
        }
        let runtime = ProcessSpec {
            uid: Some(7),
            ..Default::default()
        };
        let bundle = Some(Path::new("/b"));
        let plan = Plan::gather(&sys, 9, Some(&runtime), bundle, &argv(&["sh"])).unwrap();
        assert_eq!(plan.namespaces, vec![NsKind::Net]);
        assert_eq!(plan.ns_flags, libc::CLONE_NEWNET);
        assert_eq!(plan.uid, 7);
        assert_eq!(plan.cwd.to_str().unwrap(), "/srv");
        assert_eq!(plan.last_cap, 38);
        assert_eq!(
            plan.cgroup_procs,
            vec![PathBuf::from("/sys/fs/cgroup/memory/pod/c1/cgroup.procs")]
        );
        assert_eq!(plan.candidates[0].to_str().unwrap(), "/bin/sh");
        assert_eq!(plan.source, Source::Runtime);
        assert!(plan.seccomp.is_some());
        assert_eq!(plan.oom_score_adj.as_deref(), Some(c"-5"));
        // without the bundle's spec nothing is planned
        assert!(matches!(
            Plan::gather(&sys, 9, Some(&runtime), None, &argv(&["sh"])),
            Err(Error::NoSpec { .. })
        ));

        // an unreadable cap_last_cap means the kernel's usual 40
        let sys = FakeSys {
            files: sys
                .files
                .into_iter()
                .filter(|(p, _)| !p.ends_with("cap_last_cap"))
                .collect(),
            ..sys
        };
        let plan = Plan::gather(&sys, 9, None, bundle, &argv(&["sh"])).unwrap();
        assert_eq!(plan.last_cap, 40);
    }

    /// A container init of pid 9 in our namespaces, its bundle's spec being `config`.
    fn init_with_spec(config: &str) -> FakeSys {
        let mut sys = FakeSys::default()
            .file(
                "/proc/9/status",
                "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\nCapInh:\t0\nCapPrm:\t3\n\
                 CapEff:\t3\nCapBnd:\t3\nCapAmb:\t0\nNoNewPrivs:\t0\n",
            )
            .file("/proc/9/environ", "PATH=/bin\0")
            .file("/proc/9/cgroup", "")
            .file("/proc/self/mountinfo", "")
            .file("/b/config.json", config)
            .link("/proc/9/cwd", "/rootfs")
            .link("/proc/9/root", "/rootfs");
        for (i, kind) in NsKind::ALL.iter().enumerate() {
            let name = kind.proc_name();
            sys = sys
                .inode(&format!("/proc/self/ns/{name}"), 4, i as u64)
                .inode(&format!("/proc/9/ns/{name}"), 4, i as u64);
        }
        sys
    }

    #[test]
    fn lsm_labels_are_planned_from_the_spec_or_the_init() {
        let roots = Roots {
            proc: "/fake/proc".into(),
            sys: "/fake/sys".into(),
        };
        let apparmor = Host {
            apparmor: Some(true),
            selinux: false,
        };
        let sh = argv(&["sh"]);
        let bundle = Some(Path::new("/b"));
        let sys = init_with_spec(r#"{"process":{"apparmorProfile":"cri-containerd.apparmor.d"}}"#);
        let plan = Plan::gather_on(&sys, (apparmor, roots.clone()), 9, None, bundle, &sh).unwrap();
        let write = plan.lsm.apparmor.as_ref().unwrap();
        assert_eq!(
            write.value.to_str().unwrap(),
            "exec cri-containerd.apparmor.d"
        );
        assert_eq!(plan.lsm.proc, Path::new("/fake/proc"));
        assert!(plan.lsm.selinux.is_none());
        // the same spec on a node without AppArmor: refused before anything is forked
        let err = Plan::gather_on(&sys, (Host::default(), roots.clone()), 9, None, bundle, &sh)
            .unwrap_err();
        assert!(matches!(err, Error::Lsm { pid: 9, .. }), "{err}");
        assert!(err.to_string().contains("AppArmor is not enabled"), "{err}");
        // a spec without labels: nothing to write, on any node
        let sys = init_with_spec("{}");
        let plan = Plan::gather_on(&sys, (apparmor, roots.clone()), 9, None, bundle, &sh).unwrap();
        assert!(!plan.lsm.any());

        // no spec, the runtime settles seccomp: the init's own profile is taken
        let unconfined = ProcessSpec {
            seccomp: crate::model::RuntimeSeccomp::Unconfined,
            ..Default::default()
        };
        let sys = init_with_spec("{}").file(
            "/fake/proc/9/attr/apparmor/current",
            "cri-containerd.apparmor.d (enforce)\n",
        );
        let plan = Plan::gather_on(
            &sys,
            (apparmor, roots.clone()),
            9,
            Some(&unconfined),
            None,
            &sh,
        )
        .unwrap();
        let write = plan.lsm.apparmor.as_ref().unwrap();
        assert_eq!(
            write.value.to_str().unwrap(),
            "exec cri-containerd.apparmor.d"
        );
        // and when it cannot be read, nothing runs
        let sys = init_with_spec("{}");
        let err =
            Plan::gather_on(&sys, (apparmor, roots), 9, Some(&unconfined), None, &sh).unwrap_err();
        assert!(matches!(err, Error::Lsm { .. }), "{err}");
    }
}
