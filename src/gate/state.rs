//! What must outlive the plugin process for a gated container: one small JSON record per
//! container, so that a restarted plugin can serve the container's gate before the runtime
//! synchronizes, and never runs a PreStop twice.
//!
//! Records live in `<gate sockets>/.state/<container id>.json`, next to the per-container
//! socket directories but outside every one of them (a container sees only its own socket
//! directory, never its record). Each write goes to a temporary file that is renamed over
//! the record, so a plugin killed mid-write leaves the old record or the new one, never half
//! of one. The runtime directory is normally a tmpfs: a write takes microseconds.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::annotations::{
    CONTAINER_PORTS_KEY, GRACE_PERIOD_KEY, POST_START_PREFIX, PRE_STOP_PREFIX,
};
use crate::model::{Container, Namespace, Pod};

use super::inject::{GATED_ANNOTATION, TERMINATION_MESSAGE_PATH_ANNOTATION};

/// Version of the record's layout; records of another version are dropped.
pub const RECORD_VERSION: u32 = 1;

/// Name of the directory holding the records, inside the sockets' base directory (a name no
/// container id can have).
pub const STATE_DIR: &str = ".state";

/// Where the gate of a recorded container stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedGate {
    /// Injected at create; not confirmed yet.
    Injected,
    /// The gate is the container's PID 1.
    Gated,
    /// The runtime runs the original entrypoint.
    Ungated,
}

/// How far the container's PreStop got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordedPreStop {
    /// It started and had not ended when the record was last written.
    Running,
    Done,
    Failed(String),
    TimedOut,
}

/// One gated container, as a restarted plugin needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    pub version: u32,
    pub id: String,
    pub pod_id: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub name: String,
    /// The pod's annotations hooks are read from (ours).
    pub pod_annotations: BTreeMap<String, String>,
    /// The container's annotations hooks are read from (ours, the grace period, named ports,
    /// the termination-message path, the gate marker).
    pub annotations: BTreeMap<String, String>,
    pub pod_ips: Vec<IpAddr>,
    /// The pod's network namespace, when the runtime named it.
    pub netns: Option<String>,
    /// The container's init process (0 until it started) and its start time in clock ticks
    /// after boot (`/proc/<pid>/stat`), which tells it from a later process with its PID.
    pub pid: u32,
    pub start_time: u64,
    pub gate: RecordedGate,
    pub pre_stop: Option<RecordedPreStop>,
}

/// Whether an annotation is one a hook or the gate is derived from.
fn kept(key: &str) -> bool {
    key.starts_with(POST_START_PREFIX)
        || key.starts_with(PRE_STOP_PREFIX)
        || key == GRACE_PERIOD_KEY
        || key == CONTAINER_PORTS_KEY
        || key == TERMINATION_MESSAGE_PATH_ANNOTATION
        || key == GATED_ANNOTATION
}

