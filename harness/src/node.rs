//! A private containerd node: its own root, state, sockets, runc root, NRI plugin directory
//! and CNI bridge, started and torn down without touching anything else on the machine.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri::{Cri, CriError};
use crate::install::{images, Install, InstallError, Version};
use crate::net::{self, NetError, PodNetwork};
use crate::sys;

/// How many nodes may run at once on one machine.
pub const MAX_SLOTS: u8 = 24;

/// The file name the plugin gets in the node's `plugin_path`.
pub const PLUGIN_FILE: &str = "10-nri-lifecycle";

/// Errors of the node lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Install(#[from] InstallError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Sys(#[from] sys::SysError),
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("all {0} node slots are busy")]
    NoSlot(u8),
    #[error("cannot prepare {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("containerd exited during start-up ({status}); log {log}:\n{tail}")]
    Exited {
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("containerd did not serve CRI on {socket} within {secs} s; log {log}:\n{tail}")]
    NotReady {
        socket: PathBuf,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot import image {tar}: {stderr}")]
    Import { tar: PathBuf, stderr: String },
    #[error("leftovers after stopping the node in {dir}: {what:?}")]
    Leftovers { dir: PathBuf, what: Vec<String> },
    #[error("the pre-installed plugin did not register with containerd; containerd log {log}:\n{tail}\nplugin log:\n{plugin}")]
    PluginNotRegistered {
        log: PathBuf,
        tail: String,
        plugin: String,
    },
}

/// How the plugin is attached to the node.
#[derive(Debug, Clone)]
pub enum PluginMode {
    /// Copied into the node's `plugin_path` as `10-nri-lifecycle`; containerd starts it.
    Preinstalled(PathBuf),
    /// Nothing is installed; the test connects a plugin to [`Node::nri_socket`] itself.
    External,
    /// NRI enabled, no plugin.
    None,
}

/// Options beyond version and plugin mode.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Written to `plugin_config_path/10-nri-lifecycle.conf`; `{plugin_log}` is replaced with
    /// [`NodePaths::plugin_log`] and `{dir}` with the node directory.
    pub plugin_config: Option<String>,
    /// NRI `plugin_registration_timeout`.
    pub registration_timeout: Duration,
    /// NRI `plugin_request_timeout`.
    pub request_timeout: Duration,
    /// containerd's log level.
    pub log_level: String,
    /// Whether NRI is enabled at all (false: the "NRI off" baseline).
    pub nri: bool,
    /// Images to import (names of the tars in the cache: busybox, pause, distroless).
    pub images: Vec<String>,
    /// Whether containerd takes external NRI plugins (`disable_connections = false`). A
    /// pre-installed plugin then keeps a daemon connected there, and the node is ready once
    /// that daemon is connected and synchronized.
    pub nri_connections: bool,
}

/// The plugin config a node gets unless a test says otherwise: everything of the plugin's
/// stays inside the node's directory.
pub const DEFAULT_PLUGIN_CONFIG: &str =
    "log_file = \"{plugin_log}\"\nlog_level = \"debug\"\nruntime_dir = \"{dir}/plugin-run\"\n";

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            plugin_config: Some(DEFAULT_PLUGIN_CONFIG.to_string()),
            registration_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            log_level: "info".to_string(),
            nri: true,
            images: vec!["busybox".into(), "pause".into(), "distroless".into()],
            nri_connections: true,
        }
    }
}

/// Every path of one node. All of it lives under [`NodePaths::dir`].
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub grpc_socket: PathBuf,
    pub ttrpc_socket: PathBuf,
    pub nri_socket: PathBuf,
    pub runc_root: PathBuf,
    pub plugin_dir: PathBuf,
    pub plugin_config_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub ipam_dir: PathBuf,
    pub opt_dir: PathBuf,
    pub config: PathBuf,
    pub pid_file: PathBuf,
    /// Kept after teardown (until the slot is used again).
    pub logs: PathBuf,
    pub containerd_log: PathBuf,
    /// Where the plugin is asked (through `{plugin_log}` in its config) to log.
    pub plugin_log: PathBuf,
    /// Pod log directories.
    pub pod_logs: PathBuf,
    /// Host directories for hostPath-style mounts.
    pub host: PathBuf,
    /// The cgroup parent name of the node's pods (cgroupfs driver).
    pub cgroup_name: String,
}

