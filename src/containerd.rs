//! containerd's own gRPC API, for the stored-spec rewrite on runtimes that ignore the NRI args
//! adjustment (containerd 1.7, 2.0 and 2.1).
//!
//! On those runtimes `PostCreateContainer` arrives before the task exists, so rewriting
//! `process.args` of the container's stored OCI spec (`Containers.Get`, edit the JSON,
//! `Containers.Update` with the field mask `spec`) makes `StartContainer` create the task with
//! the gate as PID 1.
//!
//! The socket is found without configuration: an explicit setting wins; otherwise, when
//! containerd launched the plugin, its command line (`--address`, or `--config` and the
//! `[grpc] address` in that file), else `/etc/containerd/config.toml`, else the default
//! socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::Request;
use tracing::debug;

use crate::gate::{args_are_gated, gate_args, GateParams};

mod api;

use api::{Containers, GetContainerRequest};

/// containerd's gRPC socket when nothing says otherwise.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// containerd's config file when its command line names none.
pub const DEFAULT_CONFIG: &str = "/etc/containerd/config.toml";
/// The containerd namespace of CRI containers.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// gRPC metadata key naming the containerd namespace.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// Bound of one Get + Update round, connecting included (the runtime waits for
/// `PostCreateContainer`). Shorter than the core's budget for that request, so that a round
/// that stalls drops its connection (the next one starts afresh) before the budget ends.
pub const RPC_TIMEOUT: Duration = Duration::from_millis(700);

/// Errors of the containerd client.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    #[error("cannot connect to containerd at {address}: {source}")]
    Connect {
        address: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("containerd {op} of container {id} failed: {status}")]
    Rpc {
        op: &'static str,
        id: String,
        status: Box<tonic::Status>,
    },
    #[error("containerd {op} of container {id} took longer than {RPC_TIMEOUT:?}")]
    Timeout { op: &'static str, id: String },
    #[error("container {id} has no stored spec")]
    NoSpec { id: String },
    #[error("stored spec of container {id} is not an OCI spec: {reason}")]
    BadSpec { id: String, reason: String },
    #[error("bad containerd namespace {namespace:?}")]
    BadNamespace { namespace: String },
}

/// What [`Client::gate_stored_spec`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// `process.args` now start with the gate.
    Rewritten,
    /// They already did (the NRI args adjustment took effect, or an earlier rewrite).
    AlreadyGated,
}

/// A table header (`[a."b.c"]`, `[a.'b.c']`, `[ a.b.c ]`) as plain dotted text, so that the
/// quoting of config version 2 and 3 compares equal.
fn plain_table(header: &str) -> String {
    header
        .trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .chars()
        .filter(|c| !matches!(c, '"' | '\'' | ' ' | '\t'))
        .collect()
}

/// The raw text after `=` of `key` in table `table` (`""` for the top level, before any
/// table) of a containerd config file (any config version), comments cut off.
fn config_raw<'a>(toml: &'a str, table: &str, key: &str) -> Option<&'a str> {
    let want = plain_table(table);
    let mut current = String::new();
    for raw in toml.lines() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = plain_table(line);
            continue;
        }
        if current != want {
            continue;
        }
        let Some((k, value)) = line.split_once('=') else {
            continue;
        };
        if k.trim().trim_matches('"').trim_matches('\'') != key {
            continue;
        }
        return Some(value.trim());
    }
    None
}

/// A string value of a containerd config file (any config version): `key` in table `table`
/// (`""` for the top level, before any table), when set and quoted.
fn config_string(toml: &str, table: &str, key: &str) -> Option<String> {
    let value = config_raw(toml, table, key)?;
    let quote = value.chars().next()?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let rest = &value[1..];
    let end = rest.find(quote)?;
    let v = &rest[..end];
    (!v.is_empty()).then(|| v.to_string())
}

