//! Which hosts an httpGet or tcpSocket hook may reach: the one rule that the annotation
//! validation ([`parse_host`]) and the runners ([`parse_host`] then [`address`]) share.
//!
//! A hook's `host` is empty (the pod's own address, as the kubelet uses the pod IP),
//! `localhost`, or an IP address. Host names are never resolved, so no name service can point
//! a hook at an address the operator did not list. The address is then reachable when it is
//! loopback (the pod's own: connections are made from inside the pod's network namespace),
//! one of the pod's addresses, or listed in the plugin config's `allowed_hosts`.

use std::net::{IpAddr, Ipv4Addr};

/// Where a hook's `host` field points, before the pod's addresses are known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// No host given: the pod's own (first) address.
    Pod,
    /// An address; `localhost` is 127.0.0.1.
    Addr(IpAddr),
}

/// A `host` that is neither empty, `localhost` nor an IP address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or \"localhost\" (host names are not resolved)")]
pub struct NotAnAddress(pub String);

/// Why a hook may not connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    #[error("no address of the pod is known")]
    NoPodAddress,
    #[error("{0} is neither one of the pod's addresses, loopback, nor an allowed host")]
    Refused(IpAddr),
}

/// Parses a hook's `host` field (`None` and `""` both mean the pod's address).
pub fn parse_host(host: Option<&str>) -> Result<Host, NotAnAddress> {
    match host {
        None | Some("") => Ok(Host::Pod),
        Some("localhost") => Ok(Host::Addr(IpAddr::V4(Ipv4Addr::LOCALHOST))),
        Some(h) => h
            .parse::<IpAddr>()
            .map(Host::Addr)
            .map_err(|_| NotAnAddress(h.to_string())),
    }
}

/// The address a hook connects to, given the pod's addresses (first = the pod's IP) and the
/// config's `allowed_hosts`.
pub fn address(host: Host, pod_ips: &[IpAddr], allowed: &[IpAddr]) -> Result<IpAddr, Unreachable> {
    match host {
        Host::Pod => pod_ips.first().copied().ok_or(Unreachable::NoPodAddress),
        Host::Addr(ip) if ip.is_loopback() || pod_ips.contains(&ip) || allowed.contains(&ip) => {
            Ok(ip)
        }
        Host::Addr(ip) => Err(Unreachable::Refused(ip)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_field_forms() {
        assert_eq!(parse_host(None), Ok(Host::Pod));
        assert_eq!(parse_host(Some("")), Ok(Host::Pod));
        assert_eq!(
            parse_host(Some("localhost")),
            Ok(Host::Addr(ip("127.0.0.1")))
        );
        assert_eq!(parse_host(Some("10.1.2.3")), Ok(Host::Addr(ip("10.1.2.3"))));
        assert_eq!(parse_host(Some("fd00::1")), Ok(Host::Addr(ip("fd00::1"))));
        // names are never resolved, whatever they look like
        for name in [
            "example.test",
            "LOCALHOST",
            "[::1]",
            "10.1.2.3:80",
            " 10.1.2.3",
        ] {
            assert_eq!(
                parse_host(Some(name)),
                Err(NotAnAddress(name.to_string())),
                "{name}"
            );
        }
        assert_eq!(
            NotAnAddress("db".into()).to_string(),
            "\"db\" is not an IP address or \"localhost\" (host names are not resolved)"
        );
    }

    #[test]
    fn pod_addresses_loopback_and_allowed_hosts_only() {
        let pod = [ip("192.0.2.10"), ip("fd00::10")];
        let allowed = [ip("198.51.100.7")];
        assert_eq!(address(Host::Pod, &pod, &[]), Ok(ip("192.0.2.10")));
        assert_eq!(
            address(Host::Pod, &[], &allowed),
            Err(Unreachable::NoPodAddress)
        );
        for ok in ["192.0.2.10", "fd00::10", "127.0.0.1", "127.1.2.3", "::1"] {
            assert_eq!(address(Host::Addr(ip(ok)), &pod, &[]), Ok(ip(ok)), "{ok}");
        }
        let other = Host::Addr(ip("198.51.100.7"));
        assert_eq!(
            address(other, &pod, &[]),
            Err(Unreachable::Refused(ip("198.51.100.7")))
        );
        assert_eq!(address(other, &pod, &allowed), Ok(ip("198.51.100.7")));
        // an allowed host does not open any other
        assert_eq!(
            address(Host::Addr(ip("198.51.100.8")), &pod, &allowed),
            Err(Unreachable::Refused(ip("198.51.100.8")))
        );
    }
}
