//! tcpSocket, and choosing/connecting the address httpGet and tcpSocket talk to.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use tokio::net::{TcpSocket, TcpStream};

use super::{reach, Error, Limits, Outcome, Target};
use crate::ns::netsock;
use crate::ns::pidfd::PidFd;

/// The pod's network namespace: the runtime's path, else the sandbox's, else the container's.
pub(super) fn netns_path(target: &Target) -> Result<PathBuf, Error> {
    if let Some(p) = &target.pod_netns {
        return Ok(p.clone());
    }
    let pid = if target.pod_pid != 0 {
        target.pod_pid
    } else {
        target.init.as_ref().map_or(0, |p| p.pid())
    };
    if pid == 0 {
        return Err(Error::NoPodIp {
            container: target.container_id.clone(),
        });
    }
    Ok(PathBuf::from(format!("/proc/{pid}/ns/net")))
}

/// The address to connect to, by the rule in [`reach`]: the pod's own IP by default; another
/// host only when it is one of the pod's addresses, loopback, or allowed by the config.
pub(super) async fn choose_addr(
    host: Option<&str>,
    target: &Target,
    limits: &Limits,
) -> Result<IpAddr, Error> {
    let refused = || Error::HostRefused {
        host: host.unwrap_or_default().to_string(),
    };
    let host = reach::parse_host(host).map_err(|_| refused())?;
    let pod_ips = if target.pod_ips.is_empty() {
        netsock::addresses(&netns_path(target)?)
            .await
            .map_err(|source| Error::Ns {
                container: target.container_id.clone(),
                source,
            })?
    } else {
        target.pod_ips.clone()
    };
    reach::address(host, &pod_ips, &limits.allowed_hosts).map_err(|e| match e {
        reach::Unreachable::NoPodAddress => Error::NoPodIp {
            container: target.container_id.clone(),
        },
        reach::Unreachable::Refused(_) => refused(),
    })
}

/// Connects to `addr` from a socket created inside the pod's network namespace.
pub(super) async fn connect_in_pod(target: &Target, addr: SocketAddr) -> Result<TcpStream, Error> {
    let path = netns_path(target)?;
    // When the namespace is named through a PID, hold that process so the namespace we
    // entered is known to be its own (not a recycled PID's).
    let holder = if target.pod_netns.is_none() {
        let pid = if target.pod_pid != 0 {
            target.pod_pid
        } else {
            target.init.as_ref().map_or(0, |p| p.pid())
        };
        Some(PidFd::open(pid).map_err(|source| Error::Ns {
            container: target.container_id.clone(),
            source,
        })?)
    } else {
        None
    };
    let sock = netsock::tcp_socket(&path, addr.is_ipv6())
        .await
        .map_err(|source| Error::Ns {
            container: target.container_id.clone(),
            source,
        })?;
    if let Some(h) = &holder {
        if !h.is_alive() {
            return Err(Error::Ns {
                container: target.container_id.clone(),
                source: crate::ns::Error::ProcessGone { pid: h.pid() },
            });
        }
    }
    let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(sock.socket));
    socket
        .connect(addr)
        .await
        .map_err(|source| Error::Connect { addr, source })
}

pub(super) async fn tcp(
    host: Option<&str>,
    port: u16,
    target: &Target,
    limits: &Limits,
) -> Outcome {
    let result = async {
        let ip = choose_addr(host, target, limits).await?;
        connect_in_pod(target, SocketAddr::new(ip, port)).await
    }
    .await;
    match result {
        Ok(_stream) => Outcome::Succeeded {
            output: String::new(),
        },
        Err(e) => Outcome::Failed {
            reason: format!("tcpSocket: {e}"),
        },
    }
}
