//! Who a container's processes are: uid, gids, environment, working directory, capability
//! sets, no_new_privs and cgroups.
//!
//! Sources, strongest first: the process spec the runtime sent over NRI, the bundle's
//! `config.json`, and `/proc/<pid>` of the container's init. A field missing from a stronger
//! source is taken from the next one. Cgroups always come from `/proc/<pid>/cgroup`, which is
//! where the process really is.

use std::path::{Path, PathBuf};

use crate::model::{Capabilities, ProcessSpec};

use super::sys::Sys;
use super::Error;

/// Capability names in kernel bit order (`CAP_CHOWN` is bit 0).
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The five capability sets as bit masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// Names → bit mask. Unknown names are ignored (as runc does): that can only mean fewer
/// capabilities, never more.
pub fn cap_mask(names: &[String]) -> u64 {
    names.iter().fold(0u64, |mask, name| {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        match CAP_NAMES.iter().position(|n| *n == full) {
            Some(bit) => mask | (1u64 << bit),
            None => mask,
        }
    })
}

impl CapSets {
    fn from_names(c: &Capabilities) -> Self {
        CapSets {
            bounding: cap_mask(&c.bounding),
            effective: cap_mask(&c.effective),
            permitted: cap_mask(&c.permitted),
            inheritable: cap_mask(&c.inheritable),
            ambient: cap_mask(&c.ambient),
        }
    }
}

/// Where the identity's process fields came from (for logs and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Runtime,
    Bundle,
    Proc,
}

/// One cgroup membership: the hierarchy's controllers (`cpu,cpuacct`, `name=systemd`, or
/// empty for the unified hierarchy) and the path inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMembership {
    pub controllers: String,
    pub path: String,
}

/// A container's process identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub env: Vec<String>,
    pub cwd: String,
    pub caps: CapSets,
    pub no_new_privs: bool,
    pub cgroups: Vec<CgroupMembership>,
    /// The strongest source that contributed.
    pub source: Source,
}

impl Identity {
    /// The container's `PATH` (the image default when it has none, as runc uses).
    pub fn path_var(&self) -> &str {
        self.env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    }

    /// Gathers the identity of the container whose init is `pid`.
    ///
    /// `userns` says whether the container has its own user namespace: ids read from `/proc`
    /// are then mapped back through its `uid_map`/`gid_map` into the container's view.
    pub fn resolve(
        sys: &dyn Sys,
        pid: u32,
        runtime: Option<&ProcessSpec>,
        bundle: Option<&Path>,
        userns: bool,
    ) -> Result<Self, Error> {
        let mut id = from_proc(sys, pid, userns)?;
        if let Some(bundle) = bundle {
            let config = bundle.join("config.json");
            if let Some(spec) = from_bundle(sys, &config)? {
                overlay(&mut id, &spec, Source::Bundle);
            }
        }
        if let Some(spec) = runtime {
            overlay(&mut id, spec, Source::Runtime);
        }
        Ok(id)
    }
}

fn overlay(id: &mut Identity, spec: &ProcessSpec, source: Source) {
    let mut used = false;
    if let Some(uid) = spec.uid {
        id.uid = uid;
        used = true;
    }
    if let Some(gid) = spec.gid {
        id.gid = gid;
        id.groups = spec.additional_gids.clone();
        used = true;
    }
    if !spec.env.is_empty() {
        id.env = spec.env.clone();
        used = true;
    }
    if !spec.cwd.is_empty() {
        id.cwd = spec.cwd.clone();
        used = true;
    }
    if let Some(caps) = &spec.capabilities {
        id.caps = CapSets::from_names(caps);
        // The spec only says "no new privileges" when it has a process at all; trust it
        // together with the capabilities, which always come with a real spec.
        id.no_new_privs = spec.no_new_privileges;
        used = true;
    }
    if used {
        id.source = source;
    }
}

