//! tcpSocket, and choosing/connecting the address httpGet and tcpSocket talk to.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use super::{dns, reach, Error, Limits, Outcome, Target};
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

/// The address to connect to, by the rule in [`reach`]: the pod's own IP by default; an IP
/// address or a name resolved with the pod's resolver, when the pod itself or the policy
/// allows it.
pub(super) async fn choose_addr(
    host: Option<&str>,
    target: &Target,
    limits: &Limits,
) -> Result<IpAddr, Error> {
    let shown = host.unwrap_or_default();
    let refused = |reason: String| Error::HostRefused {
        host: shown.to_string(),
        reason,
    };
    let candidates = match reach::parse_host(host).map_err(|e| refused(e.to_string()))? {
        reach::Host::Pod => {
            return pod_ips(target)
                .await?
                .first()
                .copied()
                .ok_or_else(|| Error::NoPodIp {
                    container: target.container_id.clone(),
                })
        }
        reach::Host::Addr(ip) => vec![ip],
        reach::Host::Name(name) => resolve(&name, target).await?,
    };
    // Loopback and a permissive policy need no look at the pod's addresses.
    let pod_ips = if limits.policy.is_permissive() || candidates.iter().all(IpAddr::is_loopback) {
        Vec::new()
    } else {
        pod_ips(target).await?
    };
    let mut first_refusal = None;
    for ip in &candidates {
        match reach::allowed(*ip, &pod_ips, &limits.policy, &target.pod_namespace) {
            Ok(()) => return Ok(*ip),
            Err(e) => {
                first_refusal.get_or_insert(e);
            }
        }
    }
    Err(refused(match first_refusal {
        Some(e) if candidates.len() > 1 => format!(
            "{e} (and so is every other address it resolves to: {})",
            candidates
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(e) => e.to_string(),
        None => "resolves to no address".into(),
    }))
}

/// The pod's addresses: as the runtime sent them, else read from its network namespace.
async fn pod_ips(target: &Target) -> Result<Vec<IpAddr>, Error> {
    if !target.pod_ips.is_empty() {
        return Ok(target.pod_ips.clone());
    }
    netsock::addresses(pod_netns(target)?)
        .await
        .map_err(|source| Error::Ns {
            container: target.container_id.clone(),
            source,
        })
}

/// Sockets made in the pod's network namespace, for the DNS queries.
struct PodSockets<'a>(&'a Target);

#[async_trait::async_trait]
impl dns::Sockets for PodSockets<'_> {
    async fn socket(&self, udp: bool, v6: bool) -> Result<std::os::fd::OwnedFd, String> {
        let netns = pod_netns(self.0).map_err(|e| e.to_string())?;
        let made = if udp {
            netsock::udp_socket(netns, v6).await
        } else {
            netsock::tcp_socket(netns, v6).await
        };
        made.map(|s| s.socket).map_err(|e| e.to_string())
    }
}

/// Resolves `name` as the pod would: the container's own `/etc/hosts` and
/// `/etc/resolv.conf`, queries sent from the pod's network namespace.
async fn resolve(name: &str, target: &Target) -> Result<Vec<IpAddr>, Error> {
    let Some(init) = target.init.as_deref() else {
        return Err(dns::DnsError::Config {
            name: name.to_string(),
            path: "/etc/resolv.conf",
            reason: format!("no process of container {} is known", target.container_id),
        }
        .into());
    };
    let (conf, hosts) = dns::container_config(init, name)?;
    Ok(dns::resolve(name, &conf, &hosts, &PodSockets(target)).await?)
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
