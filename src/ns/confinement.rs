//! What confines a container's processes beyond their identity: its seccomp filter, its OOM
//! score adjustment and its LSM labels (AppArmor profile, SELinux label), read from the OCI
//! spec the runtime runs it with (the bundle's `config.json`).
//!
//! The bundle is the source of truth: when it can be read, what the runtime sent over NRI is
//! not consulted (the two should agree; when they do not, the spec runc was given wins).
//!
//! This fails closed: an exec hook must never run with less confinement than the container.
//! When the spec cannot be read (no bundle known, the file missing or unreadable, not JSON),
//! the runtime's NRI data stands in only if it settles the question: the seccomp policy
//! itself (NRI v0.10 runtimes send it), or a profile that says "unconfined"; the LSM labels,
//! which NRI does not carry, are then those the container's init runs with (see
//! [`super::lsm::Labels::of_process`]). Otherwise, and
//! whenever a `linux.seccomp` cannot be translated or loaded by us, the hook does not run and
//! the error says why. Only a spec (or runtime) that says so means "no filter".
//!
//! Compiling a profile the size of containerd's default one takes libseccomp about 20 ms, so
//! compiled filters are kept, by the exact text of their profile, in a small process-wide
//! cache: every container that runs the runtime's default profile shares one program. What a
//! spec works out to is kept too, by the spec's exact bytes: a container's later hooks read
//! its `config.json` but neither parse it nor compile anything.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use serde::Deserialize as _;

use super::lsm::Labels;
use super::seccomp::{self, Filter, Profile};
use super::sys::Sys;
use super::Error;
use crate::model::{ProcessSpec, RuntimeSeccomp};

/// The container's seccomp filter (compiled), OOM score adjustment and LSM labels.
#[derive(Debug, Default, Clone)]
pub struct Confinement {
    /// `None`: the spec has no `linux.seccomp`.
    pub seccomp: Option<Arc<Filter>>,
    /// `process.oomScoreAdj`; `None` when the spec sets none.
    pub oom_score_adj: Option<i32>,
    /// `process.apparmorProfile` and `process.selinuxLabel`; `None` when the spec could not
    /// be read (those of the container's init are taken then).
    pub labels: Option<Labels>,
}

fn oom(v: Option<i64>, what: impl FnOnce(i64) -> Error) -> Result<Option<i32>, Error> {
    match v {
        None => Ok(None),
        Some(n) => match i32::try_from(n) {
            Ok(adj) if (-1000..=1000).contains(&adj) => Ok(Some(adj)),
            _ => Err(what(n)),
        },
    }
}

impl Confinement {
    /// The confinement of the container whose init is `pid`: from `<bundle>/config.json`,
    /// else from `runtime` (the process spec sent over NRI) where that settles it.
    pub fn resolve(
        sys: &dyn Sys,
        pid: u32,
        bundle: Option<&Path>,
        runtime: Option<&ProcessSpec>,
    ) -> Result<Self, Error> {
        let unread = match bundle {
            None => "the container's bundle is not known".to_string(),
            Some(bundle) => {
                let config = bundle.join("config.json");
                match sys.read(&config) {
                    Ok(bytes) => return Confinement::from_config(pid, &config, &bytes),
                    Err(e) => format!("reading {}: {e}", config.display()),
                }
            }
        };
        let seccomp = match runtime.map(|r| &r.seccomp) {
            Some(RuntimeSeccomp::Unconfined) => None,
            Some(RuntimeSeccomp::Policy(profile)) => {
                Some(compiled(profile).map_err(|reason| Error::RuntimeSeccomp { pid, reason })?)
            }
            Some(RuntimeSeccomp::Unknown) | None => {
                return Err(Error::NoSpec {
                    pid,
                    reason: format!(
                        "{unread}; the runtime did not send the container's seccomp policy"
                    ),
                })
            }
        };
        let oom_score_adj = oom(runtime.and_then(|r| r.oom_score_adj), |n| Error::Invalid {
            pid,
            reason: format!("the runtime's oom_score_adj {n} is not in -1000..=1000"),
        })?;
        Ok(Confinement {
            seccomp,
            oom_score_adj,
            labels: None,
        })
    }

    /// The confinement in the text of an OCI `config.json` (`config` names it in errors).
    pub fn from_config(pid: u32, config: &Path, bytes: &[u8]) -> Result<Self, Error> {
        remembered(bytes, || Confinement::parse_config(pid, config, bytes))
    }