fn read_text(sys: &dyn Sys, path: &Path) -> Result<String, Error> {
    let bytes = sys.read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn parse_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Parse {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Maps an id seen from our user namespace back into the container's through a
/// `uid_map`/`gid_map` (`inside outside count` lines).
fn map_back(map: &str, outside: u32) -> Option<u32> {
    map.lines().find_map(|line| {
        let mut f = line.split_whitespace().map(|x| x.parse::<u64>());
        let (Some(Ok(inside)), Some(Ok(out)), Some(Ok(count))) = (f.next(), f.next(), f.next())
        else {
            return None;
        };
        let o = outside as u64;
        (o >= out && o < out + count).then(|| (inside + (o - out)) as u32)
    })
}

/// The identity of `/proc/<pid>` alone.
pub fn from_proc(sys: &dyn Sys, pid: u32, userns: bool) -> Result<Identity, Error> {
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = read_text(sys, &status_path)?;
    let field = |name: &str| -> Result<&str, Error> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
            .ok_or_else(|| parse_err(&status_path, format!("no {name} line")))
    };
    let second_id = |name: &str| -> Result<u32, Error> {
        field(name)?
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| parse_err(&status_path, format!("bad {name} line")))
    };
    let hex = |name: &str| -> Result<u64, Error> {
        u64::from_str_radix(field(name)?, 16)
            .map_err(|e| parse_err(&status_path, format!("bad {name} line: {e}")))
    };
    let mut uid = second_id("Uid")?;
    let mut gid = second_id("Gid")?;
    let mut groups: Vec<u32> = field("Groups")?
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    let caps = CapSets {
        bounding: hex("CapBnd")?,
        effective: hex("CapEff")?,
        permitted: hex("CapPrm")?,
        inheritable: hex("CapInh")?,
        ambient: hex("CapAmb").unwrap_or(0),
    };
    let no_new_privs = field("NoNewPrivs").map(|v| v == "1").unwrap_or(false);
    if userns {
        let uid_map = read_text(sys, Path::new(&format!("/proc/{pid}/uid_map")))?;
        let gid_map = read_text(sys, Path::new(&format!("/proc/{pid}/gid_map")))?;
        let unmapped = |what: &str, v: u32| Error::Invalid {
            pid,
            reason: format!("{what} {v} has no mapping in the container's user namespace"),
        };
        uid = map_back(&uid_map, uid).ok_or_else(|| unmapped("uid", uid))?;
        gid = map_back(&gid_map, gid).ok_or_else(|| unmapped("gid", gid))?;
        groups = groups
            .into_iter()
            .filter_map(|g| map_back(&gid_map, g))
            .collect();
    }
    let environ_path = PathBuf::from(format!("/proc/{pid}/environ"));
    let environ = sys.read(&environ_path).map_err(|source| Error::Read {
        path: environ_path.clone(),
        source,
    })?;
    let env = environ
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect();
    let cwd_path = PathBuf::from(format!("/proc/{pid}/cwd"));
    // Both links are shown from our root: the container's cwd is relative to its root.
    let root = sys
        .read_link(Path::new(&format!("/proc/{pid}/root")))
        .unwrap_or_else(|_| PathBuf::from("/"));
    let cwd = match sys.read_link(&cwd_path) {
        Ok(p) => match p.strip_prefix(&root) {
            Ok(rel) => format!("/{}", rel.to_string_lossy()),
            Err(_) => p.to_string_lossy().into_owned(),
        },
        Err(_) => "/".to_string(),
    };
    let cgroups = cgroups_of(sys, pid)?;
    Ok(Identity {
        uid,
        gid,
        groups,
        env,
        cwd,
        caps,
        no_new_privs,
        cgroups,
        source: Source::Proc,
    })
}

/// `/proc/<pid>/cgroup` as memberships.
pub fn cgroups_of(sys: &dyn Sys, pid: u32) -> Result<Vec<CgroupMembership>, Error> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = read_text(sys, &path)?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(cg)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(parse_err(&path, format!("bad line {line:?}")));
        };
        out.push(CgroupMembership {
            controllers: controllers.to_string(),
            path: cg.to_string(),
        });
    }
    Ok(out)
}

