//! One unix socket server per gated container.
//!
//! The socket lives in `<base>/<container id>/gate.sock` on the host; that directory is
//! bind-mounted read-only into the container only. A connecting peer is accepted only when its
//! process shares both the PID and the mount namespace of the container's init (a sibling in a
//! pod that shares its PID namespace still has its own mount namespace). Each connection may send
//! one request of at most [`protocol::MAX_MESSAGE`] bytes within [`REQUEST_TIMEOUT`]; at most
//! [`MAX_CONNECTIONS`] are served at once per container, further ones are closed unread.
//! Warnings a container can trigger are rate-limited per container.
//!
//! A `STOP` becomes a stop request on the core's one input ([`Inbox::stop_requested`]); the
//! core's state machine runs one PreStop per stop and gives a retry, or a second gate
//! connection, that same outcome.

use std::collections::HashMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::protocol;
use super::state::{self, GateRecord, Records};
use super::{inject::is_gated, GateError};
use crate::core::{Inbox, PreStopOutcome};
use crate::lock::lock;
use crate::model::{Container, ContainerState};
use crate::ns::pidfd::PidFd;

/// Connections served at once per container.
pub const MAX_CONNECTIONS: usize = 4;
/// How long a peer has to send its whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning per container in this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Identity of a namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NsId {
    dev: u64,
    ino: u64,
}

fn ns_id(pid: u32, kind: &str) -> std::io::Result<NsId> {
    let m = fs::metadata(format!("/proc/{pid}/ns/{kind}"))?;
    Ok(NsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Who may talk to a container's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    pid_ns: NsId,
    mnt_ns: NsId,
}

impl Identity {
    fn of(pid: u32) -> std::io::Result<Identity> {
        Ok(Identity {
            pid_ns: ns_id(pid, "pid")?,
            mnt_ns: ns_id(pid, "mnt")?,
        })
    }
}

/// Rate limiter for warnings a container can trigger.
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// Returns `Some(suppressed since last time)` when a warning may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// State of one container's socket.
struct Socket {
    id: String,
    identity: Mutex<Option<Identity>>,
    warn_limit: Mutex<RateLimit>,
    connections: Arc<Semaphore>,
    inbox: Inbox,
}

impl Socket {
    fn warn(&self, why: &str, detail: &str) {
        if let Some(suppressed) = lock(&self.warn_limit).allow() {
            warn!(
                container = %self.id,
                suppressed,
                detail,
                "gate socket: {why}"
            );
        }
    }

    async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    self.warn("accept failed", &e.to_string());
                    // Out of fds or similar: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let allowed = self.peer_allowed(&stream);
            let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                self.warn("too many connections, closing one unread", "");
                continue;
            };
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                me.handle(stream, allowed).await;
                drop(permit);
            });
        }
    }

    /// Whether the peer is a process of this container.
    fn peer_allowed(&self, stream: &UnixStream) -> bool {
        let pid = match stream.peer_cred().map(|c| c.pid()) {
            Ok(Some(pid)) if pid > 0 => pid as u32,
            _ => {
                self.warn("peer without credentials refused", "");
                return false;
            }
        };
        let expected = *lock(&self.identity);
        let allowed = match (expected, Identity::of(pid)) {
            (Some(want), Ok(have)) => want == have,
            _ => false,
        };
        if !allowed {
            self.warn("peer outside the container refused", &format!("pid {pid}"));
        }
        allowed
    }

    /// Reads one request (bounded in size and time) and answers it; a refused peer is
    /// answered `REFUSED` after its request was read, so the answer is not lost to a reset.
    async fn handle(&self, mut stream: UnixStream, allowed: bool) {
        let mut head = [0u8; protocol::HEADER_LEN];
        let mut payload = [0u8; protocol::MAX_PAYLOAD];
        let read = async {
            stream.read_exact(&mut head).await?;
            let header = protocol::decode_header(&head).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}"))
            })?;
            let len = header.len as usize;
            stream.read_exact(&mut payload[..len]).await?;
            Ok::<_, std::io::Error>((header, len))
        };
        let (header, len) = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.warn("unreadable request", &e.to_string());
                return;
            }
            Err(_) => {
                self.warn("request not sent in time", "");
                return;
            }
        };
        let (status, reason) = if !allowed {
            (
                protocol::STATUS_REFUSED,
                String::from("not a process of this container"),
            )
        } else if header.version != protocol::VERSION || header.kind != protocol::MSG_STOP {
            self.warn(
                "unsupported request",
                &format!("version {} type {}", header.version, header.kind),
            );
            (
                protocol::STATUS_UNSUPPORTED,
                String::from("unsupported request"),
            )
        } else if let Some(signal) = protocol::decode_stop(&payload[..len]) {
            debug!(container = %self.id, signal, "gate holds a stop signal");
            match self.inbox.stop_requested(&self.id, signal as i32).await {
                PreStopOutcome::Done => (protocol::STATUS_DONE, String::new()),
                PreStopOutcome::Failed(r) => (protocol::STATUS_FAILED, r),
                PreStopOutcome::TimedOut => (protocol::STATUS_TIMED_OUT, String::new()),
            }
        } else {
            self.warn("malformed stop request", "");
            (
                protocol::STATUS_UNSUPPORTED,
                String::from("malformed request"),
            )
        };
        let mut out = [0u8; protocol::MAX_MESSAGE];
        let n = protocol::encode_reply(status, &reason, &mut out);
        if let Err(e) = stream.write_all(&out[..n]).await {
            // The gate gave up waiting (deadline or second signal): nothing to do.
            debug!(container = %self.id, %e, "gate left before the answer");
        }
    }
}