impl NodePaths {
    /// The paths of slot `slot` under the run directory.
    pub fn for_slot(run_dir: &Path, slot: u8) -> NodePaths {
        let dir = run_dir.join(format!("n{slot}"));
        let s = dir.join("s");
        let logs = dir.join("logs");
        NodePaths {
            root: dir.join("root"),
            state: dir.join("state"),
            grpc_socket: s.join("containerd.sock"),
            ttrpc_socket: s.join("containerd.sock.ttrpc"),
            nri_socket: s.join("nri.sock"),
            runc_root: dir.join("runc"),
            plugin_dir: dir.join("plugins"),
            plugin_config_dir: dir.join("plugin-conf"),
            cni_conf_dir: dir.join("cni"),
            ipam_dir: dir.join("ipam"),
            opt_dir: dir.join("opt"),
            config: dir.join("config.toml"),
            pid_file: dir.join("containerd.pid"),
            containerd_log: logs.join("containerd.log"),
            plugin_log: logs.join("nri-lifecycle.log"),
            logs,
            pod_logs: dir.join("pods"),
            host: dir.join("host"),
            cgroup_name: format!("nri-harness-n{slot}"),
            dir,
        }
    }

    fn cgroup_parent(&self) -> String {
        format!("/{}", self.cgroup_name)
    }
}

fn prep(p: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(p).map_err(|source| NodeError::Prepare {
        path: p.to_path_buf(),
        source,
    })
}