/// The process part of an OCI `config.json`. `Ok(None)` when the file does not exist.
pub fn from_bundle(sys: &dyn Sys, config: &Path) -> Result<Option<ProcessSpec>, Error> {
    let bytes = match sys.read(config) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Read {
                path: config.to_owned(),
                source,
            })
        }
    };
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| parse_err(config, e.to_string()))?;
    let Some(p) = v.get("process") else {
        return Ok(None);
    };
    let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
        v.and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let user = p.get("user");
    let id = |key: &str| {
        user.and_then(|u| u.get(key))
            .and_then(|x| x.as_u64())
            .and_then(|x| u32::try_from(x).ok())
    };
    let capabilities = p.get("capabilities").map(|c| Capabilities {
        bounding: strings(c.get("bounding")),
        effective: strings(c.get("effective")),
        permitted: strings(c.get("permitted")),
        inheritable: strings(c.get("inheritable")),
        ambient: strings(c.get("ambient")),
    });
    Ok(Some(ProcessSpec {
        args: strings(p.get("args")),
        env: strings(p.get("env")),
        cwd: p
            .get("cwd")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        uid: id("uid"),
        gid: id("gid"),
        additional_gids: user
            .and_then(|u| u.get("additionalGids"))
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|g| g.as_u64().and_then(|g| u32::try_from(g).ok()))
                    .collect()
            })
            .unwrap_or_default(),
        no_new_privileges: p
            .get("noNewPrivileges")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        capabilities,
        // The bundle's seccomp and OOM score are read by `confinement`.
        ..Default::default()
    }))
}

