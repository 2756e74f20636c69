//! A CRI client that does what a kubelet does, over the node's unix socket.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

pub use k8s_cri::v1::{ContainerState, ContainerStatus};

/// How long any single CRI call may take before the harness calls it a failure.
pub const CALL_LIMIT: Duration = Duration::from_secs(60);

/// Errors of CRI calls.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to cri socket {path}: {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("cri {op} failed: {status}")]
    Call {
        op: &'static str,
        status: tonic::Status,
    },
    #[error("cri {op} did not answer within {secs} s")]
    Timeout { op: &'static str, secs: u64 },
    #[error("cri {op} answered without {what}")]
    Empty {
        op: &'static str,
        what: &'static str,
    },
    #[error("container {id} did not reach {want:?} within {secs} s (last state {last:?})")]
    StateTimeout {
        id: String,
        want: ContainerState,
        last: ContainerState,
        secs: u64,
    },
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl CriError {
    /// The gRPC message of a failed call (e.g. a CreateContainer error), if that is what
    /// this is.
    pub fn grpc_message(&self) -> Option<&str> {
        match self {
            CriError::Call { status, .. } => Some(status.message()),
            _ => None,
        }
    }
}

async fn call<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CriError> {
    match tokio::time::timeout(CALL_LIMIT, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(CriError::Call { op, status }),
        Err(_) => Err(CriError::Timeout {
            op,
            secs: CALL_LIMIT.as_secs(),
        }),
    }
}

/// A pod as the kubelet would describe it.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub annotations: HashMap<String, String>,
    pub labels: HashMap<String, String>,
    pub host_network: bool,
    /// The node's PID namespace (`hostPID: true`) for every container of the pod.
    pub host_pid: bool,
}

impl PodSpec {
    /// A pod in namespace `default` with a uid derived from the name and the time.
    pub fn new(name: &str) -> PodSpec {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        PodSpec {
            name: name.to_string(),
            namespace: "default".to_string(),
            uid: format!("{name}-{nanos:x}"),
            ..Default::default()
        }
    }

    /// Adds a pod annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> PodSpec {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }
}

/// A hostPath-style bind mount.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub host_path: PathBuf,
    pub container_path: String,
    pub readonly: bool,
    pub propagation: Propagation,
}

/// A mount's propagation (Kubernetes `mountPropagation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// `None`: a private copy.
    #[default]
    Private,
    /// `HostToContainer`: later mounts on the host show up in the container (rslave).
    HostToContainer,
    /// `Bidirectional`: and the container's mounts show up on the host (rshared).
    Bidirectional,
}

/// A container's security context as the kubelet hands it to the runtime.
#[derive(Debug, Clone, Default)]
pub struct SecuritySpec {
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub readonly_rootfs: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privs: bool,
    /// Capability names without `CAP_` (`ALL` allowed), as in the pod spec.
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// `RuntimeDefault`, `Unconfined` (or a `localhost/...` profile); `None`: not set.
    pub seccomp: Option<String>,
    /// Same, for AppArmor.
    pub apparmor: Option<String>,
}

/// A container's resources as the kubelet turns requests and limits into CRI values.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResourceSpec {
    /// From the CPU request: milli-CPUs × 1024 / 1000, at least 2.
    pub cpu_shares: i64,
    /// The memory limit in bytes (0: none).
    pub memory_limit_bytes: i64,
}

/// A container as the kubelet would describe it.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub annotations: HashMap<String, String>,
    pub mounts: Vec<MountSpec>,
    /// Mount a termination-message file at `/dev/termination-log`, like the kubelet.
    pub termination_message: bool,
    /// The container's seccomp profile (`None`: none sent, which containerd runs unconfined).
    pub seccomp: Option<Seccomp>,
    /// The container's OOM score adjustment, as the kubelet sets it per QoS class.
    pub oom_score_adj: Option<i64>,
    /// The security context; `None`: the runtime's defaults.
    pub security: Option<SecuritySpec>,
    /// CPU shares and memory limit; `None`: the runtime's defaults.
    pub resources: Option<ResourceSpec>,
}

