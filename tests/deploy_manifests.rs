//! The Kubernetes manifests of `deploy/kubernetes`, checked without a cluster: what the
//! plugin needs from its pod is there, and the ConfigMap holds a config the plugin accepts.

use std::path::Path;

use nri_harness::manifests::{Container, DaemonSet, IntOrString, Manifests, Volume, VolumeMount};
use nri_lifecycle::config::{Config, LogFormat};

fn load() -> Manifests {
    Manifests::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes"))
        .expect("deploy/kubernetes parses")
}

fn the_container(ds: &DaemonSet) -> &Container {
    let [c] = ds.spec.template.spec.containers.as_slice() else {
        panic!("one container");
    };
    c
}

fn arg<'a>(c: &'a Container, flag: &str) -> &'a str {
    c.args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| c.args.get(i + 1))
        .unwrap_or_else(|| panic!("no {flag} in {:?}", c.args))
}

/// The mount whose mount path holds `path` (the deepest one), and its volume.
fn mount_of<'a>(ds: &'a DaemonSet, path: &Path) -> (&'a VolumeMount, &'a Volume) {
    let c = the_container(ds);
    let m = c
        .volume_mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("nothing is mounted at {}", path.display()));
    let v = ds
        .spec
        .template
        .spec
        .volumes
        .iter()
        .find(|v| v.name == m.name)
        .unwrap_or_else(|| panic!("no volume {}", m.name));
    (m, v)
}

/// `path` is mounted from the same path on the node.
fn same_path_on_node<'a>(ds: &'a DaemonSet, path: &Path) -> &'a VolumeMount {
    let (m, v) = mount_of(ds, path);
    let host = v
        .host_path
        .as_ref()
        .unwrap_or_else(|| panic!("{} is not a hostPath", path.display()));
    assert_eq!(
        host.path,
        m.mount_path,
        "{} must be the same path inside the pod and on the node",
        path.display()
    );
    m
}

/// The plugin config from the ConfigMap the `--config` file comes from.
fn config(m: &Manifests) -> Config {
    let ds = m.daemonset().unwrap();
    let file = Path::new(arg(the_container(ds), "--config"));
    let (mount, vol) = mount_of(ds, file);
    assert!(mount.read_only, "the config is mounted read-only");
    let cm = vol.config_map.as_ref().expect("--config is in a ConfigMap");
    let key = file
        .strip_prefix(&mount.mount_path)
        .expect("under the mount")
        .to_string_lossy()
        .into_owned();
    let text = m
        .config_map(&cm.name)
        .unwrap()
        .data
        .get(&key)
        .unwrap_or_else(|| panic!("ConfigMap {} has no key {key}", cm.name));
    Config::from_toml(text).unwrap_or_else(|e| panic!("the plugin refuses its config: {e}"))
}