fn write(p: &Path, text: &str) -> Result<(), NodeError> {
    std::fs::write(p, text).map_err(|source| NodeError::Prepare {
        path: p.to_path_buf(),
        source,
    })
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

fn config_toml(v: Version, install: &Install, p: &NodePaths, o: &NodeOptions) -> String {
    let q = toml_str;
    let secs = |d: Duration| format!("\"{}ms\"", d.as_millis());
    let nri = |section: &str| {
        format!(
            "[{section}]\n  disable = {}\n  disable_connections = {}\n  socket_path = {}\n  plugin_path = {}\n  plugin_config_path = {}\n  plugin_registration_timeout = {}\n  plugin_request_timeout = {}\n",
            !o.nri,
            !o.nri_connections,
            q(&p.nri_socket),
            q(&p.plugin_dir),
            q(&p.plugin_config_dir),
            secs(o.registration_timeout),
            secs(o.request_timeout),
        )
    };
    let head = format!(
        "root = {}\nstate = {}\n\n[grpc]\n  address = {}\n\n[ttrpc]\n  address = {}\n\n[debug]\n  level = {:?}\n\n",
        q(&p.root),
        q(&p.state),
        q(&p.grpc_socket),
        q(&p.ttrpc_socket),
        o.log_level
    );
    let runc_opts = format!(
        "  BinaryName = \"/usr/sbin/runc\"\n  Root = {}\n  SystemdCgroup = false\n",
        q(&p.runc_root)
    );
    match v {
        Version::V1_7 => format!(
            "version = 2\n{head}\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n\n\
             {nri}\n\
             [plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = {pause:?}\n  restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n  enable_selinux = false\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n{runc_opts}\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = {bin}\n  conf_dir = {conf}\n  max_conf_num = 1\n",
            opt = q(&p.opt_dir),
            nri = nri("plugins.\"io.containerd.nri.v1.nri\""),
            pause = images::PAUSE,
            bin = q(&install.cni_bin_dir()),
            conf = q(&p.cni_conf_dir),
        ),
        Version::V2_1 => format!(
            "version = 3\n{head}\
             [plugins.'io.containerd.internal.v1.opt']\n  path = {opt}\n\n\
             {nri}\n\
             [plugins.'io.containerd.grpc.v1.cri']\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\n\
             [plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"overlayfs\"\n\n\
             [plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = {pause:?}\n\n\
             [plugins.'io.containerd.cri.v1.runtime']\n  restrict_oom_score_adj = true\n  netns_mounts_under_state_dir = true\n  enable_selinux = false\n\n\
             [plugins.'io.containerd.cri.v1.runtime'.containerd]\n  default_runtime_name = \"runc\"\n\n\
             [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n\
             [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n{runc_opts}\n\
             [plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [{bin}]\n  conf_dir = {conf}\n  max_conf_num = 1\n",
            opt = q(&p.opt_dir),
            nri = nri("plugins.'io.containerd.nri.v1.nri'"),
            pause = images::PAUSE,
            bin = q(&install.cni_bin_dir()),
            conf = q(&p.cni_conf_dir),
        ),
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether containerd's log shows that a plugin whose name contains `name` registered
/// (or connected, for an external plugin).
pub fn registered(containerd_log: &str, name: &str) -> bool {
    // Pre-installed plugins are "registered as" (1.7 never synchronizes them: they start
    // before any container exists); external ones are "connected" after their synchronization.
    containerd_log.lines().any(|l| {
        l.contains(name)
            && (l.contains("synchronizing plugin")
                || l.contains("registered as")
                || (l.contains("plugin \\\"") && l.contains("connected")))
    })
}

/// How many times containerd's log shows an external plugin whose name contains `name`
/// connected (after its synchronization: `plugin "…" connected` on 1.7, `… connected and
/// synchronized` on 2.x).
pub fn external_connected(containerd_log: &str, name: &str) -> usize {
    containerd_log
        .lines()
        .filter(|l| l.contains(name) && l.contains("\\\" connected"))
        .count()
}

/// A running private containerd node. Stop it with [`Node::stop`]; dropping it tears it
/// down too (without the leftover check).
pub struct Node {
    version: Version,
    plugin: PluginMode,
    opts: NodeOptions,
    install: Install,
    paths: NodePaths,
    net: PodNetwork,
    slot: u8,
    child: Option<Child>,
    _slot_lock: Option<File>,
    torn_down: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("version", &self.version)
            .field("slot", &self.slot)
            .field("dir", &self.paths.dir)
            .finish()
    }
}

impl Node {
    /// Starts a node with default options.
    pub async fn start(version: Version, plugin: PluginMode) -> Result<Node, NodeError> {
        Node::start_with(version, plugin, NodeOptions::default()).await
    }

    /// Starts a node: installs what is missing, takes a free slot, cleans what an interrupted
    /// run left in it, writes the config, starts containerd with only fds 0–2 open, waits for
    /// CRI and imports the test images.
    pub async fn start_with(
        version: Version,
        plugin: PluginMode,
        opts: NodeOptions,
    ) -> Result<Node, NodeError> {
        let install = tokio::task::spawn_blocking(Install::ensure)
            .await
            .map_err(|e| NodeError::Prepare {
                path: PathBuf::from("setup"),
                source: std::io::Error::other(e.to_string()),
            })??;
        let run_dir = install.run_dir();
        let lock_dir = install.lock_dir();
        prep(&run_dir)?;
        prep(&lock_dir)?;
        let mut taken = None;
        for slot in 0..MAX_SLOTS {
            if let Some(lock) = sys::try_lock(&lock_dir.join(format!("slot-{slot}.lock")))? {
                taken = Some((slot, lock));
                break;
            }
        }
        let Some((slot, lock)) = taken else {
            return Err(NodeError::NoSlot(MAX_SLOTS));
        };
        let paths = NodePaths::for_slot(&run_dir, slot);
        let net = PodNetwork::for_slot(slot)?;
        // Whatever an interrupted run left in this slot.
        teardown(&paths, &net, None, &lock_dir, slot);
        let _ = std::fs::remove_dir_all(&paths.dir);

        let mut node = Node {
            version,
            plugin: plugin.clone(),
            opts: opts.clone(),
            install,
            paths,
            net,
            slot,
            child: None,
            _slot_lock: Some(lock),
            torn_down: false,
        };
        node.prepare(&plugin, &opts)?;
        node.spawn()?;
        node.wait_ready(&plugin, &opts).await?;
        for image in &opts.images {
            node.import(image)?;
        }
        Ok(node)
    }

    fn prepare(&mut self, plugin: &PluginMode, opts: &NodeOptions) -> Result<(), NodeError> {
        let p = &self.paths;
        for d in [
            &p.root,
            &p.state,
            &p.runc_root,
            &p.plugin_dir,
            &p.plugin_config_dir,
            &p.cni_conf_dir,
            &p.ipam_dir,
            &p.opt_dir,
            &p.logs,
            &p.pod_logs,
            &p.host,
        ] {
            prep(d)?;
        }
        if let Some(s) = p.grpc_socket.parent() {
            prep(s)?;
        }
        if let PluginMode::Preinstalled(bin) = plugin {
            let dst = p.plugin_dir.join(PLUGIN_FILE);
            // A hard link where possible: a debug build of the plugin is large, and every node
            // start would otherwise write a copy of it.
            if std::fs::hard_link(bin, &dst).is_err() {
                std::fs::copy(bin, &dst).map_err(|source| NodeError::Prepare {
                    path: bin.clone(),
                    source,
                })?;
            }
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).map_err(
                |source| NodeError::Prepare {
                    path: dst.clone(),
                    source,
                },
            )?;
        }
        if let Some(cfg) = &opts.plugin_config {
            let text = cfg
                .replace("{plugin_log}", &p.plugin_log.to_string_lossy())
                .replace("{dir}", &p.dir.to_string_lossy());
            write(
                &p.plugin_config_dir.join(format!("{PLUGIN_FILE}.conf")),
                &text,
            )?;
        }
        write(
            &p.cni_conf_dir.join("10-nri-harness.conflist"),
            &self.net.conflist(&p.ipam_dir),
        )?;
        write(
            &p.config,
            &config_toml(self.version, &self.install, p, opts),
        )?;
        net::remember_ip_forward(&self.install.lock_dir())?;
        self.net.add_safety_route()?;
        Ok(())
    }

    fn spawn(&mut self) -> Result<(), NodeError> {
        let p = &self.paths;
        let log = File::create(&p.containerd_log).map_err(|source| NodeError::Prepare {
            path: p.containerd_log.clone(),
            source,
        })?;
        let log2 = log.try_clone().map_err(|source| NodeError::Prepare {
            path: p.containerd_log.clone(),
            source,
        })?;
        let bin = self.install.containerd(self.version);
        let path_env = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            self.install.bin_dir(self.version).display()
        );
        let mut cmd = Command::new(&bin);
        cmd.arg("--config")
            .arg(&p.config)
            .env_clear()
            .env("PATH", path_env)
            .env("HOME", &p.dir)
            .env("TMPDIR", &p.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .current_dir(&p.dir);
        // SAFETY: the closure runs between fork and exec and only makes one raw syscall
        // (close_range) on descriptor numbers; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(|| {
                let rc = libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| NodeError::Spawn {
            binary: bin.clone(),
            source,
        })?;
        write(&p.pid_file, &child.id().to_string())?;
        self.child = Some(child);
        Ok(())
    }

    /// containerd starts pre-installed plugins before it serves CRI: by now the plugin has
    /// registered, or it never will (2.x then runs without it). Say so plainly. The drop-in
    /// plugin then keeps a daemon connected to the NRI socket, which containerd opens only
    /// after the pre-installed plugins started: wait until that daemon is synchronized too,
    /// so that a test's first container gets its hooks.
    async fn check_registered(
        &self,
        plugin: &PluginMode,
        opts: &NodeOptions,
    ) -> Result<(), NodeError> {
        if !matches!(plugin, PluginMode::Preinstalled(_)) || !opts.nri {
            return Ok(());
        }
        let log = self.containerd_log();
        let daemon = || {
            !opts.nri_connections || external_connected(&self.containerd_log(), "nri-lifecycle") > 0
        };
        if registered(&log, "nri-lifecycle") {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if daemon() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Err(NodeError::PluginNotRegistered {
            log: self.paths.containerd_log.clone(),
            tail: tail(&self.paths.containerd_log, 40),
            plugin: self.plugin_log(),
        })
    }

    async fn wait_ready(
        &mut self,
        plugin: &PluginMode,
        opts: &NodeOptions,
    ) -> Result<(), NodeError> {
        // 2.x waits the whole registration timeout for a pre-installed plugin that does not
        // register; allow for that on top of the normal start-up.
        let extra = match plugin {
            PluginMode::Preinstalled(_) => opts.registration_timeout,
            _ => Duration::ZERO,
        };
        let limit = Duration::from_secs(30) + extra;
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(NodeError::Exited {
                        status,
                        log: self.paths.containerd_log.clone(),
                        tail: tail(&self.paths.containerd_log, 30),
                    });
                }
            }
            if self.paths.grpc_socket.exists() {
                if let Ok(mut cri) = Cri::connect(&self.paths.grpc_socket).await {
                    if cri.version().await.is_ok() {
                        return self.check_registered(plugin, opts).await;
                    }
                }
            }
            if start.elapsed() > limit {
                return Err(NodeError::NotReady {
                    socket: self.paths.grpc_socket.clone(),
                    secs: limit.as_secs(),
                    log: self.paths.containerd_log.clone(),
                    tail: tail(&self.paths.containerd_log, 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn import(&self, image: &str) -> Result<(), NodeError> {
        self.import_tar(&self.install.image_tar(image))
    }

    /// Imports an OCI image archive into the node's `k8s.io` namespace with containerd's
    /// own `ctr images import`, as an operator would on a node without a registry. The
    /// image is named by the archive's `io.containerd.image.name` annotation.
    pub fn import_tar(&self, tar: &Path) -> Result<(), NodeError> {
        let tar = tar.to_path_buf();
        let out = Command::new(self.install.ctr(self.version))
            .arg("--address")
            .arg(&self.paths.grpc_socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&tar)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| NodeError::Spawn {
                binary: self.install.ctr(self.version),
                source,
            })?;
        if !out.status.success() {
            return Err(NodeError::Import {
                tar,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// The containerd version this node runs.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The Debian package version being tested (e.g. `2.1.9+ds1-5`).
    pub fn package_version(&self) -> String {
        self.install.package_version(self.version)
    }

    /// The installed parts (testapp path, image tars, ...).
    pub fn install(&self) -> &Install {
        &self.install
    }

    /// Every path of the node.
    pub fn paths(&self) -> &NodePaths {
        &self.paths
    }

    /// The NRI socket external plugins connect to.
    pub fn nri_socket(&self) -> &Path {
        &self.paths.nri_socket
    }

    /// The CRI (gRPC) socket.
    pub fn cri_socket(&self) -> &Path {
        &self.paths.grpc_socket
    }

    /// The pod network (bridge, subnet).
    pub fn network(&self) -> &PodNetwork {
        &self.net
    }

    /// The cgroup parent given to pods (cgroupfs style).
    pub fn cgroup_parent(&self) -> String {
        self.paths.cgroup_parent()
    }

    /// The containerd PID, while running.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether containerd is still running.
    pub fn containerd_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Restarts containerd as an init system would: SIGTERM, wait for it to exit (its shims
    /// and the containers live on), then start it again with the same config and wait until
    /// it serves CRI (and, for a pre-installed plugin, until it registered again). The log
    /// of the first run is kept as `containerd-<n>.log`.
    pub async fn restart_containerd(&mut self) -> Result<(), NodeError> {
        if let Some(mut c) = self.child.take() {
            sys::kill(c.id() as i32, libc::SIGTERM);
            let start = Instant::now();
            while matches!(c.try_wait(), Ok(None)) {
                if start.elapsed() > Duration::from_secs(20) {
                    sys::kill(c.id() as i32, libc::SIGKILL);
                    let _ = c.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut n = 1;
        while self.paths.logs.join(format!("containerd-{n}.log")).exists() {
            n += 1;
        }
        let kept = self.paths.logs.join(format!("containerd-{n}.log"));
        std::fs::rename(&self.paths.containerd_log, &kept).map_err(|source| {
            NodeError::Prepare {
                path: kept.clone(),
                source,
            }
        })?;
        self.spawn()?;
        let (plugin, opts) = (self.plugin.clone(), self.opts.clone());
        self.wait_ready(&plugin, &opts).await
    }

    /// The PID of the plugin process that serves NRI for a drop-in or external plugin:
    /// the holder of the daemon lock in the plugin's runtime directory (the node's default
    /// plugin config puts it in `plugin-run/`), while that process lives.
    pub fn daemon_pid(&self) -> Option<i32> {
        let dir = self.paths.dir.join("plugin-run");
        let entries = std::fs::read_dir(dir).ok()?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("daemon-") && name.ends_with(".lock")) {
                continue;
            }
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            if let Ok(pid) = text.trim().parse::<i32>() {
                if pid > 0 && sys::alive(pid) {
                    return Some(pid);
                }
            }
        }
        None
    }

    /// A new CRI client for this node.
    pub async fn cri(&self) -> Result<Cri, CriError> {
        let mut cri = Cri::connect(&self.paths.grpc_socket).await?;
        cri.set_defaults(self.paths.pod_logs.clone(), self.cgroup_parent());
        Ok(cri)
    }

    /// A fresh host directory for hostPath-style mounts (created, world-writable).
    pub fn host_dir(&self, name: &str) -> Result<PathBuf, NodeError> {
        let d = self.paths.host.join(name);
        prep(&d)?;
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777));
        Ok(d)
    }

    /// Makes `dir` (inside the node directory) a mount point of its own with shared
    /// propagation, as the directories of a systemd host are: containerd accepts a
    /// `HostToContainer` mount of a host path only when the path's mount is shared or a
    /// slave. Teardown unmounts it with the node's other mounts.
    pub fn make_shared(&self, dir: &Path) -> Result<(), NodeError> {
        let fail = |source| NodeError::Prepare {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.starts_with(&self.paths.dir) {
            return Err(fail(std::io::Error::other("not inside the node directory")));
        }
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| fail(std::io::Error::other(e)))?;
        // SAFETY: plain mount(2) calls with valid NUL-terminated strings and null data.
        let rc = unsafe {
            libc::mount(
                c.as_ptr(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        // SAFETY: as above; propagation change only.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c.as_ptr(),
                std::ptr::null(),
                libc::MS_SHARED | libc::MS_REC,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(fail(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Checks that a pod IP is routed via the node's bridge; call before sending traffic.
    pub fn check_pod_route(&self, pod_ip: &str) -> Result<(), NodeError> {
        Ok(self.net.check_route(pod_ip)?)
    }

    /// What to show when a test's expectation fails: the plugin's log and containerd's lines
    /// about NRI plugins.
    pub fn diagnostics(&self) -> String {
        let log = self.containerd_log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains("plugin") && !l.contains("loading plugin") && !l.contains("skip")
            })
            .collect();
        format!(
            "plugin log:\n{}\ncontainerd about plugins:\n{}",
            self.plugin_log(),
            lines.join("\n")
        )
    }

    /// containerd's log so far.
    pub fn containerd_log(&self) -> String {
        std::fs::read_to_string(&self.paths.containerd_log).unwrap_or_default()
    }

    /// The plugin's log so far (see [`NodeOptions::plugin_config`]).
    pub fn plugin_log(&self) -> String {
        std::fs::read_to_string(&self.paths.plugin_log).unwrap_or_default()
    }

    /// Waits until `pred` holds for the plugin log, at most `limit`; returns the log.
    pub async fn wait_plugin_log(
        &self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        wait_text(&self.paths.plugin_log, limit, pred).await
    }

    /// Waits until `pred` holds for containerd's log, at most `limit`; returns the log.
    pub async fn wait_containerd_log(
        &self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        wait_text(&self.paths.containerd_log, limit, pred).await
    }

    /// Removes every pod through CRI, stops containerd, tears everything down and checks
    /// that nothing is left (processes, mounts, netns, sockets, cgroups, bridge, route).
    pub async fn stop(mut self) -> Result<(), NodeError> {
        if let Ok(mut cri) = Cri::connect(&self.paths.grpc_socket).await {
            let _ = cri.remove_all_pods().await;
        }
        let child = self.child.take();
        let lock_dir = self.install.lock_dir();
        teardown(&self.paths, &self.net, child, &lock_dir, self.slot);
        self.torn_down = true;
        let what = leftovers(&self.paths, &self.net);
        if what.is_empty() {
            Ok(())
        } else {
            Err(NodeError::Leftovers {
                dir: self.paths.dir.clone(),
                what,
            })
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.torn_down {
            let child = self.child.take();
            teardown(
                &self.paths,
                &self.net,
                child,
                &self.install.lock_dir(),
                self.slot,
            );
        }
    }
}

async fn wait_text(path: &Path, limit: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&s) {
            return Some(s);
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn other_slots_active(lock_dir: &Path, me: u8) -> bool {
    (0..MAX_SLOTS).filter(|s| *s != me).any(|s| {
        let lock = lock_dir.join(format!("slot-{s}.lock"));
        lock.exists() && matches!(sys::try_lock(&lock), Ok(None))
    })
}

/// Stops containerd, kills whatever the node left running, unmounts, removes the network
/// and the node directory (logs kept). Best effort, never panics; used by stop, Drop and
/// the cleanup entry point. `lock_dir` holds the slot locks and the saved `ip_forward`.
pub fn teardown(p: &NodePaths, net: &PodNetwork, child: Option<Child>, lock_dir: &Path, slot: u8) {
    // containerd itself.
    match child {
        Some(mut c) => {
            let pid = c.id() as i32;
            sys::kill(pid, libc::SIGTERM);
            let start = Instant::now();
            loop {
                if matches!(c.try_wait(), Ok(Some(_)) | Err(_)) {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    sys::kill(pid, libc::SIGKILL);
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None => {
            // An interrupted run: the PID file names containerd; check it is ours.
            if let Ok(s) = std::fs::read_to_string(&p.pid_file) {
                if let Ok(pid) = s.trim().parse::<i32>() {
                    if sys::cmdline(pid).contains(&*p.config.to_string_lossy()) {
                        sys::kill(pid, libc::SIGKILL);
                        sys::wait_gone(&[pid], Duration::from_secs(5));
                    }
                }
            }
        }
    }
    // Shims (their command line names our socket) and the pre-installed plugin (its
    // executable lives in our plugin directory).
    let dir = p.dir.to_string_lossy().into_owned();
    let pids = sys::processes_mentioning(&dir);
    // A shim killed here cannot remove its own socket (outside our directory): note the
    // sockets it holds and remove them once it is gone.
    let shim_sockets: Vec<PathBuf> = pids.iter().flat_map(|p| sys::socket_paths_of(*p)).collect();
    for pid in &pids {
        sys::kill(*pid, libc::SIGKILL);
    }
    sys::wait_gone(&pids, Duration::from_secs(5));
    for s in shim_sockets {
        let _ = std::fs::remove_file(s);
    }
    // Container processes: everything in the node's cgroup parent.
    for _ in 0..50 {
        let pids: Vec<i32> = sys::cgroup_dirs(&p.cgroup_name)
            .iter()
            .flat_map(|d| sys::cgroup_pids(d))
            .filter(|p| sys::alive(*p))
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            sys::kill(*pid, libc::SIGKILL);
        }
        sys::wait_gone(&pids, Duration::from_millis(200));
    }
    for d in sys::cgroup_dirs(&p.cgroup_name) {
        sys::remove_cgroup_tree(&d);
    }
    // Mounts (rootfs, shm, netns) under the node directory.
    for _ in 0..3 {
        let mounts = sys::mounts_under(&p.dir);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            let _ = sys::umount(&m);
        }
    }
    net.teardown();
    let _ = net::restore_ip_forward(lock_dir, other_slots_active(lock_dir, slot));
    // Everything but the logs.
    if let Ok(rd) = std::fs::read_dir(&p.dir) {
        for e in rd.flatten() {
            if e.path() == p.logs {
                continue;
            }
            let path = e.path();
            if path.is_dir() {
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// What a node left behind: processes, cgroups, mounts, sockets, netns files, bridge, route.
pub fn leftovers(p: &NodePaths, net: &PodNetwork) -> Vec<String> {
    let mut out = Vec::new();
    for pid in sys::processes_mentioning(&p.dir.to_string_lossy()) {
        out.push(format!("process {pid}: {}", sys::cmdline(pid)));
    }
    for d in sys::cgroup_dirs(&p.cgroup_name) {
        out.push(format!("cgroup {}", d.display()));
    }
    for m in sys::mounts_under(&p.dir) {
        out.push(format!("mount {}", m.display()));
    }
    for s in sys::sockets_under(&p.dir) {
        out.push(format!("socket {}", s.display()));
    }
    for d in [&p.state, &p.root] {
        if d.exists() {
            out.push(format!("directory {}", d.display()));
        }
    }
    if net.bridge_exists() {
        out.push(format!("bridge {}", net.bridge));
    }
    if net.route_exists() {
        out.push(format!("route unreachable {}", net.subnet));
    }
    out
}

/// Removes what interrupted runs left in every slot not in use right now. Returns the slots
/// it cleaned.
pub fn cleanup_all(install: &Install) -> Result<Vec<u8>, NodeError> {
    let run_dir = install.run_dir();
    let lock_dir = install.lock_dir();
    let mut cleaned = Vec::new();
    prep(&lock_dir)?;
    for slot in 0..MAX_SLOTS {
        let lock_path = lock_dir.join(format!("slot-{slot}.lock"));
        let paths = NodePaths::for_slot(&run_dir, slot);
        let net = PodNetwork::for_slot(slot)?;
        if !paths.dir.exists() && !net.bridge_exists() && !net.route_exists() {
            continue;
        }
        let Some(_lock) = sys::try_lock(&lock_path)? else {
            continue;
        };
        teardown(&paths, &net, None, &lock_dir, slot);
        cleaned.push(slot);
    }
    Ok(cleaned)
}