/// A boolean value of a containerd config file, when set.
fn config_bool(toml: &str, table: &str, key: &str) -> Option<bool> {
    let value = config_raw(toml, table, key)?;
    let word = value.split('#').next().unwrap_or("").trim();
    match word {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// The `[grpc] address` of a containerd config file (any config version), if set.
pub fn grpc_address_from_config(toml: &str) -> Option<String> {
    config_string(toml, "grpc", "address")
}

/// The top-level `state` directory of a containerd config file, if set.
pub fn state_dir_from_config(toml: &str) -> Option<String> {
    config_string(toml, "", "state")
}

/// What containerd's command line says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub address: Option<String>,
    pub config: Option<String>,
    pub state: Option<String>,
}

/// Reads `--address`, `--config` and `--state` from containerd's command line.
pub fn flags_from_cmdline(cmdline: &[u8]) -> Flags {
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut flags = Flags::default();
    let mut i = 1;
    while i < args.len() {
        let a = args[i].as_str();
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with('-') => (n, Some(v.to_string())),
            _ => (a, None),
        };
        let slot = match name {
            "--config" | "-config" | "-c" => Some(&mut flags.config),
            "--address" | "-address" | "-a" => Some(&mut flags.address),
            "--state" | "-state" => Some(&mut flags.state),
            _ => None,
        };
        if let Some(slot) = slot {
            match inline {
                Some(v) => *slot = Some(v),
                None => {
                    if let Some(v) = args.get(i + 1) {
                        *slot = Some(v.clone());
                        i += 1;
                    }
                }
            }
        }
        i += 1;
    }
    flags
}

/// containerd's default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/containerd";

/// Where containerd is: its gRPC socket and its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub address: PathBuf,
    pub state: PathBuf,
}

impl Location {
    /// The OCI bundle directory of a running container (task) in `namespace`: it holds the
    /// `config.json` the runtime runs the container with. `None` for an id or namespace that
    /// cannot name a directory.
    pub fn bundle(&self, namespace: &str, container_id: &str) -> Option<PathBuf> {
        let plain = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains('/');
        (plain(namespace) && plain(container_id)).then(|| {
            self.state
                .join("io.containerd.runtime.v2.task")
                .join(namespace)
                .join(container_id)
        })
    }
}

/// The runtime's command-line flags and the text of its config file: from the runtime's
/// command line when it is containerd (`runtime_pid`, else our parent), then its config file
/// (`--config`, else [`DEFAULT_CONFIG`]). Empty when none can be read.
fn runtime_config(runtime_pid: Option<u32>) -> (Flags, String) {
    // The runtime at the other end of the NRI socket (both launch modes), else our parent
    // (the runtime that started a pre-installed plugin).
    let ppid = runtime_pid
        .filter(|&p| p != 0)
        .unwrap_or_else(std::os::unix::process::parent_id);
    let parent_is_containerd = std::fs::read_link(format!("/proc/{ppid}/exe"))
        .map(|exe| {
            exe.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("containerd"))
        })
        .unwrap_or(false);
    let flags = if parent_is_containerd {
        std::fs::read(format!("/proc/{ppid}/cmdline"))
            .map(|c| flags_from_cmdline(&c))
            .unwrap_or_default()
    } else {
        Flags::default()
    };
    let config = flags
        .config
        .clone()
        .unwrap_or_else(|| DEFAULT_CONFIG.to_string());
    // A config path relative to containerd's working directory.
    let config = if Path::new(&config).is_relative() && parent_is_containerd {
        PathBuf::from(format!("/proc/{ppid}/cwd")).join(config)
    } else {
        PathBuf::from(config)
    };
    let text = std::fs::read_to_string(&config).unwrap_or_default();
    (flags, text)
}

/// Finds containerd's gRPC socket and state directory: the configured values win; otherwise,
/// from the runtime's command line when it is containerd (`runtime_pid`, else our parent),
/// then its config file (`--config`, else [`DEFAULT_CONFIG`]), then the defaults.
pub fn discover(
    configured_address: Option<&Path>,
    configured_state: Option<&Path>,
    runtime_pid: Option<u32>,
) -> Location {
    if let (Some(address), Some(state)) = (configured_address, configured_state) {
        return Location {
            address: address.to_path_buf(),
            state: state.to_path_buf(),
        };
    }
    let (flags, text) = runtime_config(runtime_pid);
    let address = configured_address
        .map(Path::to_path_buf)
        .or_else(|| flags.address.map(PathBuf::from))
        .or_else(|| grpc_address_from_config(&text).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADDRESS));
    let state = configured_state
        .map(Path::to_path_buf)
        .or_else(|| flags.state.map(PathBuf::from))
        .or_else(|| state_dir_from_config(&text).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
    Location { address, state }
}

/// containerd's NRI socket for external plugins when its config does not say.
pub const DEFAULT_NRI_SOCKET: &str = "/var/run/nri/nri.sock";

