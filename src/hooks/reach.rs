//! Which hosts an httpGet or tcpSocket hook may reach: the one rule that the annotation
//! validation ([`parse_host`]) and the runners ([`parse_host`], then [`allowed`] for every
//! address) share.
//!
//! A hook's `host` is empty (the pod's own address, as the kubelet uses the pod IP), an IP
//! address, or a DNS name (`localhost` is loopback; other names are resolved when the hook
//! runs, with the pod's own resolver configuration: see [`super::dns`]). Every connection is
//! made from inside the pod's network namespace, so a hook reaches what the pod's own
//! processes reach, under the pod's NetworkPolicy. The pod's own addresses and loopback are
//! always reachable; any other address must pass the plugin's policy
//! ([`crate::policy::Policy::check_addr`]; the default policy allows every address).

use std::net::{IpAddr, Ipv4Addr};

use crate::policy::{AddressDenied, Policy};

/// Where a hook's `host` field points, before the pod's addresses are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// No host given: the pod's own (first) address.
    Pod,
    /// An address; `localhost` is 127.0.0.1.
    Addr(IpAddr),
    /// A DNS name, resolved when the hook runs.
    Name(String),
}

/// A `host` that is neither empty, an IP address nor a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither an IP address nor a DNS name")]
pub struct BadHost(pub String);

/// Parses a hook's `host` field (`None` and `""` both mean the pod's address).
///
/// Kubernetes does not validate `host`; the kubelet puts it into a URL and fails the hook
/// when that cannot be dialled. Here a value that could never be dialled (spaces, a port, a
/// URL, brackets around an IPv6 address, a label over 63 characters, a name over 253, an
/// all-numeric last label) is refused when the container is created, and every IP address
/// or DNS name (letters, digits, `-` and `_` in dot-separated labels, optionally ending with
/// a dot) is accepted.
pub fn parse_host(host: Option<&str>) -> Result<Host, BadHost> {
    let h = match host {
        None | Some("") => return Ok(Host::Pod),
        Some(h) => h,
    };
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(Host::Addr(ip));
    }
    let bare = h.strip_suffix('.').unwrap_or(h);
    if bare.eq_ignore_ascii_case("localhost") {
        return Ok(Host::Addr(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
    if is_dns_name(bare) {
        Ok(Host::Name(h.to_string()))
    } else {
        Err(BadHost(h.to_string()))
    }
}

fn is_dns_name(name: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let last_numeric = name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    !name.is_empty() && name.len() <= 253 && name.split('.').all(label_ok) && !last_numeric
}

/// Whether a hook of a pod of `namespace`, whose addresses are `pod_ips`, may connect to
/// `ip`: loopback and the pod's own addresses always, any other address when the policy
/// allows it.
pub fn allowed(
    ip: IpAddr,
    pod_ips: &[IpAddr],
    policy: &Policy,
    namespace: &str,
) -> Result<(), AddressDenied> {
    if ip.is_loopback() || pod_ips.contains(&ip) {
        return Ok(());
    }
    policy.check_addr(namespace, ip)
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
        for lo in ["localhost", "LOCALHOST", "localhost."] {
            assert_eq!(
                parse_host(Some(lo)),
                Ok(Host::Addr(ip("127.0.0.1"))),
                "{lo}"
            );
        }
        assert_eq!(parse_host(Some("10.1.2.3")), Ok(Host::Addr(ip("10.1.2.3"))));
        assert_eq!(parse_host(Some("fd00::1")), Ok(Host::Addr(ip("fd00::1"))));
        for name in [
            "web",
            "web.team-a.svc.cluster.local",
            "web.team-a.svc.cluster.local.",
            "Web-0.example",
            "_http._tcp.example",
            "a.b2",
            "0web.example",
        ] {
            assert_eq!(
                parse_host(Some(name)),
                Ok(Host::Name(name.to_string())),
                "{name}"
            );
        }
        let long_label = "a".repeat(64);
        let long_name = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(63),
        ]
        .join(".");
        for bad in [
            "[::1]",
            "10.1.2.3:80",
            " 10.1.2.3",
            "http://web",
            "web/path",
            "a..b",
            ".web",
            "-web.example",
            "web-.example",
            "10.1.2",
            "example.123",
            "wéb.example",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert_eq!(
                parse_host(Some(bad)),
                Err(BadHost(bad.to_string())),
                "{bad}"
            );
        }
        assert_eq!(
            BadHost("a b".into()).to_string(),
            "\"a b\" is neither an IP address nor a DNS name"
        );
    }

    #[test]
    fn pod_addresses_and_loopback_always_other_addresses_by_policy() {
        let pod = [ip("192.0.2.10"), ip("fd00::10")];
        let open = Policy::default();
        for any in [
            "192.0.2.10",
            "fd00::10",
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "198.51.100.7",
        ] {
            assert_eq!(allowed(ip(any), &pod, &open, "ns"), Ok(()), "{any}");
        }
        let locked = crate::config::Config::from_toml(
            "[[policy.network]]\nallow = [\"198.51.100.0/24\"]\ndeny = [\"192.0.2.0/24\"]",
        )
        .unwrap()
        .policy;
        // the pod itself is never subject to the lists
        for own in ["192.0.2.10", "fd00::10", "127.0.0.1", "::1"] {
            assert_eq!(allowed(ip(own), &pod, &locked, "ns"), Ok(()), "{own}");
        }
        assert_eq!(allowed(ip("198.51.100.7"), &pod, &locked, "ns"), Ok(()));
        assert_eq!(
            allowed(ip("192.0.2.11"), &pod, &locked, "ns")
                .unwrap_err()
                .to_string(),
            "192.0.2.11 is refused by the plugin's policy (policy.network rule 1: deny [\"192.0.2.0/24\"])"
        );
        assert!(allowed(ip("203.0.113.1"), &pod, &locked, "ns").is_err());
    }
}