fn kept_annotations(all: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    all.iter()
        .filter(|(k, _)| kept(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl GateRecord {
    /// The record of a container whose gate was just injected.
    pub fn new(pod: &Pod, container: &Container) -> GateRecord {
        let mut record = GateRecord {
            version: RECORD_VERSION,
            id: container.id.clone(),
            pod_id: String::new(),
            pod_namespace: String::new(),
            pod_name: String::new(),
            pod_uid: String::new(),
            name: String::new(),
            pod_annotations: BTreeMap::new(),
            annotations: BTreeMap::new(),
            pod_ips: Vec::new(),
            netns: None,
            pid: 0,
            start_time: 0,
            gate: RecordedGate::Injected,
            pre_stop: None,
        };
        record.update(pod, container);
        record
    }

    /// Takes what the runtime says now about the pod and the container (not the init process).
    pub fn update(&mut self, pod: &Pod, container: &Container) {
        self.pod_id = container.pod_id.clone();
        self.pod_namespace = pod.namespace.clone();
        self.pod_name = pod.name.clone();
        self.pod_uid = pod.uid.clone();
        self.name = container.name.clone();
        self.pod_annotations = kept_annotations(&pod.annotations);
        self.annotations = kept_annotations(&container.annotations);
        if !pod.ips.is_empty() {
            self.pod_ips = pod.ips.clone();
        }
        if let Some(netns) = pod.netns_path() {
            self.netns = Some(netns.to_string());
        }
    }

    /// The pod as far as the record knows it.
    pub fn pod(&self) -> Pod {
        Pod {
            id: self.pod_id.clone(),
            name: self.pod_name.clone(),
            uid: self.pod_uid.clone(),
            namespace: self.pod_namespace.clone(),
            annotations: self.pod_annotations.clone(),
            ips: self.pod_ips.clone(),
            namespaces: self
                .netns
                .iter()
                .map(|path| Namespace {
                    kind: "network".into(),
                    path: path.clone(),
                })
                .collect(),
            ..Pod::default()
        }
    }

    /// The container as far as the record knows it (its process spec is left empty: hooks
    /// then take the container's identity from its bundle and its init process).
    pub fn container(&self) -> Container {
        Container {
            id: self.id.clone(),
            pod_id: self.pod_id.clone(),
            name: self.name.clone(),
            annotations: self.annotations.clone(),
            pid: self.pid,
            ..Container::default()
        }
    }
}

/// Errors of the record store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a record of this plugin: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The records of one sockets' base directory.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// Records kept in `base/.state`.
    pub fn new(base: &Path) -> Records {
        Records {
            dir: base.join(STATE_DIR),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes the record atomically (temporary file, then rename). The caller checked the id.
    pub fn save(&self, record: &GateRecord) -> Result<(), StateError> {
        let path = self.path(&record.id);
        let err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec(record)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        fs::create_dir_all(&self.dir).map_err(err)?;
        let tmp = self.dir.join(format!(".{}.tmp", record.id));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&text).map_err(err)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(err)
    }

    /// Reads the record of one container, `None` when there is none.
    pub fn load(&self, id: &str) -> Result<Option<GateRecord>, StateError> {
        let path = self.path(id);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let record: GateRecord =
            serde_json::from_slice(&text).map_err(|e| StateError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if record.version != RECORD_VERSION || record.id != id {
            return Err(StateError::Invalid {
                path,
                reason: format!("version {} for id {:?}", record.version, record.id),
            });
        }
        Ok(Some(record))
    }

    /// The ids that have a record (leftover temporary files are removed on the way).
    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            } else if let Some(id) = name.strip_suffix(".json") {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        ids
    }

    /// Removes the record of a container (absent is fine).
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StateError::Write { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// The start time of process `pid` in clock ticks after boot (field 22 of
/// `/proc/<pid>/stat`): with the PID it names one process for the life of the machine.
pub fn start_time(pid: u32) -> std::io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })
}

/// Field 22 of a `/proc/<pid>/stat` line; the command (field 2) may hold spaces and
/// parentheses, so fields are counted from its last `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the command: field 3 (state) is the first, field 22 the twentieth.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_read_after_the_command() {
        let stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        assert_eq!(parse_start_time(stat), Some(98765));
        assert_eq!(parse_start_time("42 (x) S 1"), None);
        let own = start_time(std::process::id()).unwrap();
        assert!(own > 0);
        assert_eq!(start_time(std::process::id()).unwrap(), own);
    }

    #[test]
    fn records_are_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path());
        let mut pod = Pod {
            id: "p1".into(),
            name: "web".into(),
            namespace: "default".into(),
            ips: vec!["10.0.0.5".parse().unwrap()],
            ..Pod::default()
        };
        pod.annotations
            .insert(format!("{PRE_STOP_PREFIX}pod"), "{}".into());
        pod.annotations
            .insert("secret.example/x".into(), "no".into());
        let mut c = Container {
            id: "c1".into(),
            pod_id: "p1".into(),
            name: "app".into(),
            ..Container::default()
        };
        c.annotations.insert(GRACE_PERIOD_KEY.into(), "5".into());
        c.annotations.insert("other".into(), "no".into());
        let mut record = GateRecord::new(&pod, &c);
        record.pid = 7;
        record.start_time = 99;
        record.pre_stop = Some(RecordedPreStop::Failed("x".into()));
        records.save(&record).unwrap();
        assert_eq!(records.ids(), vec!["c1"]);
        let back = records.load("c1").unwrap().unwrap();
        assert_eq!(back, record);
        assert_eq!(back.pod_annotations.len(), 1);
        assert_eq!(back.annotations.len(), 1);
        assert_eq!(back.pod().ips, pod.ips);
        assert_eq!(back.container().pid, 7);
        // A torn temporary file is cleaned away; a bad record is an error, not a panic.
        fs::write(records.dir().join(".c2.tmp"), "{").unwrap();
        fs::write(records.dir().join("c3.json"), "{").unwrap();
        assert_eq!(records.ids(), vec!["c1", "c3"]);
        assert!(!records.dir().join(".c2.tmp").exists());
        assert!(records.load("c3").is_err());
        assert!(records.load("c4").unwrap().is_none());
        records.remove("c1").unwrap();
        records.remove("c1").unwrap();
        assert_eq!(records.ids(), vec!["c3"]);
    }
}