#[test]
fn everything_lives_in_kube_system() {
    let m = load();
    let ds = m.daemonset().unwrap();
    assert_eq!(m.namespace_of(&ds.metadata).as_deref(), Some("kube-system"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    for cm in &m.config_maps {
        assert_eq!(cm.metadata.namespace.as_deref(), Some("kube-system"));
    }
    let labels = &ds.spec.template.metadata.labels;
    for (k, v) in &ds.spec.selector.match_labels {
        assert_eq!(labels.get(k), Some(v), "the selector matches the pods");
    }
}

#[test]
fn the_pod_runs_on_every_node_in_the_host_pid_namespace() {
    let m = load();
    let ds = m.daemonset().unwrap();
    let spec = &ds.spec.template.spec;
    assert!(spec.host_pid, "hostPID: the plugin works on node PIDs");
    assert!(!spec.host_network, "the probes reach the pod IP");
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        spec.tolerations.iter().any(|t| t.key.is_none()
            && t.operator.as_deref() == Some("Exists")
            && t.effect.is_none()),
        "tolerates every taint"
    );
    let strategy = ds.spec.update_strategy.as_ref().expect("update strategy");
    assert_eq!(strategy.kind, "RollingUpdate");
    let ru = strategy.rolling_update.as_ref().expect("rolling update");
    assert_eq!(
        ru.max_surge,
        Some(IntOrString::Int(0)),
        "never two plugins on a node"
    );
    assert_eq!(ru.max_unavailable, Some(IntOrString::Int(1)));
}

#[test]
fn the_container_is_the_external_plugin_from_our_image() {
    let m = load();
    let ds = m.daemonset().unwrap();
    let c = the_container(ds);
    assert_eq!(
        c.image,
        format!("nri-lifecycle:{}", env!("CARGO_PKG_VERSION")),
        "the image `make image` builds"
    );
    assert!(c.command.is_empty(), "the image's entrypoint is the plugin");
    assert_eq!(c.args.first().map(String::as_str), Some("run"));
    // The NRI socket's directory (not the socket: it is re-created) is the node's.
    let socket = Path::new(arg(c, "--socket"));
    let m_socket = same_path_on_node(ds, socket);
    assert_ne!(Path::new(&m_socket.mount_path), socket);
    arg(c, "--name");
    arg(c, "--index");
}

#[test]
fn the_config_parses_and_matches_the_mounts() {
    let m = load();
    let ds = m.daemonset().unwrap();
    let cfg = config(&m);
    assert_eq!(cfg.log_file, None, "logs on stderr, for kubectl logs");
    assert_eq!(cfg.log_format(), LogFormat::Json);
    // The gate is bind-mounted into containers from the node: same path in and out.
    same_path_on_node(ds, &cfg.runtime_dir);
    // containerd's socket and state directory: named, and reached through one read-only
    // mount of their directory that follows the node's mounts.
    let address = cfg.containerd_address.as_ref().expect("containerd_address");
    let state = cfg
        .containerd_state_dir
        .as_ref()
        .expect("containerd_state_dir");
    for p in [address, state] {
        let mount = same_path_on_node(ds, p);
        assert!(mount.read_only, "{} read-only", p.display());
        assert_eq!(
            mount.mount_propagation.as_deref(),
            Some("HostToContainer"),
            "{}: containerd's later mounts are seen and released",
            p.display()
        );
    }
    assert_ne!(
        Path::new(&same_path_on_node(ds, address).mount_path),
        address.as_path(),
        "{}: its directory, not the socket file (re-created on restart), is mounted",
        address.display()
    );
    // Exec hooks join cgroups: the node's hierarchy, writable.
    let cg = same_path_on_node(ds, Path::new("/sys/fs/cgroup"));
    assert!(!cg.read_only, "/sys/fs/cgroup writable");
    // PostStart failures go to the termination-message files in the kubelet's pods dir.
    let pods = same_path_on_node(ds, Path::new("/var/lib/kubelet/pods"));
    assert!(!pods.read_only, "termination messages are written");
    assert_eq!(pods.mount_propagation.as_deref(), Some("HostToContainer"));
    // The probes and the listener agree.
    let listen = cfg.http_address.expect("http_address");
    assert!(listen.ip().is_unspecified(), "listens on the pod IP");
    let c = the_container(ds);
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/healthz"),
        (c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path, path);
        assert_eq!(c.port(&get.port).unwrap(), listen.port());
    }
}

#[test]
fn the_security_context_grants_capabilities_not_privilege() {
    let m = load();
    let ds = m.daemonset().unwrap();
    let sc = the_container(ds)
        .security_context
        .clone()
        .expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.run_as_user, Some(0));
    assert_ne!(
        sc.allow_privilege_escalation,
        Some(false),
        "no_new_privs would be inherited by every exec hook"
    );
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, vec!["ALL".to_string()]);
    for need in [
        "SYS_ADMIN",
        "SYS_PTRACE",
        "KILL",
        "SETUID",
        "SETGID",
        "SETPCAP",
    ] {
        assert!(caps.add.iter().any(|c| c == need), "capability {need}");
    }
    let limits = the_container(ds)
        .resources
        .clone()
        .expect("resources")
        .limits;
    assert!(!limits.contains_key("cpu"), "no CPU limit (throttling)");
    assert!(limits.contains_key("memory"));
}