/// The NRI section of containerd's config: config version 2 (containerd 1.7) and 3 (2.x)
/// name it alike once the quoting is set aside.
const NRI_TABLE: &str = "plugins.io.containerd.nri.v1.nri";

/// Where external NRI plugins connect, as the runtime's config says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NriEndpoint {
    /// The socket external plugins connect to.
    pub socket: PathBuf,
    /// Whether the runtime accepts external plugins at all (`disable_connections` unset or
    /// false).
    pub connections: bool,
}

/// The NRI endpoint a containerd config file (any version) gives: its `socket_path` (else
/// [`DEFAULT_NRI_SOCKET`]) and whether `disable_connections` is off.
pub fn nri_from_config(toml: &str) -> NriEndpoint {
    NriEndpoint {
        socket: config_string(toml, NRI_TABLE, "socket_path")
            .map_or_else(|| PathBuf::from(DEFAULT_NRI_SOCKET), PathBuf::from),
        connections: !config_bool(toml, NRI_TABLE, "disable_connections").unwrap_or(false),
    }
}

/// Finds the runtime's NRI socket for external plugins: `configured` (the plugin config's
/// `nri_socket`) wins, and then external connections are taken as allowed; otherwise the
/// runtime's config file, found as [`discover`] finds it.
pub fn discover_nri(configured: Option<&Path>, runtime_pid: Option<u32>) -> NriEndpoint {
    if let Some(socket) = configured {
        return NriEndpoint {
            socket: socket.to_path_buf(),
            connections: true,
        };
    }
    let (_, text) = runtime_config(runtime_pid);
    nri_from_config(&text)
}

