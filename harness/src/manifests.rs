//! The Kubernetes manifests of `deploy/kubernetes`, read the way the kubelet reads them, and
//! turned into the CRI requests a kubelet makes for the DaemonSet's pod on one node.
//!
//! Only the fields the kubelet turns into runtime calls are modelled; a volume type or a
//! field the translation does not know is an error, never silently dropped. Paths of the
//! real node (`/var/run/nri`, `/run/containerd`, ...) are replaced through a [`PathMap`]
//! with the private paths of a harness node, everywhere they occur: hostPath sources, mount
//! points, arguments and the plugin config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cri::{ContainerSpec, MountSpec, PodSpec, Propagation, ResourceSpec, SecuritySpec};

/// A manifest that cannot be read or translated.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(what: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(what.into())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Kustomization {
    pub namespace: Option<String>,
    #[serde(default)]
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    #[serde(default)]
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConfigMap {
    pub metadata: Meta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DaemonSet {
    pub metadata: Meta,
    pub spec: DaemonSetSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetSpec {
    pub selector: LabelSelector,
    pub update_strategy: Option<UpdateStrategy>,
    pub template: PodTemplate,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    #[serde(rename = "type")]
    pub kind: String,
    pub rolling_update: Option<RollingUpdate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    pub max_unavailable: Option<IntOrString>,
    pub max_surge: Option<IntOrString>,
}

/// A Kubernetes int-or-string (a port by number or name, a count or a percentage).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodTemplate {
    pub metadata: Meta,
    pub spec: PodTemplateSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    #[serde(default, rename = "hostPID")]
    pub host_pid: bool,
    #[serde(default)]
    pub host_network: bool,
    pub priority_class_name: Option<String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    pub termination_grace_period_seconds: Option<i64>,
    pub automount_service_account_token: Option<bool>,
    pub enable_service_links: Option<bool>,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    pub key: Option<String>,
    pub operator: Option<String>,
    pub effect: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub image: String,
    pub image_pull_policy: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub startup_probe: Option<Probe>,
    pub resources: Option<Resources>,
    pub security_context: Option<SecurityContext>,
    #[serde(default)]
    pub volume_mounts: Vec<VolumeMount>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: u16,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub http_get: Option<HttpGetAction>,
    pub initial_delay_seconds: Option<i64>,
    pub period_seconds: Option<i64>,
    pub timeout_seconds: Option<i64>,
    pub failure_threshold: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpGetAction {
    pub path: String,
    pub port: IntOrString,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityContext {
    pub privileged: Option<bool>,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub read_only_root_filesystem: Option<bool>,
    pub allow_privilege_escalation: Option<bool>,
    pub capabilities: Option<Capabilities>,
    pub seccomp_profile: Option<Profile>,
    pub app_armor_profile: Option<Profile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(rename = "type")]
    pub kind: String,
    pub localhost_profile: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
    pub mount_propagation: Option<String>,
    pub sub_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    pub host_path: Option<HostPathSource>,
    pub config_map: Option<ConfigMapSource>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostPathSource {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConfigMapSource {
    pub name: String,
}

/// Everything `kustomization.yaml` lists, by kind.
#[derive(Debug, Clone)]
pub struct Manifests {
    pub kustomization: Kustomization,
    pub daemonsets: Vec<DaemonSet>,
    pub config_maps: Vec<ConfigMap>,
}

#[derive(Deserialize)]
struct Kind {
    kind: String,
}

fn read(path: &Path) -> Result<String, ManifestError> {
    std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn yaml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ManifestError> {
    serde_yaml_ng::from_str(text).map_err(|source| ManifestError::Yaml {
        path: path.to_path_buf(),
        source,
    })
}

impl Manifests {
    /// Reads `dir/kustomization.yaml` and every resource file it lists (one object each).
    pub fn load(dir: &Path) -> Result<Manifests, ManifestError> {
        let kpath = dir.join("kustomization.yaml");
        let kustomization: Kustomization = yaml(&kpath, &read(&kpath)?)?;
        let mut m = Manifests {
            kustomization,
            daemonsets: Vec::new(),
            config_maps: Vec::new(),
        };
        for res in m.kustomization.resources.clone() {
            let path = dir.join(&res);
            let text = read(&path)?;
            let kind: Kind = yaml(&path, &text)?;
            match kind.kind.as_str() {
                "DaemonSet" => m.daemonsets.push(yaml(&path, &text)?),
                "ConfigMap" => m.config_maps.push(yaml(&path, &text)?),
                other => {
                    return Err(invalid(format!(
                        "{}: kind {other} is not modelled here",
                        path.display()
                    )))
                }
            }
        }
        Ok(m)
    }

    /// The one DaemonSet.
    pub fn daemonset(&self) -> Result<&DaemonSet, ManifestError> {
        match self.daemonsets.as_slice() {
            [d] => Ok(d),
            other => Err(invalid(format!("{} DaemonSets, want 1", other.len()))),
        }
    }

    /// The ConfigMap called `name`.
    pub fn config_map(&self, name: &str) -> Result<&ConfigMap, ManifestError> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name == name)
            .ok_or_else(|| invalid(format!("no ConfigMap {name:?}")))
    }

    /// The namespace an object ends up in: kustomize's `namespace` wins.
    pub fn namespace_of(&self, meta: &Meta) -> Option<String> {
        self.kustomization
            .namespace
            .clone()
            .or_else(|| meta.namespace.clone())
    }
}

impl Container {
    /// The port a probe (or anything else) names, by number or by the container's port name.
    pub fn port(&self, port: &IntOrString) -> Result<u16, ManifestError> {
        match port {
            IntOrString::Int(n) => {
                u16::try_from(*n).map_err(|_| invalid(format!("port {n} out of range")))
            }
            IntOrString::Str(name) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| invalid(format!("no container port named {name:?}"))),
        }
    }
}

/// A Kubernetes CPU quantity in milli-CPUs (`100m`, `0.5`, `2`).
pub fn milli_cpu(q: &str) -> Result<i64, ManifestError> {
    let bad = || invalid(format!("cpu quantity {q:?}"));
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().map_err(|_| bad());
    }
    let f: f64 = q.parse().map_err(|_| bad())?;
    Ok((f * 1000.0).round() as i64)
}

/// A Kubernetes memory quantity in bytes (`128Mi`, `1G`, `1048576`).
pub fn bytes(q: &str) -> Result<i64, ManifestError> {
    let bad = || invalid(format!("memory quantity {q:?}"));
    const UNITS: [(&str, i64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, mult) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<i64>().map(|n| n * mult).map_err(|_| bad());
        }
    }
    q.parse().map_err(|_| bad())
}

