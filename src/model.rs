//! The plugin's own view of pods, containers and runtime events.
//!
//! The NRI wire types stop at [`crate::nri`]: everything the runtime sends is converted once
//! into these plain structs, and the rest of the code speaks only in them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// What the runtime told us about itself in `Configure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub runtime_name: String,
    pub runtime_version: String,
    /// NRI version the runtime speaks; empty on runtimes older than NRI v0.12.
    pub nri_version: String,
    /// Request timeout in milliseconds (2000 when the runtime does not say).
    pub request_timeout_ms: u64,
    /// Registration timeout in milliseconds (5000 when the runtime does not say).
    pub registration_timeout_ms: u64,
    /// The plugin config string handed over by the runtime, if any.
    pub config: String,
    /// PID of the runtime process at the other end of the NRI socket (0 when unknown).
    pub runtime_pid: u32,
}

/// A Linux namespace of a pod or container, as the OCI spec names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// `pid`, `network`, `mount`, `ipc`, `uts`, `cgroup`, `user` or `time`.
    pub kind: String,
    /// Path of the namespace to join; empty means "a new one" (the container's own).
    pub path: String,
}

/// A pod sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Pod IPs, when the runtime sends them (NRI ≥ 0.7 runtimes do).
    pub ips: Vec<IpAddr>,
    /// The sandbox's namespaces (the network one is where httpGet/tcpSocket hooks connect from).
    pub namespaces: Vec<Namespace>,
    /// PID of the pod's infrastructure process, when known (0 = unknown).
    pub pid: u32,
    pub cgroup_parent: String,
}

impl Pod {
    /// Path of the pod's network namespace, when the runtime told us.
    pub fn netns_path(&self) -> Option<&str> {
        self.namespaces
            .iter()
            .find(|n| n.kind == "network" && !n.path.is_empty())
            .map(|n| n.path.as_str())
    }
}

/// The state of a container as the runtime reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContainerState {
    #[default]
    Unknown,
    Created,
    Paused,
    Running,
    Stopped,
}

/// An OCI mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub destination: String,
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The process-level parts of a container's OCI spec that hooks need to imitate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub additional_gids: Vec<u32>,
    pub no_new_privileges: bool,
    /// Capability names (`CAP_...`), `None` when the runtime did not send them.
    pub capabilities: Option<Capabilities>,
    /// `process.oomScoreAdj` (NRI sends it with the container's Linux part), `None` when
    /// not sent.
    pub oom_score_adj: Option<i64>,
    /// The container's seccomp confinement as the runtime reported it.
    pub seccomp: RuntimeSeccomp,
}

/// What the runtime said about a container's seccomp filter. Runtimes with NRI v0.10 or
/// later send the policy itself; older ones say nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RuntimeSeccomp {
    /// Nothing was said.
    #[default]
    Unknown,
    /// The container runs without a filter.
    Unconfined,
    /// The container runs with this profile.
    Policy(SeccompProfile),
}

/// An OCI seccomp profile (`linux.seccomp` of a spec), as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompProfile {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<Vec<SeccompSyscall>>,
}

/// One entry of a seccomp profile's `syscalls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompSyscall {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<SeccompArg>>,
}

/// One argument condition of a seccomp rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeccompArg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub inheritable: Vec<String>,
    pub ambient: Vec<String>,
}

/// A container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub state: ContainerState,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    pub process: ProcessSpec,
    pub namespaces: Vec<Namespace>,
    pub cgroups_path: String,
    /// PID of the container's init process, 0 when unknown or not started.
    pub pid: u32,
}

/// Which runtime event happened. Both NRI protocol generations (the dedicated RPCs of v0.12
/// and the `StateChange` of older runtimes) are converted into this one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    RunPodSandbox,
    StopPodSandbox,
    RemovePodSandbox,
    CreateContainer,
    PostCreateContainer,
    StartContainer,
    PostStartContainer,
    UpdateContainer,
    PostUpdateContainer,
    StopContainer,
    RemoveContainer,
}

impl EventKind {
    /// Every event kind, in the order of NRI's event numbers.
    pub const ALL: [EventKind; 11] = [
        EventKind::RunPodSandbox,
        EventKind::StopPodSandbox,
        EventKind::RemovePodSandbox,
        EventKind::CreateContainer,
        EventKind::PostCreateContainer,
        EventKind::StartContainer,
        EventKind::PostStartContainer,
        EventKind::UpdateContainer,
        EventKind::PostUpdateContainer,
        EventKind::StopContainer,
        EventKind::RemoveContainer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RunPodSandbox => "RunPodSandbox",
            EventKind::StopPodSandbox => "StopPodSandbox",
            EventKind::RemovePodSandbox => "RemovePodSandbox",
            EventKind::CreateContainer => "CreateContainer",
            EventKind::PostCreateContainer => "PostCreateContainer",
            EventKind::StartContainer => "StartContainer",
            EventKind::PostStartContainer => "PostStartContainer",
            EventKind::UpdateContainer => "UpdateContainer",
            EventKind::PostUpdateContainer => "PostUpdateContainer",
            EventKind::StopContainer => "StopContainer",
            EventKind::RemoveContainer => "RemoveContainer",
        }
    }
}

/// One runtime event, whichever NRI generation delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub pod: Pod,
    /// Empty (`Container::default()`) for pod events.
    pub container: Container,
}

/// What the plugin asks the runtime to change in a container being created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adjustment {
    pub annotations: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    /// Replacement for `process.args` (honoured by NRI ≥ 0.10 runtimes only).
    pub args: Option<Vec<String>>,
}

impl Adjustment {
    pub fn is_empty(&self) -> bool {
        self.annotations.is_empty() && self.mounts.is_empty() && self.args.is_none()
    }
}

/// Where namespace paths of a running process live.
pub fn proc_ns_path(pid: u32, kind: &str) -> PathBuf {
    let file = match kind {
        "network" => "net",
        "mount" => "mnt",
        other => other,
    };
    PathBuf::from(format!("/proc/{pid}/ns/{file}"))
}
