//! The node's pod network: a CNI bridge on a small private subnet, a safety route, and
//! putting `net.ipv4.ip_forward` back the way it was.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sys;

/// Errors of the pod network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot run `ip {args}`: {source}")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("pod ip {ip} is not routed via bridge {bridge}: {route}")]
    NotViaBridge {
        ip: String,
        bridge: String,
        route: String,
    },
    #[error("bad subnet prefix {0} in NRI_HARNESS_SUBNET_PREFIX (want two octets, e.g. 10.231)")]
    BadPrefix(String),
    #[error(transparent)]
    Sys(#[from] sys::SysError),
}

/// The default first two octets of the pod subnets; slot N uses `PREFIX.(200+N).0/24`.
pub const DEFAULT_SUBNET_PREFIX: &str = "10.231";

/// One node's pod network.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The Linux bridge name (`nrihN`).
    pub bridge: String,
    /// The pod subnet in CIDR form.
    pub subnet: String,
    /// The CNI network name.
    pub name: String,
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    let joined = args.join(" ");
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetError::Spawn {
            args: joined.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Ip {
            args: joined,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl PodNetwork {
    /// The network of slot `slot`, with the subnet prefix from `NRI_HARNESS_SUBNET_PREFIX`
    /// (default [`DEFAULT_SUBNET_PREFIX`]).
    pub fn for_slot(slot: u8) -> Result<PodNetwork, NetError> {
        let prefix = std::env::var("NRI_HARNESS_SUBNET_PREFIX")
            .unwrap_or_else(|_| DEFAULT_SUBNET_PREFIX.to_string());
        let octets: Vec<&str> = prefix.split('.').collect();
        if octets.len() != 2 || octets.iter().any(|o| o.parse::<u8>().is_err()) {
            return Err(NetError::BadPrefix(prefix));
        }
        Ok(PodNetwork {
            bridge: format!("nrih{slot}"),
            subnet: format!("{prefix}.{}.0/24", 200u16 + slot as u16),
            name: format!("nri-harness-{slot}"),
        })
    }

    /// The CNI network configuration list (bridge + host-local, no NAT, no default route).
    pub fn conflist(&self, ipam_dir: &Path) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.subnet }]],
                    "dataDir": ipam_dir,
                }
            }]
        })
        .to_string()
    }

    /// Adds the safety route: without the bridge, packets to the subnet fail instead of
    /// following the default route.
    pub fn add_safety_route(&self) -> Result<(), NetError> {
        ip(&[
            "route",
            "replace",
            "unreachable",
            &self.subnet,
            "metric",
            "4000",
        ])
        .map(|_| ())
    }

    /// Checks that `pod_ip` is routed via this network's bridge.
    pub fn check_route(&self, pod_ip: &str) -> Result<(), NetError> {
        let route = ip(&["route", "get", pod_ip])?;
        let via_bridge = route
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == "dev" && w[1] == self.bridge);
        if via_bridge {
            Ok(())
        } else {
            Err(NetError::NotViaBridge {
                ip: pod_ip.to_string(),
                bridge: self.bridge.clone(),
                route: route.trim().to_string(),
            })
        }
    }

    /// Whether the bridge exists.
    pub fn bridge_exists(&self) -> bool {
        Path::new("/sys/class/net").join(&self.bridge).exists()
    }

    /// Whether the safety route exists.
    pub fn route_exists(&self) -> bool {
        ip(&["route", "show", "type", "unreachable", &self.subnet])
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
    }

    /// Deletes the bridge and the safety route (best effort).
    pub fn teardown(&self) {
        if self.bridge_exists() {
            let _ = ip(&["link", "del", &self.bridge]);
        }
        while self.route_exists() {
            if ip(&[
                "route",
                "del",
                "unreachable",
                &self.subnet,
                "metric",
                "4000",
            ])
            .is_err()
            {
                break;
            }
        }
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn forward_file(lock_dir: &Path) -> PathBuf {
    lock_dir.join("ip_forward.orig")
}

/// Remembers `ip_forward` as it was before the first of our nodes started.
pub fn remember_ip_forward(lock_dir: &Path) -> Result<(), NetError> {
    let _guard = sys::lock(&lock_dir.join(".net.lock"))?;
    let f = forward_file(lock_dir);
    if !f.exists() {
        let v = std::fs::read_to_string(IP_FORWARD).unwrap_or_else(|_| "0".to_string());
        let _ = std::fs::write(&f, v.trim());
    }
    Ok(())
}

/// Puts `ip_forward` back when no other node of ours is running.
pub fn restore_ip_forward(lock_dir: &Path, active_elsewhere: bool) -> Result<(), NetError> {
    let _guard = sys::lock(&lock_dir.join(".net.lock"))?;
    if active_elsewhere {
        return Ok(());
    }
    let f = forward_file(lock_dir);
    if let Ok(v) = std::fs::read_to_string(&f) {
        let _ = std::fs::write(IP_FORWARD, v.trim());
        let _ = std::fs::remove_file(&f);
    }
    Ok(())
}