/// A seccomp profile as the kubelet names it in the container's security context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seccomp {
    /// The runtime's default profile.
    RuntimeDefault,
    Unconfined,
    /// A profile file on the node (absolute path).
    Localhost(PathBuf),
}

impl ContainerSpec {
    /// A container running `command` in `image`, with a termination-message file.
    pub fn new(name: &str, image: &str, command: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name: name.to_string(),
            image: image.to_string(),
            command: command.iter().map(|s| s.to_string()).collect(),
            termination_message: true,
            ..Default::default()
        }
    }

    /// Adds a container annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> ContainerSpec {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// Adds a hostPath-style bind mount.
    pub fn mount(mut self, host: &Path, container: &str, readonly: bool) -> ContainerSpec {
        self.mounts.push(MountSpec {
            host_path: host.to_path_buf(),
            container_path: container.to_string(),
            readonly,
            propagation: Propagation::Private,
        });
        self
    }
}

/// A running pod sandbox.
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    pub config: cri::PodSandboxConfig,
    /// The pod's log directory (container logs are `<name>/0.log` in it).
    pub log_dir: PathBuf,
}

/// The result of ExecSync.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// One line of a container log (CRI log format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    pub text: String,
}

/// The CRI client.
#[derive(Debug, Clone)]
pub struct Cri {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    pod_logs: PathBuf,
    cgroup_parent: String,
}

impl Cri {
    /// Connects to a CRI unix socket.
    pub async fn connect(path: &Path) -> Result<Cri, CriError> {
        let p = path.to_path_buf();
        let endpoint = Endpoint::from_static("http://[::]:50051");
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .map_err(|source| CriError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Cri {
            rt: RuntimeServiceClient::new(channel.clone()),
            img: ImageServiceClient::new(channel),
            pod_logs: std::env::temp_dir(),
            cgroup_parent: String::new(),
        })
    }

    /// Sets where pod log directories go and the cgroup parent of pods.
    pub fn set_defaults(&mut self, pod_logs: PathBuf, cgroup_parent: String) {
        self.pod_logs = pod_logs;
        self.cgroup_parent = cgroup_parent;
    }

    /// The runtime name and version.
    pub async fn version(&mut self) -> Result<String, CriError> {
        let r = call(
            "Version",
            self.rt.version(cri::VersionRequest {
                version: "v1".into(),
            }),
        )
        .await?;
        Ok(format!("{} {}", r.runtime_name, r.runtime_version))
    }

    /// Image references known to the runtime.
    pub async fn list_images(&mut self) -> Result<Vec<String>, CriError> {
        let r = call(
            "ListImages",
            self.img
                .list_images(cri::ListImagesRequest { filter: None }),
        )
        .await?;
        Ok(r.images.into_iter().flat_map(|i| i.repo_tags).collect())
    }

