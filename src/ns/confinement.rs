//! What confines a container's processes beyond their identity: its seccomp filter and its OOM
//! score adjustment, read from the OCI spec the runtime runs it with (the bundle's
//! `config.json`).
//!
//! This fails closed: an exec hook must never run with less confinement than the container.
//! When the spec cannot be read (no bundle known, the file missing or unreadable, not JSON),
//! or when its `linux.seccomp` cannot be translated or loaded by us, the hook does not run
//! and the error says why. Only a spec that was read and has no `linux.seccomp` means "no
//! filter".
//!
//! Compiling a profile the size of containerd's default one takes libseccomp about 20 ms, so
//! compiled filters are kept, by the exact text of their profile, in a small process-wide
//! cache: every container that runs the runtime's default profile shares one program.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use serde::Deserialize as _;

use super::seccomp::{self, Filter, Profile};
use super::sys::Sys;
use super::Error;

/// The container's seccomp filter (compiled) and OOM score adjustment.
#[derive(Debug, Default)]
pub struct Confinement {
    /// `None`: the spec has no `linux.seccomp`.
    pub seccomp: Option<Arc<Filter>>,
    /// `process.oomScoreAdj`; `None` when the spec sets none.
    pub oom_score_adj: Option<i32>,
}

impl Confinement {
    /// Reads the confinement of the container whose init is `pid` from `<bundle>/config.json`.
    pub fn from_bundle(sys: &dyn Sys, pid: u32, bundle: Option<&Path>) -> Result<Self, Error> {
        let Some(bundle) = bundle else {
            return Err(Error::NoSpec {
                pid,
                reason: "the container's bundle is not known".into(),
            });
        };
        let config = bundle.join("config.json");
        let bytes = sys.read(&config).map_err(|e| Error::NoSpec {
            pid,
            reason: format!("reading {}: {e}", config.display()),
        })?;
        Confinement::from_config(pid, &config, &bytes)
    }

    /// The confinement in the text of an OCI `config.json` (`config` names it in errors).
    pub fn from_config(pid: u32, config: &Path, bytes: &[u8]) -> Result<Self, Error> {
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
            Some(v) => Some(compiled(v).map_err(seccomp_err)?),
        };
        let oom_score_adj = match spec.pointer("/process/oomScoreAdj") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .filter(|n| (-1000..=1000).contains(n))
                    .ok_or_else(|| Error::Parse {
                        path: config.to_owned(),
                        reason: format!("process.oomScoreAdj {v} is not in -1000..=1000"),
                    })?,
            ),
        };
        Ok(Confinement {
            seccomp,
            oom_score_adj,
        })
    }
}

/// How many compiled filters are kept (a node runs few distinct profiles; past this the
/// cache starts again, so it stays bounded whatever the containers bring).
const CACHED: usize = 32;

static COMPILED: LazyLock<Mutex<HashMap<String, Arc<Filter>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The filter of the profile `v`, compiled now or taken from the cache. The key is the
/// profile's whole JSON text, so two profiles share a program only when they are equal.
fn compiled(v: &serde_json::Value) -> Result<Arc<Filter>, String> {
    let key = v.to_string();
    let cache = || COMPILED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(filter) = cache().get(&key) {
        return Ok(Arc::clone(filter));
    }
    let profile = Profile::deserialize(v).map_err(|e| e.to_string())?;
    let filter = Arc::new(seccomp::compile(&profile)?);
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
        let err = Confinement::from_bundle(&sys, 9, None).unwrap_err();
        assert!(matches!(err, Error::NoSpec { pid: 9, .. }), "{err}");
        assert!(err.to_string().contains("bundle is not known"), "{err}");
        let err = Confinement::from_bundle(&sys, 9, Some(Path::new("/nope"))).unwrap_err();
        assert!(err.to_string().contains("/nope/config.json"), "{err}");

        let sys = FakeSys::default().file("/b/config.json", r#"{"process":{"oomScoreAdj":3}}"#);
        let c = Confinement::from_bundle(&sys, 9, Some(Path::new("/b"))).unwrap();
        assert_eq!(c.oom_score_adj, Some(3));
    }
}