    fn parse_config(pid: u32, config: &Path, bytes: &[u8]) -> Result<Self, Error> {
        let spec: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Error::NoSpec {
            pid,
            reason: format!("parsing {}: {e}", config.display()),
        })?;
        let seccomp_err = |reason: String| Error::Seccomp {
            config: config.to_owned(),
            reason,
        };
        let seccomp = match spec.pointer("/linux/seccomp") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let profile = Profile::deserialize(v).map_err(|e| seccomp_err(e.to_string()))?;
                Some(compiled(&profile).map_err(seccomp_err)?)
            }
        };
        let bad_oom = |v: &dyn std::fmt::Display| Error::Parse {
            path: config.to_owned(),
            reason: format!("process.oomScoreAdj {v} is not in -1000..=1000"),
        };
        let oom_score_adj = match spec.pointer("/process/oomScoreAdj") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => oom(Some(v.as_i64().ok_or_else(|| bad_oom(v))?), |n| bad_oom(&n))?,
        };
        let label = |pointer: &str| match spec.pointer(pointer) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Error::Parse {
                path: config.to_owned(),
                reason: format!("{pointer} is not a string: {other}"),
            }),
        };
        let labels = Labels {
            apparmor_profile: label("/process/apparmorProfile")?,
            selinux_label: label("/process/selinuxLabel")?,
        };
        Ok(Confinement {
            seccomp,
            oom_score_adj,
            labels: Some(labels),
        })
    }
}

/// How many compiled filters are kept (a node runs few distinct profiles; past this the
/// cache starts again, so it stays bounded whatever the containers bring).
const CACHED: usize = 32;

static COMPILED: LazyLock<Mutex<HashMap<String, Arc<Filter>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Confinements worked out, by the exact bytes of the spec they came from.
static BY_SPEC: LazyLock<Mutex<HashMap<Vec<u8>, Confinement>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The confinement of the spec `bytes`: worked out by `work` the first time, then remembered
/// (failures are not: they are worked out, and reported, again).
fn remembered(
    bytes: &[u8],
    work: impl FnOnce() -> Result<Confinement, Error>,
) -> Result<Confinement, Error> {
    let cache = || BY_SPEC.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = cache().get(bytes) {
        return Ok(known.clone());
    }
    let confinement = work()?;
    let mut cache = cache();
    if cache.len() >= CACHED {
        cache.clear();
    }
    cache.insert(bytes.to_vec(), confinement.clone());
    Ok(confinement)
}