/// Where each hierarchy of `memberships` is mounted in our mount namespace, as the
/// directory of the member cgroup. Parses `/proc/self/mountinfo`.
pub fn cgroup_dirs(
    sys: &dyn Sys,
    pid: u32,
    memberships: &[CgroupMembership],
) -> Result<Vec<PathBuf>, Error> {
    let mi_path = Path::new("/proc/self/mountinfo");
    let mountinfo = read_text(sys, mi_path)?;
    // (fstype, root, mount point, super options)
    let mounts: Vec<(String, String, String, Vec<String>)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let opts = r
                .get(2)
                .map(|o| o.split(',').map(str::to_string).collect())?;
            Some((
                r.first()?.to_string(),
                l.get(3)?.to_string(),
                l.get(4)?.to_string(),
                opts,
            ))
        })
        .collect();
    let mut dirs = Vec::new();
    for m in memberships {
        let found = if m.controllers.is_empty() {
            mounts.iter().find(|(fs, _, _, _)| fs == "cgroup2")
        } else {
            let wanted: Vec<&str> = m.controllers.split(',').collect();
            mounts.iter().find(|(fs, _, _, opts)| {
                fs == "cgroup" && wanted.iter().all(|w| opts.iter().any(|o| o == w))
            })
        };
        let Some((_, root, mountpoint, _)) = found else {
            return Err(Error::NoCgroupMount {
                pid,
                controllers: m.controllers.clone(),
            });
        };
        let rel = if root == "/" {
            m.path.as_str()
        } else {
            m.path.strip_prefix(root.as_str()).unwrap_or(&m.path)
        };
        dirs.push(Path::new(mountpoint).join(rel.trim_start_matches('/')));
    }
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::sys::FakeSys;

    const STATUS: &str =
        "Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\nGid:\t1001\t1001\t1001\t1001\n\
Groups:\t1001 2000 \nCapInh:\t0000000000000000\nCapPrm:\t0000000000000400\n\
CapEff:\t0000000000000400\nCapBnd:\t00000000a80425fb\nCapAmb:\t0000000000000400\nNoNewPrivs:\t1\n";

    fn proc_fake() -> FakeSys {
        FakeSys::default()
            .file("/proc/9/status", STATUS)
            .file("/proc/9/environ", "PATH=/bin\0HOME=/home/u\0")
            .file(
                "/proc/9/cgroup",
                "12:cpu,cpuacct:/pod/c1\n1:name=systemd:/pod/c1\n0::/pod/c1\n",
            )
            .link("/proc/9/cwd", "/rootfs/work")
            .link("/proc/9/root", "/rootfs")
    }

    #[test]
    fn identity_from_proc() {
        let sys = proc_fake();
        let id = Identity::resolve(&sys, 9, None, None, false).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1001));
        assert_eq!(id.groups, vec![1001, 2000]);
        assert_eq!(id.env, vec!["PATH=/bin", "HOME=/home/u"]);
        assert_eq!(id.cwd, "/work");
        assert_eq!(id.caps.ambient, 1 << 10);
        assert_eq!(id.caps.bounding, 0xa80425fb);
        assert!(id.no_new_privs);
        assert_eq!(id.cgroups.len(), 3);
        assert_eq!(id.cgroups[0].controllers, "cpu,cpuacct");
        assert_eq!(id.source, Source::Proc);
        assert_eq!(id.path_var(), "/bin");
    }

    #[test]
    fn runtime_spec_wins_over_bundle_and_proc() {
        let config = r#"{"process":{"user":{"uid":5,"gid":6,"additionalGids":[7]},
            "env":["A=bundle"],"cwd":"/b","noNewPrivileges":false,
            "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"]}}}"#;
        let sys = proc_fake().file("/bundle/config.json", config);
        let from_bundle =
            Identity::resolve(&sys, 9, None, Some(Path::new("/bundle")), false).unwrap();
        assert_eq!((from_bundle.uid, from_bundle.gid), (5, 6));
        assert_eq!(from_bundle.groups, vec![7]);
        assert_eq!(from_bundle.env, vec!["A=bundle"]);
        assert_eq!(from_bundle.caps.bounding, 1 << 5);
        assert_eq!(from_bundle.caps.ambient, 0);
        assert!(!from_bundle.no_new_privs);
        assert_eq!(from_bundle.source, Source::Bundle);

        let runtime = ProcessSpec {
            uid: Some(0),
            cwd: "/r".into(),
            ..Default::default()
        };
        let id =
            Identity::resolve(&sys, 9, Some(&runtime), Some(Path::new("/bundle")), false).unwrap();
        assert_eq!(id.uid, 0);
        assert_eq!(id.gid, 6);
        assert_eq!(id.cwd, "/r");
        assert_eq!(id.env, vec!["A=bundle"]);
        assert_eq!(id.source, Source::Runtime);
    }

    #[test]
    fn missing_bundle_config_falls_back() {
        let sys = proc_fake();
        let id = Identity::resolve(&sys, 9, None, Some(Path::new("/nope")), false).unwrap();
        assert_eq!(id.source, Source::Proc);
        assert!(sys.calls().contains(&"read /nope/config.json".to_string()));
    }

    #[test]
    fn ids_are_mapped_back_into_the_user_namespace() {
        let sys = proc_fake()
            .file("/proc/9/uid_map", "         0     100000      65536\n")
            .file("/proc/9/gid_map", "0 100000 65536\n");
        let status = STATUS
            .replace("1000\t1000\t1000\t1000", "101000\t101000\t101000\t101000")
            .replace("1001\t1001\t1001\t1001", "101001\t101001\t101001\t101001");
        let sys = FakeSys {
            files: {
                let mut f = sys.files;
                f.insert("/proc/9/status".into(), status.into_bytes());
                f
            },
            ..sys
        };
        let id = Identity::resolve(&sys, 9, None, None, true).unwrap();
        assert_eq!(id.uid, 1000);
        // 1001 and 2000 are not mapped (below 100000): dropped, never widened
        assert!(id.groups.is_empty());
        assert!(matches!(
            Identity::resolve(
                &proc_fake()
                    .file("/proc/9/uid_map", "0 5 1\n")
                    .file("/proc/9/gid_map", "0 5 1\n"),
                9,
                None,
                None,
                true
            ),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn cap_names_to_mask() {
        let names = vec!["CAP_CHOWN".into(), "net_raw".into(), "CAP_BOGUS".into()];
        assert_eq!(cap_mask(&names), 1 | (1 << 13));
        assert_eq!(CAP_NAMES[40], "CAP_CHECKPOINT_RESTORE");
    }

    #[test]
    fn cgroup_dirs_from_mountinfo() {
        let mi =
            "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n\
31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n\
32 25 0:28 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let sys = proc_fake().file("/proc/self/mountinfo", mi);
        let members = cgroups_of(&sys, 9).unwrap();
        let dirs = cgroup_dirs(&sys, 9, &members).unwrap();
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/pod/c1"),
                PathBuf::from("/sys/fs/cgroup/systemd/pod/c1"),
                PathBuf::from("/sys/fs/cgroup/unified/pod/c1"),
            ]
        );
        let bad = vec![CgroupMembership {
            controllers: "memory".into(),
            path: "/x".into(),
        }];
        assert!(matches!(
            cgroup_dirs(&sys, 9, &bad),
            Err(Error::NoCgroupMount { .. })
        ));
    }
}