/// Rewrites `process.args` of an OCI spec (JSON) to start with the gate. Returns `None` when
/// they already do. Every other field is kept.
pub fn gate_spec_json(
    id: &str,
    spec: &[u8],
    params: &GateParams,
) -> Result<Option<Vec<u8>>, ContainerdError> {
    let bad = |reason: String| ContainerdError::BadSpec {
        id: id.to_string(),
        reason,
    };
    let mut v: serde_json::Value = serde_json::from_slice(spec).map_err(|e| bad(e.to_string()))?;
    let args = v
        .get_mut("process")
        .and_then(|p| p.get_mut("args"))
        .and_then(|a| a.as_array_mut())
        .ok_or_else(|| bad("no process.args".to_string()))?;
    let mut current = Vec::with_capacity(args.len());
    for a in args.iter() {
        current.push(
            a.as_str()
                .ok_or_else(|| bad("process.args holds a non-string".to_string()))?
                .to_string(),
        );
    }
    if args_are_gated(&current) {
        return Ok(None);
    }
    *args = gate_args(&current, params)
        .into_iter()
        .map(serde_json::Value::String)
        .collect();
    serde_json::to_vec(&v)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

/// A lazily connected containerd client.
pub struct Client {
    address: PathBuf,
    namespace: String,
    channel: Mutex<Option<Channel>>,
}

impl Client {
    /// A client for `address` (see [`discover`]) and a containerd namespace (CRI:
    /// [`K8S_NAMESPACE`]). Nothing is connected until the first call.
    pub fn new(address: PathBuf, namespace: &str) -> Client {
        Client {
            address,
            namespace: namespace.to_string(),
            channel: Mutex::new(None),
        }
    }

    /// The socket this client talks to.
    pub fn address(&self) -> &Path {
        &self.address
    }

    async fn channel(&self) -> Result<Channel, ContainerdError> {
        let mut slot = self.channel.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = api::connect(&self.address)
            .await
            .map_err(|source| ContainerdError::Connect {
                address: self.address.clone(),
                source,
            })?;
        debug!(address = %self.address.display(), "connected to containerd");
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn forget_channel(&self) {
        *self.channel.lock().await = None;
    }

    fn request<T>(&self, msg: T) -> Result<Request<T>, ContainerdError> {
        let mut req = Request::new(msg);
        let ns = self
            .namespace
            .parse()
            .map_err(|_| ContainerdError::BadNamespace {
                namespace: self.namespace.clone(),
            })?;
        req.metadata_mut().insert(NAMESPACE_HEADER, ns);
        Ok(req)
    }

    /// Puts the gate in front of `process.args` in the container's stored spec. Call from
    /// `PostCreateContainer` when [`crate::gate::args_are_gated`] says the NRI args adjustment
    /// did not take effect; bounded by [`RPC_TIMEOUT`].
    pub async fn gate_stored_spec(
        &self,
        id: &str,
        params: &GateParams,
    ) -> Result<Rewrite, ContainerdError> {
        let result = tokio::time::timeout(RPC_TIMEOUT, self.do_gate_stored_spec(id, params)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(ContainerdError::Timeout {
                op: "Get+Update",
                id: id.to_string(),
            }),
        };
        if matches!(
            result,
            Err(ContainerdError::Timeout { .. }) | Err(ContainerdError::Rpc { .. })
        ) {
            // The next call starts from a fresh connection.
            self.forget_channel().await;
        }
        result
    }

    async fn do_gate_stored_spec(
        &self,
        id: &str,
        params: &GateParams,
    ) -> Result<Rewrite, ContainerdError> {
        let mut client = Containers::new(self.channel().await?);
        let rpc = |op: &'static str| {
            let id = id.to_string();
            move |status| ContainerdError::Rpc {
                op,
                id,
                status: Box::new(status),
            }
        };
        let got = client
            .get(self.request(GetContainerRequest { id: id.to_string() })?)
            .await
            .map_err(rpc("Get"))?;
        let mut spec = got
            .container
            .and_then(|c| c.spec)
            .ok_or_else(|| ContainerdError::NoSpec { id: id.to_string() })?;
        let Some(new_spec) = gate_spec_json(id, &spec.value, params)? else {
            return Ok(Rewrite::AlreadyGated);
        };
        spec.value = new_spec;
        // Only the id and the spec, under the mask `spec`: containerd keeps every other
        // field of its stored record (see `api`).
        let update = api::update_spec_request(id, spec);
        client
            .update(self.request(update)?)
            .await
            .map_err(rpc("Update"))?;
        Ok(Rewrite::Rewritten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_address_is_read_from_any_config_version() {
        let v2 = "version = 2\n[grpc]\n  address = \"/run/x/containerd.sock\"\n  uid = 0\n\
                  [plugins.\"io.containerd.grpc.v1.cri\"]\n  address = \"nope\"\n";
        assert_eq!(
            grpc_address_from_config(v2).as_deref(),
            Some("/run/x/containerd.sock")
        );
        let v3 = "version = 3\n[ttrpc]\naddress = '/run/t'\n[grpc]\naddress = '/run/g.sock'\n";
        assert_eq!(grpc_address_from_config(v3).as_deref(), Some("/run/g.sock"));
        assert_eq!(
            grpc_address_from_config("version = 3\n[grpc]\nuid = 0\n"),
            None
        );
        assert_eq!(grpc_address_from_config(""), None);
    }

    #[test]
    fn flags_are_read_from_the_command_line() {
        let c = b"/usr/bin/containerd\0--config\0/etc/x.toml\0--log-level\0debug\0";
        assert_eq!(
            flags_from_cmdline(c),
            Flags {
                config: Some("/etc/x.toml".into()),
                ..Flags::default()
            }
        );
        let c = b"containerd\0-c=/a.toml\0-a\0/run/a.sock\0--state=/run/s\0";
        assert_eq!(
            flags_from_cmdline(c),
            Flags {
                address: Some("/run/a.sock".into()),
                config: Some("/a.toml".into()),
                state: Some("/run/s".into()),
            }
        );
        assert_eq!(flags_from_cmdline(b"containerd\0"), Flags::default());
    }

    #[test]
    fn nri_socket_is_read_from_both_config_versions() {
        let v2 = "version = 2\n[grpc]\n  address = \"/run/g.sock\"\n\
                  [plugins.\"io.containerd.nri.v1.nri\"]\n  disable = false\n  \
                  socket_path = \"/run/x/nri.sock\"\n  plugin_path = \"/opt/nri/plugins\"\n\
                  [plugins.\"io.containerd.grpc.v1.cri\"]\n  socket_path = \"/no\"\n";
        assert_eq!(
            nri_from_config(v2),
            NriEndpoint {
                socket: PathBuf::from("/run/x/nri.sock"),
                connections: true,
            }
        );
        let v3 = "version = 3\n[plugins]\n[plugins.'io.containerd.nri.v1.nri']\n\
                  disable = false\ndisable_connections = true # no external plugins\n\
                  socket_path = '/run/y/nri.sock'\n";
        assert_eq!(
            nri_from_config(v3),
            NriEndpoint {
                socket: PathBuf::from("/run/y/nri.sock"),
                connections: false,
            }
        );
        // Nothing said: the defaults.
        for text in [
            "",
            "version = 3\n[plugins.'io.containerd.nri.v1.nri']\ndisable = false\n",
        ] {
            assert_eq!(
                nri_from_config(text),
                NriEndpoint {
                    socket: PathBuf::from(DEFAULT_NRI_SOCKET),
                    connections: true,
                }
            );
        }
        // The same keys elsewhere do not count.
        let elsewhere =
            "[plugins.'io.containerd.other']\nsocket_path = '/no'\ndisable_connections = true\n";
        assert_eq!(
            nri_from_config(elsewhere).socket,
            PathBuf::from(DEFAULT_NRI_SOCKET)
        );
        assert!(nri_from_config(elsewhere).connections);
    }

    #[test]
    fn configured_nri_socket_wins() {
        let e = discover_nri(Some(Path::new("/run/mine/nri.sock")), None);
        assert_eq!(e.socket, PathBuf::from("/run/mine/nri.sock"));
        assert!(e.connections);
    }

    #[test]
    fn nri_socket_is_read_from_the_runtimes_own_config_file() {
        // A process named containerd whose command line names a config file: found through
        // /proc as for a plugin containerd started.
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("config.toml");
        std::fs::write(
            &conf,
            "version = 2\n[plugins.\"io.containerd.nri.v1.nri\"]\n  socket_path = \"/run/t/nri.sock\"\n",
        )
        .unwrap();
        let exe = dir.path().join("containerd");
        // A shell named containerd: `-c` runs its script, the rest is left on its command line.
        std::fs::copy("/bin/sh", &exe).unwrap();
        let mut child = std::process::Command::new(&exe)
            .args(["-c", "sleep 30; true", "--config"])
            .arg(&conf)
            .spawn()
            .unwrap();
        // Until it has exec'd, /proc shows the test binary: poll.
        let pid = child.id();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut found = None;
        while std::time::Instant::now() < deadline {
            let e = discover_nri(None, Some(pid));
            if e.socket == Path::new("/run/t/nri.sock") {
                found = Some(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(
            found.map(|e| e.socket),
            Some(PathBuf::from("/run/t/nri.sock"))
        );
    }

    #[test]
    fn state_dir_is_read_from_the_top_level_only() {
        let t = "version = 2\nroot = \"/var/lib/x\"\nstate = \"/run/x\"\n[grpc]\naddress = \"/run/x/s.sock\"\n";
        assert_eq!(state_dir_from_config(t).as_deref(), Some("/run/x"));
        let nested = "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\nstate = \"/no\"\n";
        assert_eq!(state_dir_from_config(nested), None);
    }

    #[test]
    fn configured_location_wins_and_names_each_bundle() {
        let loc = discover(
            Some(Path::new("/run/mine.sock")),
            Some(Path::new("/run/mine")),
            None,
        );
        assert_eq!(loc.address, PathBuf::from("/run/mine.sock"));
        assert_eq!(
            loc.bundle("k8s.io", "abc"),
            Some(PathBuf::from(
                "/run/mine/io.containerd.runtime.v2.task/k8s.io/abc"
            ))
        );
        assert_eq!(loc.bundle("k8s.io", "../x"), None);
        assert_eq!(loc.bundle("..", "abc"), None);
        assert_eq!(loc.bundle("k8s.io", ""), None);
    }

    #[test]
    fn spec_args_are_gated_once_and_other_fields_kept() {
        let params = GateParams::new(Duration::from_secs(3), None, &Default::default());
        let spec = br#"{"ociVersion":"1.1.0","process":{"args":["/app","-x"],"env":["A=1"],"cwd":"/"},"root":{"path":"rootfs"}}"#;
        let out = gate_spec_json("c1", spec, &params).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let args: Vec<&str> = v["process"]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[0], crate::gate::protocol::GATE_PATH);
        assert_eq!(&args[args.len() - 3..], ["--", "/app", "-x"]);
        assert_eq!(v["process"]["env"][0], "A=1");
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["ociVersion"], "1.1.0");
        assert_eq!(gate_spec_json("c1", &out, &params).unwrap(), None);
        assert!(gate_spec_json("c1", b"{}", &params).is_err());
        assert!(gate_spec_json("c1", b"not json", &params).is_err());
    }
}