struct Entry {
    socket: Arc<Socket>,
    task: JoinHandle<()>,
    dir: PathBuf,
}

/// The gate sockets of all gated containers, and their records (see [`state`]).
pub struct GateServers {
    base: PathBuf,
    inbox: Inbox,
    entries: Mutex<HashMap<String, Entry>>,
    records: Records,
}

/// A gated container found in the records at start-up, its socket open again.
#[derive(Debug)]
pub struct Recovered {
    pub record: GateRecord,
    /// Its init process, when it had started (checked by PID and start time).
    pub init: Option<Arc<PidFd>>,
}

/// Opens `pid` and checks it is the process that started at `start` (when known); returns
/// the handle and the start time.
fn verified_init(pid: u32, start: Option<u64>) -> Option<(PidFd, u64)> {
    let fd = PidFd::open(pid).ok()?;
    // Read after the pidfd was opened: the same start time now means the pidfd names the
    // process that started then, not a later one with its PID.
    let now = state::start_time(pid).ok()?;
    if start.is_some_and(|s| s != now) || !fd.is_alive() {
        return None;
    }
    Some((fd, now))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl GateServers {
    /// Sockets go to `base/<container id>/gate.sock`; stop requests go to the core's `inbox`.
    pub fn new(base: PathBuf, inbox: Inbox) -> GateServers {
        GateServers {
            records: Records::new(&base),
            base,
            inbox,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Writes the record of a gated container (atomically; see [`state`]).
    pub fn save(&self, record: &GateRecord) -> Result<(), GateError> {
        if !valid_id(&record.id) {
            return Err(GateError::BadContainerId {
                id: record.id.clone(),
            });
        }
        self.records.save(record).map_err(GateError::State)
    }

    /// After the plugin (re)started: re-opens the socket of every recorded container whose
    /// init process is still the one recorded (or which has not started yet), so that its
    /// gate reaches this process at its next stop signal, and removes the records and
    /// directories of the others. `init_pid` names the init process of a container whose
    /// record does not (started just before the plugin stopped), e.g. from its bundle.
    pub fn recover(&self, init_pid: &dyn Fn(&str) -> Option<u32>) -> Vec<Recovered> {
        let mut recovered = Vec::new();
        for id in self.records.ids() {
            if !valid_id(&id) {
                let _ = self.records.remove(&id);
                continue;
            }
            let mut record = match self.records.load(&id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    warn!(container = %id, error = %e, "unreadable gate record removed");
                    self.remove(&id);
                    continue;
                }
            };
            let (pid, start) = if record.pid != 0 {
                (record.pid, Some(record.start_time))
            } else {
                (init_pid(&id).unwrap_or(0), None)
            };
            let init = if pid != 0 {
                match verified_init(pid, start) {
                    Some((fd, now)) => {
                        if record.pid == 0 {
                            record.pid = pid;
                            record.start_time = now;
                            if let Err(e) = self.save(&record) {
                                warn!(container = %id, error = %e, "cannot update the gate record");
                            }
                        }
                        Some(Arc::new(fd))
                    }
                    None => {
                        debug!(container = %id, pid, "recorded container is gone: its gate state is removed");
                        self.remove(&id);
                        continue;
                    }
                }
            } else {
                None
            };
            if let Err(e) = self.open(&id) {
                warn!(container = %id, error = %e, "cannot re-open the gate socket");
            } else if let Some(fd) = &init {
                if let Err(e) = self.set_init_pid(&id, fd.pid()) {
                    warn!(container = %id, error = %e, "gate socket cannot know its container");
                }
            }
            recovered.push(Recovered { record, init });
        }
        recovered
    }

    /// The host directory holding a container's socket (the source of its bind mount).
    pub fn socket_dir(&self, container_id: &str) -> Result<PathBuf, GateError> {
        if !valid_id(container_id) {
            return Err(GateError::BadContainerId {
                id: container_id.to_string(),
            });
        }
        Ok(self.base.join(container_id))
    }

    /// Creates the container's directory and socket and starts serving it; returns the
    /// directory. Call at `CreateContainer` (before the container can start). Calling it
    /// again for an open container returns the same directory. Needs a tokio runtime.
    pub fn open(&self, container_id: &str) -> Result<PathBuf, GateError> {
        let dir = self.socket_dir(container_id)?;
        let mut entries = lock(&self.entries);
        if entries.contains_key(container_id) {
            return Ok(dir);
        }
        let sock_err = |path: &Path, source| GateError::Socket {
            id: container_id.to_string(),
            path: path.to_path_buf(),
            source,
        };
        fs::create_dir_all(&dir).map_err(|source| GateError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|source| {
            GateError::CreateDir {
                path: dir.clone(),
                source,
            }
        })?;
        let path = dir.join(protocol::SOCKET_NAME);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(sock_err(&path, e)),
            _ => {}
        }
        // Bind through the directory's descriptor: `/proc/self/fd/N/gate.sock` stays short
        // whatever the runtime directory and container id, while a socket path is limited to
        // 107 bytes.
        let dir_fd = fs::File::open(&dir).map_err(|e| sock_err(&dir, e))?;
        let short = PathBuf::from(format!(
            "/proc/self/fd/{}/{}",
            dir_fd.as_raw_fd(),
            protocol::SOCKET_NAME
        ));
        let std_listener =
            std::os::unix::net::UnixListener::bind(&short).map_err(|e| sock_err(&path, e))?;
        drop(dir_fd);
        // Non-root container users must be able to connect; the peer check does the rest.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
            .map_err(|e| sock_err(&path, e))?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| sock_err(&path, e))?;
        let listener = UnixListener::from_std(std_listener).map_err(|e| sock_err(&path, e))?;
        let socket = Arc::new(Socket {
            id: container_id.to_string(),
            identity: Mutex::new(None),
            warn_limit: Mutex::new(RateLimit {
                last: None,
                suppressed: 0,
            }),
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            inbox: self.inbox.clone(),
        });
        let task = tokio::spawn(Arc::clone(&socket).serve(listener));
        debug!(container = %container_id, path = %path.display(), "gate socket open");
        entries.insert(
            container_id.to_string(),
            Entry {
                socket,
                task,
                dir: dir.clone(),
            },
        );
        Ok(dir)
    }

    /// Records the container's init process (from `StartContainer`, `PostStartContainer` or
    /// `Synchronize`): from now on only processes sharing its PID and mount namespaces are
    /// served. Until this is called every peer is refused.
    pub fn set_init_pid(&self, container_id: &str, pid: u32) -> Result<(), GateError> {
        let entries = lock(&self.entries);
        let entry = entries
            .get(container_id)
            .ok_or_else(|| GateError::NotOpen {
                id: container_id.to_string(),
            })?;
        let identity = Identity::of(pid).map_err(|source| GateError::InitNamespaces {
            id: container_id.to_string(),
            pid,
            source,
        })?;
        *lock(&entry.socket.identity) = Some(identity);
        Ok(())
    }

    /// Whether the container has an open socket.
    pub fn is_open(&self, container_id: &str) -> bool {
        lock(&self.entries).contains_key(container_id)
    }

    /// Stops serving the container's socket and removes its directory (`RemoveContainer`, or
    /// a create that failed). A PreStop already running finishes on its own.
    pub fn remove(&self, container_id: &str) {
        let entry = lock(&self.entries).remove(container_id);
        let dir = match entry {
            Some(e) => {
                e.task.abort();
                e.dir
            }
            None => match self.socket_dir(container_id) {
                Ok(d) => d,
                Err(_) => return,
            },
        };
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                warn!(container = %container_id, dir = %dir.display(), %e, "cannot remove gate directory");
            }
            _ => {}
        }
        if let Err(e) = self.records.remove(container_id) {
            warn!(container = %container_id, error = %e, "cannot remove gate record");
        }
    }

    /// After a plugin restart (`Synchronize`): re-creates the sockets of gated containers that
    /// still exist (created, running or paused), records their init processes, and removes
    /// the directories of containers that are gone. Returns the containers that failed.
    pub fn resync(&self, containers: &[Container]) -> Vec<(String, GateError)> {
        let mut failed = Vec::new();
        let mut keep = std::collections::HashSet::new();
        for c in containers {
            let alive = matches!(
                c.state,
                ContainerState::Created | ContainerState::Running | ContainerState::Paused
            );
            if !is_gated(c) || !alive {
                continue;
            }
            keep.insert(c.id.clone());
            if let Err(e) = self.open(&c.id) {
                failed.push((c.id.clone(), e));
                continue;
            }
            if c.pid > 0 {
                if let Err(e) = self.set_init_pid(&c.id, c.pid) {
                    failed.push((c.id.clone(), e));
                }
            }
        }
        let stale: Vec<String> = lock(&self.entries)
            .keys()
            .filter(|id| !keep.contains(*id))
            .cloned()
            .collect();
        for id in stale {
            self.remove(&id);
        }
        if let Ok(rd) = fs::read_dir(&self.base) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                if !keep.contains(&name) && valid_id(&name) {
                    self.remove(&name);
                }
            }
        }
        for id in self.records.ids() {
            if !keep.contains(&id) {
                self.remove(&id);
            }
        }
        failed
    }

    /// Stops every server (plugin shutdown). Directories stay: a restarted plugin re-opens them.
    pub fn shutdown(&self) {
        for (_, e) in lock(&self.entries).drain() {
            e.task.abort();
        }
    }
}
