//! tcpSocket, and choosing/connecting the address httpGet and tcpSocket talk to.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use super::{reach, Error, Limits, Outcome, Target};
use crate::ns::netsock::{self, Netns};

/// The pod's network namespace: the runtime's path, else the container's own, entered through
/// its init's pidfd (see [`Target::pod_netns`]).
pub(super) fn pod_netns(target: &Target) -> Result<Netns, Error> {
    let ns_err = |source| Error::Ns {
        container: target.container_id.clone(),
        source,
    };
    match (&target.pod_netns, &target.init) {
        (Some(path), _) => Netns::open(path).map_err(ns_err),
        (None, Some(init)) => Netns::of(init).map_err(ns_err),
        (None, None) => Err(Error::NoPodIp {
            container: target.container_id.clone(),
        }),
    }
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
        netsock::addresses(pod_netns(target)?)
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
    let sock = netsock::tcp_socket(pod_netns(target)?, addr.is_ipv6())
        .await
        .map_err(|source| Error::Ns {
            container: target.container_id.clone(),
            source,
        })?;
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