/// The filter of `profile`, compiled now or taken from the cache. The key is the profile's
/// whole text, so two profiles share a program only when they are equal.
fn compiled(profile: &Profile) -> Result<Arc<Filter>, String> {
    let key = serde_json::to_string(profile).map_err(|e| e.to_string())?;
    let cache = || COMPILED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(filter) = cache().get(&key) {
        return Ok(Arc::clone(filter));
    }
    let filter = Arc::new(seccomp::compile(profile)?);
    let mut cache = cache();
    if cache.len() >= CACHED {
        cache.clear();
    }
    cache.insert(key, Arc::clone(&filter));
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::sys::FakeSys;

    fn confinement(json: &str) -> Result<Confinement, Error> {
        Confinement::from_config(9, Path::new("/b/config.json"), json.as_bytes())
    }

    #[test]
    fn a_spec_without_seccomp_or_oom_has_neither() {
        let c = confinement(r#"{"process":{"args":["sh"]},"linux":{}}"#).unwrap();
        assert!(c.seccomp.is_none());
        assert_eq!(c.oom_score_adj, None);
        assert_eq!(c.labels, Some(Labels::default()));
        let c = confinement(r#"{"linux":{"seccomp":null}}"#).unwrap();
        assert!(c.seccomp.is_none());
    }

    #[test]
    fn seccomp_and_oom_are_read() {
        let c = confinement(
            r#"{"process":{"oomScoreAdj":-997},"linux":{"seccomp":{
                "defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}}}"#,
        )
        .unwrap();
        assert!(!c.seccomp.unwrap().program().is_empty());
        assert_eq!(c.oom_score_adj, Some(-997));
    }

    #[test]
    fn lsm_labels_are_read() {
        let c = confinement(
            r#"{"process":{"apparmorProfile":"cri-containerd.apparmor.d",
                "selinuxLabel":"system_u:system_r:container_t:s0:c1,c2"}}"#,
        )
        .unwrap();
        assert_eq!(
            c.labels,
            Some(Labels {
                apparmor_profile: "cri-containerd.apparmor.d".into(),
                selinux_label: "system_u:system_r:container_t:s0:c1,c2".into(),
            })
        );
        let err = confinement(r#"{"process":{"apparmorProfile":7}}"#).unwrap_err();
        assert!(err.to_string().contains("apparmorProfile"), "{err}");
        // without the spec: not known (the init's are taken)
        let sys = FakeSys::default();
        let unconfined = ProcessSpec {
            seccomp: RuntimeSeccomp::Unconfined,
            ..Default::default()
        };
        let c = Confinement::resolve(&sys, 9, None, Some(&unconfined)).unwrap();
        assert_eq!(c.labels, None);
    }

    #[test]
    fn equal_profiles_share_one_compiled_filter() {
        let spec = |errno: u32| {
            format!(
                r#"{{"linux":{{"seccomp":{{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":{errno}}}]}}}}}}"#
            )
        };
        let a = confinement(&spec(3)).unwrap().seccomp.unwrap();
        let b = confinement(&spec(3)).unwrap().seccomp.unwrap();
        let c = confinement(&spec(4)).unwrap().seccomp.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn a_spec_is_worked_out_once() {
        let spec = br#"{"process":{"oomScoreAdj":11},"worked-out-once":1}"#;
        let first =
            remembered(spec, || Confinement::parse_config(9, Path::new("/b"), spec)).unwrap();
        assert_eq!(first.oom_score_adj, Some(11));
        let again = remembered(spec, || panic!("the same spec is parsed again")).unwrap();
        assert_eq!(again.oom_score_adj, Some(11));
        // through the public door as well, and the filter is the very same program
        let spec = r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW",
            "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":9}]}}}"#;
        let a = confinement(spec).unwrap().seccomp.unwrap();
        let b = confinement(spec).unwrap().seccomp.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // failures are not remembered
        let bad = b"{not json, worked out once}";
        assert!(remembered(bad, || Confinement::parse_config(9, Path::new("/b"), bad)).is_err());
        let mut called = false;
        let _ = remembered(bad, || {
            called = true;
            Confinement::parse_config(9, Path::new("/b"), bad)
        });
        assert!(called);
    }

    #[test]
    fn what_cannot_be_applied_fails_closed() {
        let msg = |json: &str| confinement(json).unwrap_err().to_string();
        assert!(
            msg(r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_NOTIFY"}}}"#)
                .contains("SCMP_ACT_NOTIFY")
        );
        assert!(
            msg(r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}}}"#)
            .contains("SCMP_ACT_NOTIFY")
        );
        assert!(
            msg(r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW","x":1}}}"#)
                .contains("unknown field")
        );
        assert!(
            msg(r#"{"linux":{"seccomp":{"defaultAction":"SCMP_ACT_NOPE"}}}"#)
                .contains("unknown action")
        );
        assert!(msg(r#"{"linux":{"seccomp":"yes"}}"#).contains("/b/config.json"));
        assert!(msg(r#"{"process":{"oomScoreAdj":5000}}"#).contains("oomScoreAdj"));
        assert!(msg("not json").contains("parsing /b/config.json"));
    }

    #[test]
    fn a_missing_bundle_or_config_fails_closed() {
        let sys = FakeSys::default();
        let err = Confinement::resolve(&sys, 9, None, None).unwrap_err();
        assert!(matches!(err, Error::NoSpec { pid: 9, .. }), "{err}");
        assert!(err.to_string().contains("bundle is not known"), "{err}");
        let err = Confinement::resolve(&sys, 9, Some(Path::new("/nope")), None).unwrap_err();
        assert!(err.to_string().contains("/nope/config.json"), "{err}");
        // a runtime that says nothing about seccomp does not help
        let silent = ProcessSpec {
            oom_score_adj: Some(5),
            ..Default::default()
        };
        let err = Confinement::resolve(&sys, 9, None, Some(&silent)).unwrap_err();
        assert!(err.to_string().contains("did not send"), "{err}");

        let sys = FakeSys::default().file("/b/config.json", r#"{"process":{"oomScoreAdj":3}}"#);
        let c = Confinement::resolve(&sys, 9, Some(Path::new("/b")), None).unwrap();
        assert_eq!(c.oom_score_adj, Some(3));
    }

    #[test]
    fn the_runtime_stands_in_only_when_it_settles_the_question_and_the_bundle_wins() {
        let sys = FakeSys::default().file("/b/config.json", r#"{"linux":{}}"#);
        let policy: Profile = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let sent = ProcessSpec {
            oom_score_adj: Some(-20),
            seccomp: RuntimeSeccomp::Policy(policy),
            ..Default::default()
        };
        // no bundle: the runtime's policy and OOM score
        let c = Confinement::resolve(&sys, 9, None, Some(&sent)).unwrap();
        assert!(c.seccomp.is_some());
        assert_eq!(c.oom_score_adj, Some(-20));
        // the bundle read: it wins, here with no filter and no OOM score
        let c = Confinement::resolve(&sys, 9, Some(Path::new("/b")), Some(&sent)).unwrap();
        assert!(c.seccomp.is_none());
        assert_eq!(c.oom_score_adj, None);
        // "unconfined" from the runtime is an answer
        let unconfined = ProcessSpec {
            seccomp: RuntimeSeccomp::Unconfined,
            ..Default::default()
        };
        let c = Confinement::resolve(&sys, 9, None, Some(&unconfined)).unwrap();
        assert!(c.seccomp.is_none());
        // a runtime policy we cannot serve fails like a bundle's
        let notify = ProcessSpec {
            seccomp: RuntimeSeccomp::Policy(
                serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).unwrap(),
            ),
            ..Default::default()
        };
        let err = Confinement::resolve(&sys, 9, None, Some(&notify)).unwrap_err();
        assert!(err.to_string().contains("SCMP_ACT_NOTIFY"), "{err}");
    }
}