/// Real node paths → the private paths of a harness node. A path is replaced by the entry
/// with the longest prefix that matches whole components; other paths are kept.
#[derive(Debug, Clone, Default)]
pub struct PathMap {
    entries: Vec<(String, PathBuf)>,
}

impl PathMap {
    pub fn new() -> PathMap {
        PathMap::default()
    }

    /// Maps `node_path` (and everything under it) to `private`.
    pub fn with(mut self, node_path: &str, private: &Path) -> PathMap {
        self.entries
            .push((node_path.trim_end_matches('/').to_string(), private.into()));
        self
    }

    /// `path` with its longest mapped prefix replaced.
    pub fn map(&self, path: &str) -> String {
        let best = self
            .entries
            .iter()
            .filter(|(from, _)| {
                path == from
                    || path
                        .strip_prefix(from.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|(from, _)| from.len());
        match best {
            Some((from, to)) => format!("{}{}", to.display(), &path[from.len()..]),
            None => path.to_string(),
        }
    }

    /// A TOML config with every quoted absolute path value (`key = "/..."`) mapped.
    pub fn map_toml(&self, text: &str) -> String {
        let mut out = String::new();
        for line in text.lines() {
            let mapped = line.split_once('=').and_then(|(key, value)| {
                let v = value.trim();
                let inner = v.strip_prefix('"')?.strip_suffix('"')?;
                inner
                    .starts_with('/')
                    .then(|| format!("{}= {:?}", key, self.map(inner)))
            });
            out.push_str(mapped.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }
}

/// The DaemonSet's pod on one node, as CRI requests.
#[derive(Debug, Clone)]
pub struct PodPlan {
    pub pod: PodSpec,
    pub container: ContainerSpec,
    /// The liveness and readiness probes' HTTP paths and ports.
    pub liveness: Option<(String, u16)>,
    pub readiness: Option<(String, u16)>,
    /// The pod's termination grace period (StopContainer's timeout).
    pub grace_seconds: i64,
}

fn propagation(p: Option<&str>) -> Result<Propagation, ManifestError> {
    match p {
        None | Some("None") => Ok(Propagation::Private),
        Some("HostToContainer") => Ok(Propagation::HostToContainer),
        Some("Bidirectional") => Ok(Propagation::Bidirectional),
        Some(other) => Err(invalid(format!("mountPropagation {other:?}"))),
    }
}

fn probe(c: &Container, p: Option<&Probe>) -> Result<Option<(String, u16)>, ManifestError> {
    let Some(p) = p else { return Ok(None) };
    let get = p
        .http_get
        .as_ref()
        .ok_or_else(|| invalid("only httpGet probes are modelled"))?;
    Ok(Some((get.path.clone(), c.port(&get.port)?)))
}

/// Translates the DaemonSet's pod as the kubelet would on a node whose paths `map`
/// describes. ConfigMap volumes are written under `work` (their files' TOML path values
/// mapped too, since the plugin reads them inside the pod); hostPath volumes of type
/// `DirectoryOrCreate` are created, `Directory` ones must exist.
pub fn plan(m: &Manifests, map: &PathMap, work: &Path) -> Result<PodPlan, ManifestError> {
    let ds = m.daemonset()?;
    let spec = &ds.spec.template.spec;
    if !spec.init_containers.is_empty() {
        return Err(invalid("init containers are not modelled"));
    }
    let [c] = spec.containers.as_slice() else {
        return Err(invalid("exactly one container is modelled"));
    };
    let mut pod = PodSpec::new(&ds.metadata.name);
    if let Some(ns) = m.namespace_of(&ds.metadata) {
        pod.namespace = ns;
    }
    pod.host_pid = spec.host_pid;
    pod.host_network = spec.host_network;
    for (k, v) in &ds.spec.template.metadata.labels {
        pod.labels.insert(k.clone(), v.clone());
    }
    for (k, v) in &ds.spec.template.metadata.annotations {
        pod.annotations.insert(k.clone(), v.clone());
    }

    let mut container = ContainerSpec::new(&c.name, &c.image, &[]);
    container.command = c.command.iter().map(|a| map.map(a)).collect();
    container.args = c.args.iter().map(|a| map.map(a)).collect();
    for e in &c.env {
        let value = e
            .value
            .clone()
            .ok_or_else(|| invalid(format!("env {}: only literal values", e.name)))?;
        container.env.push((e.name.clone(), value));
    }
    for vm in &c.volume_mounts {
        if vm.sub_path.is_some() {
            return Err(invalid(format!("volume mount {}: subPath", vm.name)));
        }
        let vol = spec
            .volumes
            .iter()
            .find(|v| v.name == vm.name)
            .ok_or_else(|| invalid(format!("volume mount {}: no such volume", vm.name)))?;
        let host = match (&vol.host_path, &vol.config_map) {
            (Some(hp), None) => {
                let p = PathBuf::from(map.map(&hp.path));
                match hp.kind.as_deref() {
                    Some("DirectoryOrCreate") => {
                        std::fs::create_dir_all(&p).map_err(|source| ManifestError::Prepare {
                            path: p.clone(),
                            source,
                        })?
                    }
                    Some("Directory") if !p.is_dir() => {
                        return Err(invalid(format!(
                            "hostPath {} (type Directory) is not a directory",
                            p.display()
                        )))
                    }
                    Some("Directory") | None | Some("") => {}
                    Some(other) => return Err(invalid(format!("hostPath type {other:?}"))),
                }
                p
            }
            (None, Some(cm)) => {
                let data = &m.config_map(&cm.name)?.data;
                let dir = work.join(&vol.name);
                let prepare = |path: &Path, r: std::io::Result<()>| {
                    r.map_err(|source| ManifestError::Prepare {
                        path: path.to_path_buf(),
                        source,
                    })
                };
                prepare(&dir, std::fs::create_dir_all(&dir))?;
                for (key, text) in data {
                    let file = dir.join(key);
                    prepare(&file, std::fs::write(&file, map.map_toml(text)))?;
                }
                dir
            }
            _ => {
                return Err(invalid(format!(
                    "volume {}: only hostPath and configMap are modelled",
                    vol.name
                )))
            }
        };
        container.mounts.push(MountSpec {
            host_path: host,
            container_path: map.map(&vm.mount_path),
            readonly: vm.read_only,
            propagation: propagation(vm.mount_propagation.as_deref())?,
        });
    }
    if let Some(sc) = &c.security_context {
        let profile = |p: &Option<Profile>| {
            p.as_ref().map(|p| match (&*p.kind, &p.localhost_profile) {
                ("Localhost", Some(name)) => format!("localhost/{name}"),
                (kind, _) => kind.to_string(),
            })
        };
        let caps = sc.capabilities.clone().unwrap_or_default();
        container.security = Some(SecuritySpec {
            privileged: sc.privileged.unwrap_or(false),
            run_as_user: sc.run_as_user,
            run_as_group: sc.run_as_group,
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            // The kubelet sets no_new_privs only for an explicit `false`.
            no_new_privs: sc.allow_privilege_escalation == Some(false),
            add_capabilities: caps.add,
            drop_capabilities: caps.drop,
            seccomp: profile(&sc.seccomp_profile),
            apparmor: profile(&sc.app_armor_profile),
        });
    }
    // The kubelet gives critical pods the OOM score adjustment of Guaranteed ones.
    if matches!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical" | "system-cluster-critical")
    ) {
        container.oom_score_adj = Some(-997);
    }
    if let Some(r) = &c.resources {
        let cpu = r
            .requests
            .get("cpu")
            .or_else(|| r.limits.get("cpu"))
            .map(|q| milli_cpu(q))
            .transpose()?;
        let memory = r.limits.get("memory").map(|q| bytes(q)).transpose()?;
        container.resources = Some(ResourceSpec {
            // The kubelet's shares: milli-CPUs × 1024 / 1000, at least 2.
            cpu_shares: cpu.map(|m| (m * 1024 / 1000).max(2)).unwrap_or(2),
            memory_limit_bytes: memory.unwrap_or(0),
        });
    }
    Ok(PodPlan {
        liveness: probe(c, c.liveness_probe.as_ref())?,
        readiness: probe(c, c.readiness_probe.as_ref())?,
        grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
        pod,
        container,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_map_takes_the_longest_whole_component_prefix() {
        let m = PathMap::new()
            .with("/run/containerd", Path::new("/n/state"))
            .with("/run/containerd/containerd.sock", Path::new("/n/s/c.sock"));
        assert_eq!(m.map("/run/containerd"), "/n/state");
        assert_eq!(m.map("/run/containerd/io.x"), "/n/state/io.x");
        assert_eq!(m.map("/run/containerd/containerd.sock"), "/n/s/c.sock");
        assert_eq!(m.map("/run/containerdx"), "/run/containerdx");
        assert_eq!(m.map("/etc/x"), "/etc/x");
        assert_eq!(
            m.map_toml("a = \"/run/containerd\"\nb = 3\nc = \"x\"\n"),
            "a = \"/n/state\"\nb = 3\nc = \"x\"\n"
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(milli_cpu("10m").unwrap(), 10);
        assert_eq!(milli_cpu("0.5").unwrap(), 500);
        assert_eq!(bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
        assert!(bytes("lots").is_err());
    }
}