    /// RunPodSandbox with the kubelet's labels, annotations, log directory and cgroup parent.
    pub async fn run_pod(&mut self, spec: &PodSpec) -> Result<Pod, CriError> {
        let log_dir = self
            .pod_logs
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        std::fs::create_dir_all(&log_dir).map_err(|source| CriError::Prepare {
            path: log_dir.clone(),
            source,
        })?;
        let mut labels = spec.labels.clone();
        labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), spec.uid.clone());
        let mut annotations = spec.annotations.clone();
        annotations
            .entry("kubernetes.io/config.source".into())
            .or_insert_with(|| "api".into());
        let net_mode = if spec.host_network {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Pod
        };
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            hostname: if spec.host_network {
                String::new()
            } else {
                spec.name.clone()
            },
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels,
            annotations,
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: net_mode as i32,
                        pid: if spec.host_pid {
                            cri::NamespaceMode::Node as i32
                        } else {
                            cri::NamespaceMode::Container as i32
                        },
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = call(
            "RunPodSandbox",
            self.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            }),
        )
        .await?;
        Ok(Pod {
            id: r.pod_sandbox_id,
            config,
            log_dir,
        })
    }

    /// The pod's IP address (empty for host-network pods).
    pub async fn pod_ip(&mut self, pod_id: &str) -> Result<String, CriError> {
        let r = call(
            "PodSandboxStatus",
            self.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.to_string(),
                verbose: false,
            }),
        )
        .await?;
        Ok(r.status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    /// CreateContainer the way the kubelet does (labels, annotations, mounts, termination
    /// message file, log path `<name>/0.log`). Returns the container id.
    pub async fn create_container(
        &mut self,
        pod: &Pod,
        spec: &ContainerSpec,
    ) -> Result<String, CriError> {
        let mut labels = pod.config.labels.clone();
        labels.insert("io.kubernetes.container.name".into(), spec.name.clone());
        let mut annotations = HashMap::new();
        annotations.insert(
            "io.kubernetes.container.restartCount".to_string(),
            "0".to_string(),
        );
        annotations.insert(
            "io.kubernetes.container.terminationMessagePolicy".to_string(),
            "File".to_string(),
        );
        let mut mounts: Vec<cri::Mount> = spec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.to_string_lossy().into_owned(),
                readonly: m.readonly,
                propagation: match m.propagation {
                    Propagation::Private => cri::MountPropagation::PropagationPrivate,
                    Propagation::HostToContainer => {
                        cri::MountPropagation::PropagationHostToContainer
                    }
                    Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
                } as i32,
                ..Default::default()
            })
            .collect();
        if spec.termination_message {
            let dir = pod.log_dir.join(format!(".term-{}", spec.name));
            std::fs::create_dir_all(&dir).map_err(|source| CriError::Prepare {
                path: dir.clone(),
                source,
            })?;
            let file = dir.join("termination-log");
            std::fs::write(&file, b"").map_err(|source| CriError::Prepare {
                path: file.clone(),
                source,
            })?;
            annotations.insert(
                "io.kubernetes.container.terminationMessagePath".to_string(),
                "/dev/termination-log".to_string(),
            );
            mounts.push(cri::Mount {
                container_path: "/dev/termination-log".into(),
                host_path: file.to_string_lossy().into_owned(),
                ..Default::default()
            });
        }
        annotations.extend(spec.annotations.clone());
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .env
                .iter()
                .map(|(k, v)| cri::KeyValue {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            mounts,
            labels,
            annotations,
            log_path: format!("{}/0.log", spec.name),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some({
                    let mut sc = security_context(
                        spec.security.as_ref(),
                        pod.config
                            .linux
                            .as_ref()
                            .and_then(|l| l.security_context.as_ref())
                            .and_then(|s| s.namespace_options.clone()),
                    );
                    if let Some(s) = spec.seccomp.as_ref() {
                        use cri::security_profile::ProfileType;
                        let (kind, path) = match s {
                            Seccomp::RuntimeDefault => (ProfileType::RuntimeDefault, None),
                            Seccomp::Unconfined => (ProfileType::Unconfined, None),
                            Seccomp::Localhost(p) => (ProfileType::Localhost, Some(p)),
                        };
                        sc.seccomp = Some(cri::SecurityProfile {
                            profile_type: kind as i32,
                            localhost_ref: path
                                .map(|p| p.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                        });
                    }
                    sc
                }),
                resources: (spec.resources.is_some() || spec.oom_score_adj.is_some()).then(|| {
                    let r = spec.resources.unwrap_or_default();
                    cri::LinuxContainerResources {
                        cpu_shares: r.cpu_shares,
                        memory_limit_in_bytes: r.memory_limit_bytes,
                        oom_score_adj: spec.oom_score_adj.unwrap_or(0),
                        ..Default::default()
                    }
                }),
            }),
            ..Default::default()
        };
        let r = call(
            "CreateContainer",
            self.rt.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            }),
        )
        .await?;
        Ok(r.container_id)
    }

    /// StartContainer.
    pub async fn start_container(&mut self, id: &str) -> Result<(), CriError> {
        call(
            "StartContainer",
            self.rt.start_container(cri::StartContainerRequest {
                container_id: id.to_string(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// ContainerStatus.
    pub async fn container_status(&mut self, id: &str) -> Result<ContainerStatus, CriError> {
        let r = call(
            "ContainerStatus",
            self.rt.container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            }),
        )
        .await?;
        r.status.ok_or(CriError::Empty {
            op: "ContainerStatus",
            what: "status",
        })
    }

    /// The host PID of the container's init process (ContainerStatus verbose info), 0 when
    /// the runtime does not say.
    pub async fn container_pid(&mut self, id: &str) -> Result<u32, CriError> {
        let r = call(
            "ContainerStatus",
            self.rt.container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: true,
            }),
        )
        .await?;
        let pid = r
            .info
            .get("info")
            .and_then(|info| serde_json::from_str::<serde_json::Value>(info).ok())
            .and_then(|v| v.get("pid").and_then(serde_json::Value::as_u64))
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0);
        Ok(pid)
    }

    /// Waits until the container is in `want`, at most `limit`.
    pub async fn wait_state(
        &mut self,
        id: &str,
        want: ContainerState,
        limit: Duration,
    ) -> Result<ContainerStatus, CriError> {
        let start = Instant::now();
        loop {
            let st = self.container_status(id).await?;
            if st.state == want as i32 {
                return Ok(st);
            }
            if start.elapsed() > limit {
                return Err(CriError::StateTimeout {
                    id: id.to_string(),
                    want,
                    last: ContainerState::try_from(st.state)
                        .unwrap_or(ContainerState::ContainerUnknown),
                    secs: limit.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until `pred` holds for one line of the container's log (any stream), at most
    /// `limit`; that line then. The way to know that a process inside has reached a point
    /// it announces (e.g. the test app's `started` or `listening` line).
    pub async fn wait_log_line(
        &mut self,
        id: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<Option<String>, CriError> {
        let path = PathBuf::from(self.container_status(id).await?.log_path);
        let start = Instant::now();
        loop {
            if let Some(line) = read_log(&path).into_iter().find(|l| pred(&l.text)) {
                return Ok(Some(line.text));
            }
            if start.elapsed() > limit {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Creates and starts a container in `pod`, waits until it runs, then until its log has a
    /// line starting with `ready` (the test app says `started ` once it has taken SIGTERM
    /// over, `listening ` once it serves). Returns its id and that line (`None`: not within
    /// `limit`).
    pub async fn start_ready(
        &mut self,
        pod: &Pod,
        spec: &ContainerSpec,
        ready: &str,
        limit: Duration,
    ) -> Result<(String, Option<String>), CriError> {
        let id = self.create_container(pod, spec).await?;
        self.start_container(&id).await?;
        self.wait_state(&id, ContainerState::ContainerRunning, limit)
            .await?;
        let line = self
            .wait_log_line(&id, limit, |l| l.starts_with(ready))
            .await?;
        Ok((id, line))
    }

    /// ExecSync (how the kubelet runs exec hooks and probes).
    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<ExecResult, CriError> {
        let r = call(
            "ExecSync",
            self.rt.exec_sync(cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout_secs,
            }),
        )
        .await?;
        Ok(ExecResult {
            exit_code: r.exit_code,
            stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
        })
    }

    /// StopContainer with a grace period in seconds.
    pub async fn stop_container(&mut self, id: &str, timeout_secs: i64) -> Result<(), CriError> {
        call(
            "StopContainer",
            self.rt.stop_container(cri::StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_secs,
            }),
        )
        .await
        .map(|_| ())
    }

    /// RemoveContainer.
    pub async fn remove_container(&mut self, id: &str) -> Result<(), CriError> {
        call(
            "RemoveContainer",
            self.rt.remove_container(cri::RemoveContainerRequest {
                container_id: id.to_string(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&mut self, pod_id: &str) -> Result<(), CriError> {
        call(
            "StopPodSandbox",
            self.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.to_string(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// RemovePodSandbox.
    pub async fn remove_pod(&mut self, pod_id: &str) -> Result<(), CriError> {
        call(
            "RemovePodSandbox",
            self.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.to_string(),
            }),
        )
        .await
        .map(|_| ())
    }

    /// Ids of all pod sandboxes.
    pub async fn list_pods(&mut self) -> Result<Vec<String>, CriError> {
        let r = call(
            "ListPodSandbox",
            self.rt
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
        )
        .await?;
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }

    /// Ids of all containers.
    pub async fn list_containers(&mut self) -> Result<Vec<String>, CriError> {
        let r = call(
            "ListContainers",
            self.rt
                .list_containers(cri::ListContainersRequest { filter: None }),
        )
        .await?;
        Ok(r.containers.into_iter().map(|c| c.id).collect())
    }

    /// Stops and removes every pod (and so every container), the kubelet's way.
    pub async fn remove_all_pods(&mut self) -> Result<(), CriError> {
        for id in self.list_pods().await? {
            self.stop_pod(&id).await?;
            self.remove_pod(&id).await?;
        }
        Ok(())
    }

    /// Stop + remove one pod.
    pub async fn delete_pod(&mut self, pod: &Pod) -> Result<(), CriError> {
        self.stop_pod(&pod.id).await?;
        self.remove_pod(&pod.id).await
    }
}

/// A CRI security profile from its Kubernetes type name.
fn profile(name: &str) -> cri::SecurityProfile {
    let (profile_type, localhost_ref) = match name {
        "RuntimeDefault" => (cri::security_profile::ProfileType::RuntimeDefault, ""),
        "Unconfined" => (cri::security_profile::ProfileType::Unconfined, ""),
        other => (
            cri::security_profile::ProfileType::Localhost,
            other.strip_prefix("localhost/").unwrap_or(other),
        ),
    };
    cri::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref: localhost_ref.to_string(),
    }
}

/// The container's CRI security context, the kubelet's way: the pod's namespace options,
/// capabilities by name, identity, read-only root, no_new_privs, seccomp and AppArmor.
fn security_context(
    sec: Option<&SecuritySpec>,
    namespace_options: Option<cri::NamespaceOption>,
) -> cri::LinuxContainerSecurityContext {
    let Some(sec) = sec else {
        return cri::LinuxContainerSecurityContext {
            namespace_options,
            ..Default::default()
        };
    };
    let capabilities = (!sec.add_capabilities.is_empty() || !sec.drop_capabilities.is_empty())
        .then(|| cri::Capability {
            add_capabilities: sec.add_capabilities.clone(),
            drop_capabilities: sec.drop_capabilities.clone(),
            ..Default::default()
        });
    cri::LinuxContainerSecurityContext {
        namespace_options,
        capabilities,
        privileged: sec.privileged,
        run_as_user: sec.run_as_user.map(|value| cri::Int64Value { value }),
        run_as_group: sec.run_as_group.map(|value| cri::Int64Value { value }),
        readonly_rootfs: sec.readonly_rootfs,
        no_new_privs: sec.no_new_privs,
        seccomp: sec.seccomp.as_deref().map(profile),
        apparmor: sec.apparmor.as_deref().map(profile),
        ..Default::default()
    }
}

/// Reads a container log file in CRI format (`TIME STREAM P|F TEXT`), joining partial lines.
pub fn read_log(path: &Path) -> Vec<LogLine> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<LogLine> = Vec::new();
    let mut partial: Option<LogLine> = None;
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let msg = parts.next().unwrap_or("");
        let entry = match partial.take() {
            Some(mut p) => {
                p.text.push_str(msg);
                p
            }
            None => LogLine {
                time: time.to_string(),
                stream: stream.to_string(),
                text: msg.to_string(),
            },
        };
        if tag == "P" {
            partial = Some(entry);
        } else {
            out.push(entry);
        }
    }
    out.extend(partial);
    out
}

/// The text of a container's log (all streams), one line per entry.
pub fn log_text(status: &ContainerStatus) -> String {
    read_log(Path::new(&status.log_path))
        .into_iter()
        .map(|l| l.text)
        .collect::<Vec<_>>()
        .join("\n")
}
