//! The operator's policy for hooks: which handler kinds the pods of which namespaces may use,
//! and which addresses httpGet and tcpSocket hooks may reach.
//!
//! Written in the plugin config (see [`RawPolicy`]), compiled once when the config is read
//! (namespace patterns split, CIDRs parsed, messages rendered), and then only evaluated:
//! every decision is a pure function of the compiled policy, a namespace and a hook or an
//! address, cheap enough for `CreateContainer`.
//!
//! - **Handler rules** (`[[policy.handlers]]`): `kinds` may be used only by pods whose
//!   namespace matches one of `namespaces`. A kind no rule names is allowed everywhere; a kind
//!   several rules name must satisfy each of them.
//! - **Network rules** (`[[policy.network]]`): for the pods whose namespace matches
//!   `namespaces` (every pod when absent), an address a hook connects to must be inside one of
//!   the `allow` CIDRs (when `allow` is given) and inside none of the `deny` CIDRs. The pod's
//!   own addresses and loopback are the pod itself and are never subject to these rules (see
//!   [`crate::hooks::reach`]).
//!
//! No rule at all (the default) allows every handler and every address.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::annotations::{Action, AnnotationError, HookSpec, Hooks};

/// The `[policy]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub handlers: Vec<RawHandlerRule>,
    #[serde(default)]
    pub network: Vec<RawNetworkRule>,
}

/// One `[[policy.handlers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHandlerRule {
    /// Handler kinds: `exec`, `httpGet`, `sleep`, `tcpSocket`.
    pub kinds: Vec<String>,
    /// The only namespaces whose pods may use them: names, or patterns with `*`.
    pub namespaces: Vec<String>,
}

/// One `[[policy.network]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetworkRule {
    /// The namespaces whose pods the rule applies to; every pod when absent.
    pub namespaces: Option<Vec<String>>,
    /// When given: an address must be inside one of these (`10.0.0.0/8`, `fd00::/8`, or a
    /// single address).
    pub allow: Option<Vec<String>>,
    /// An address inside one of these is refused (wins over `allow`).
    pub deny: Option<Vec<String>>,
}

/// A policy that cannot be compiled: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field {field:?}: {problem}")]
pub struct PolicyError {
    pub field: String,
    pub problem: String,
}

/// The handler kinds, as Kubernetes names them.
pub const KINDS: [&str; 4] = ["exec", "httpGet", "sleep", "tcpSocket"];

/// A namespace pattern: an exact name, or pieces separated by `*` (any run of characters).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    pieces: Option<Vec<String>>,
}

impl Pattern {
    fn compile(field: &str, text: &str) -> Result<Pattern, PolicyError> {
        let ok = !text.is_empty()
            && text.len() <= 253
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*');
        if !ok {
            return Err(PolicyError {
                field: field.to_string(),
                problem: format!(
                    "{text:?} is not a namespace name or pattern (lower-case letters, digits, \
                     '-', and '*' for any run of characters)"
                ),
            });
        }
        let pieces = text
            .contains('*')
            .then(|| text.split('*').map(str::to_string).collect());
        Ok(Pattern {
            text: text.to_string(),
            pieces,
        })
    }

    fn matches(&self, name: &str) -> bool {
        let Some(pieces) = &self.pieces else {
            return self.text == name;
        };
        // pieces = [first, middle..., last]: `first` anchors the start, `last` the end, each
        // middle piece is found left to right in what remains.
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
            return false;
        };
        if name.len() < first.len() + last.len()
            || !name.starts_with(first.as_str())
            || !name.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &name[first.len()..name.len() - last.len()];
        for piece in &pieces[1..pieces.len() - 1] {
            match rest.find(piece.as_str()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}

fn compile_patterns(field: &str, list: &[String]) -> Result<Vec<Pattern>, PolicyError> {
    if list.is_empty() {
        return Err(PolicyError {
            field: field.to_string(),
            problem: "must name at least one namespace (\"*\" for every namespace)".into(),
        });
    }
    list.iter().map(|p| Pattern::compile(field, p)).collect()
}

fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// `["a","b-*"]`, as the rules are shown in messages.
fn show_list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{item}\"");
    }
    out.push(']');
    out
}

/// Parses a CIDR (`10.0.0.0/8`) or a single address (`/32` or `/128`). Host bits must be
/// zero, so that `10.1.2.3/8` (probably meant as `10.0.0.0/8`) is not silently widened.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("{text:?} is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set: write \"{}\" for the whole network",
            net.trunc()
        ));
    }
    Ok(net)
}

fn compile_cidrs(field: &str, list: &[String]) -> Result<Vec<IpNet>, PolicyError> {
    list.iter()
        .map(|c| {
            parse_cidr(c).map_err(|problem| PolicyError {
                field: field.to_string(),
                problem,
            })
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HandlerRule {
    /// `policy.handlers rule 2`.
    label: String,
    kinds: Vec<&'static str>,
    namespaces: Vec<Pattern>,
    /// `exec only in ["kube-system","ops-*"]`.
    shown: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NetworkRule {
    /// `policy.network rule 1`, or `allowed_hosts`.
    label: String,
    /// `None`: every pod.
    namespaces: Option<Vec<Pattern>>,
    allow: Option<Vec<IpNet>>,
    deny: Vec<IpNet>,
}

/// The compiled policy. The default allows everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    handlers: Vec<HandlerRule>,
    network: Vec<NetworkRule>,
}

/// A hook whose handler kind the policy forbids in its pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} hooks are not allowed in namespace {namespace:?} ({rule})")]
pub struct HandlerDenied {
    pub kind: &'static str,
    pub namespace: String,
    /// The rule, e.g. `policy.handlers rule 2: exec only in ["kube-system","ops-*"]`.
    pub rule: String,
}

/// An address the policy does not let hooks of the pod's namespace reach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{addr} is refused by the plugin's policy ({rule})")]
pub struct AddressDenied {
    pub addr: IpAddr,
    /// The rule and its list, e.g. `policy.network rule 1: deny ["10.0.0.0/8"]`.
    pub rule: String,
}

impl RawPolicy {
    /// Compiles the rules; `allowed_hosts` (the deprecated key, see the config) becomes a
    /// network rule for every pod that allows those addresses only.
    pub fn compile(&self, allowed_hosts: Option<&[IpAddr]>) -> Result<Policy, PolicyError> {
        let mut policy = Policy::default();
        for (i, rule) in self.handlers.iter().enumerate() {
            let n = i + 1;
            let field = |f: &str| format!("policy.handlers[{n}].{f}");
            if rule.kinds.is_empty() {
                return Err(PolicyError {
                    field: field("kinds"),
                    problem: format!("must name at least one of {}", show_list(KINDS)),
                });
            }
            let mut kinds = Vec::new();
            for k in &rule.kinds {
                let Some(kind) = KINDS.iter().find(|known| **known == k) else {
                    return Err(PolicyError {
                        field: field("kinds"),
                        problem: format!(
                            "{k:?} is not a handler kind (one of {})",
                            show_list(KINDS)
                        ),
                    });
                };
                if !kinds.contains(kind) {
                    kinds.push(*kind);
                }
            }
            let namespaces = compile_patterns(&field("namespaces"), &rule.namespaces)?;
            let shown = format!(
                "policy.handlers rule {n}: {} only in {}",
                kinds.join(", "),
                show_list(namespaces.iter().map(|p| &p.text))
            );
            policy.handlers.push(HandlerRule {
                label: format!("policy.handlers rule {n}"),
                kinds,
                namespaces,
                shown,
            });
        }
        for (i, rule) in self.network.iter().enumerate() {
            let n = i + 1;
            let field = |f: &str| format!("policy.network[{n}].{f}");
            let namespaces = rule
                .namespaces
                .as_deref()
                .map(|list| compile_patterns(&field("namespaces"), list))
                .transpose()?;
            let allow = rule
                .allow
                .as_deref()
                .map(|list| compile_cidrs(&field("allow"), list))
                .transpose()?;
            let deny = compile_cidrs(&field("deny"), rule.deny.as_deref().unwrap_or_default())?;
            if allow.is_none() && deny.is_empty() {
                return Err(PolicyError {
                    field: format!("policy.network[{n}]"),
                    problem: "needs \"allow\", \"deny\" or both".into(),
                });
            }
            policy.network.push(NetworkRule {
                label: format!("policy.network rule {n}"),
                namespaces,
                allow,
                deny,
            });
        }
        if let Some(hosts) = allowed_hosts {
            policy.network.push(NetworkRule {
                label: "allowed_hosts".into(),
                namespaces: None,
                allow: Some(hosts.iter().map(|ip| IpNet::from(*ip)).collect()),
                deny: Vec::new(),
            });
        }
        Ok(policy)
    }
}

impl Policy {
    /// Whether the policy has no rule at all (every handler, every address).
    pub fn is_permissive(&self) -> bool {
        self.handlers.is_empty() && self.network.is_empty()
    }

    /// Whether a hook of `kind` may be used by a pod of `namespace`.
    pub fn check_kind(&self, kind: &'static str, namespace: &str) -> Result<(), HandlerDenied> {
        for rule in &self.handlers {
            if rule.kinds.contains(&kind) && !any_matches(&rule.namespaces, namespace) {
                return Err(HandlerDenied {
                    kind,
                    namespace: namespace.to_string(),
                    rule: rule.shown.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether a hook of a pod of `namespace` may connect to `addr` (the pod's own addresses
    /// and loopback are not asked about: see [`crate::hooks::reach`]).
    pub fn check_addr(&self, namespace: &str, addr: IpAddr) -> Result<(), AddressDenied> {
        // An IPv4-mapped IPv6 address is the IPv4 address it carries.
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        for rule in &self.network {
            if rule
                .namespaces
                .as_ref()
                .is_some_and(|ns| !any_matches(ns, namespace))
            {
                continue;
            }
            if let Some(net) = rule.deny.iter().find(|n| n.contains(&addr)) {
                return Err(AddressDenied {
                    addr,
                    rule: format!("{}: deny {}", rule.label, show_list([net])),
                });
            }
            if let Some(allow) = &rule.allow {
                if !allow.iter().any(|n| n.contains(&addr)) {
                    return Err(AddressDenied {
                        addr,
                        rule: format!("{}: only {}", rule.label, show_list(allow)),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks a container's hooks at `CreateContainer`: each hook's handler kind, and the
    /// address of an httpGet or tcpSocket hook whose `host` is an IP address other than
    /// loopback or one of `pod_ips` (a name is checked once it is resolved, when the hook
    /// runs). The error names the hook's annotation key.
    pub fn check_hooks(
        &self,
        hooks: &Hooks,
        namespace: &str,
        pod_ips: &[IpAddr],
    ) -> Result<(), AnnotationError> {
        if self.is_permissive() {
            return Ok(());
        }
        for spec in [&hooks.post_start, &hooks.pre_stop].into_iter().flatten() {
            self.check_hook(spec, namespace, pod_ips)?;
        }
        Ok(())
    }

    fn check_hook(
        &self,
        spec: &HookSpec,
        namespace: &str,
        pod_ips: &[IpAddr],
    ) -> Result<(), AnnotationError> {
        let refused = |problem: String| AnnotationError {
            key: spec.key.clone(),
            problem,
        };
        self.check_kind(spec.action.kind(), namespace)
            .map_err(|e| refused(e.to_string()))?;
        let host = match &spec.action {
            Action::HttpGet(get) => get.host.as_deref(),
            Action::TcpSocket { host, .. } => host.as_deref(),
            Action::Exec { .. } | Action::Sleep { .. } => None,
        };
        if let Some(ip) = host.and_then(|h| h.parse::<IpAddr>().ok()) {
            if !ip.is_loopback() && !pod_ips.contains(&ip) {
                self.check_addr(namespace, ip).map_err(|e| {
                    refused(format!(
                        "host {ip} is refused in namespace {namespace:?} ({})",
                        e.rule
                    ))
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::{HttpGet, Phase, Scheme};

    fn compile(toml_text: &str) -> Result<Policy, PolicyError> {
        #[derive(Deserialize)]
        struct Wrap {
            policy: RawPolicy,
        }
        let w: Wrap = toml::from_str(toml_text).unwrap();
        w.policy.compile(None)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn patterns() {
        let cases: &[(&str, &str, bool)] = &[
            ("kube-system", "kube-system", true),
            ("kube-system", "kube-system2", false),
            ("*", "anything", true),
            ("ops-*", "ops-", true),
            ("ops-*", "ops-a", true),
            ("ops-*", "xops-a", false),
            ("*-prod", "team-a-prod", true),
            ("*-prod", "prod", false),
            ("team-*-prod", "team-a-prod", true),
            ("team-*-prod", "team--prod", true),
            ("team-*-prod", "team-prod", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("a*b*c", "abcb", false),
            ("**", "", true),
            ("a*a", "a", false),
        ];
        for (pattern, name, want) in cases {
            let p = Pattern::compile("f", pattern).unwrap();
            assert_eq!(p.matches(name), *want, "{pattern} ~ {name}");
        }
        for bad in ["", "Team", "a b", "a/b", "a.b", "?"] {
            assert!(Pattern::compile("f", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_cidr("fd00::/8").unwrap().to_string(), "fd00::/8");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_cidr("10.1.2.3/8").unwrap_err(),
            "\"10.1.2.3/8\" has host bits set: write \"10.0.0.0/8\" for the whole network"
        );
        assert_eq!(
            parse_cidr("10.0.0.0/33").unwrap_err(),
            "\"10.0.0.0/33\" is not a CIDR (e.g. \"10.0.0.0/8\") or an IP address"
        );
        assert!(parse_cidr("example.test").is_err());
        let net = parse_cidr("192.0.2.0/24").unwrap();
        assert!(net.contains(&ip("192.0.2.0")));
        assert!(net.contains(&ip("192.0.2.255")));
        assert!(!net.contains(&ip("192.0.3.0")));
        assert!(!net.contains(&ip("::ffff:192.0.2.1")));
    }

    const LOCKED: &str = r#"
        [[policy.handlers]]
        kinds = ["exec"]
        namespaces = ["kube-system", "ops-*"]

        [[policy.handlers]]
        kinds = ["tcpSocket", "exec"]
        namespaces = ["kube-system", "ops-*", "db-*"]

        [[policy.network]]
        deny = ["169.254.0.0/16", "10.96.0.0/12"]

        [[policy.network]]
        namespaces = ["team-*"]
        allow = ["10.244.0.0/16", "fd00:10::/64"]
        deny = ["10.244.99.0/24"]
    "#;

    #[test]
    fn handler_decisions() {
        let p = compile(LOCKED).unwrap();
        let table: &[(&'static str, &str, Option<&str>)] = &[
            ("exec", "kube-system", None),
            ("exec", "ops-blue", None),
            (
                "exec",
                "team-a",
                Some(
                    r#"exec hooks are not allowed in namespace "team-a" (policy.handlers rule 1: exec only in ["kube-system","ops-*"])"#,
                ),
            ),
            (
                "exec",
                "db-main",
                Some(
                    r#"exec hooks are not allowed in namespace "db-main" (policy.handlers rule 1: exec only in ["kube-system","ops-*"])"#,
                ),
            ),
            ("tcpSocket", "db-main", None),
            (
                "tcpSocket",
                "team-a",
                Some(
                    r#"tcpSocket hooks are not allowed in namespace "team-a" (policy.handlers rule 2: tcpSocket, exec only in ["kube-system","ops-*","db-*"])"#,
                ),
            ),
            ("httpGet", "team-a", None),
            ("sleep", "anything", None),
        ];
        for (kind, ns, want) in table {
            let got = p.check_kind(kind, ns).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), *want, "{kind} in {ns}");
        }
        assert!(Policy::default().check_kind("exec", "x").is_ok());
    }

    #[test]
    fn network_decisions() {
        let p = compile(LOCKED).unwrap();
        let table: &[(&str, &str, Option<&str>)] = &[
            ("default", "10.1.2.3", None),
            ("default", "10.244.99.1", None),
            (
                "default",
                "169.254.169.254",
                Some(
                    r#"169.254.169.254 is refused by the plugin's policy (policy.network rule 1: deny ["169.254.0.0/16"])"#,
                ),
            ),
            (
                "team-a",
                "10.96.0.10",
                Some(
                    r#"10.96.0.10 is refused by the plugin's policy (policy.network rule 1: deny ["10.96.0.0/12"])"#,
                ),
            ),
            ("team-a", "10.244.3.4", None),
            ("team-a", "fd00:10::5", None),
            (
                "team-a",
                "10.244.99.7",
                Some(
                    r#"10.244.99.7 is refused by the plugin's policy (policy.network rule 2: deny ["10.244.99.0/24"])"#,
                ),
            ),
            (
                "team-a",
                "192.0.2.1",
                Some(
                    r#"192.0.2.1 is refused by the plugin's policy (policy.network rule 2: only ["10.244.0.0/16","fd00:10::/64"])"#,
                ),
            ),
            // an IPv4-mapped address is the IPv4 address
            (
                "default",
                "::ffff:169.254.1.1",
                Some(
                    r#"169.254.1.1 is refused by the plugin's policy (policy.network rule 1: deny ["169.254.0.0/16"])"#,
                ),
            ),
        ];
        for (ns, addr, want) in table {
            let got = p.check_addr(ns, ip(addr)).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), *want, "{addr} from {ns}");
        }
        let empty_allow = compile("[[policy.network]]\nallow = []").unwrap();
        assert!(empty_allow.check_addr("a", ip("10.0.0.1")).is_err());
    }

    #[test]
    fn allowed_hosts_is_an_allow_rule_for_every_pod() {
        let p = RawPolicy::default()
            .compile(Some(&[ip("198.51.100.7")]))
            .unwrap();
        assert!(p.check_addr("x", ip("198.51.100.7")).is_ok());
        assert_eq!(
            p.check_addr("x", ip("198.51.100.8"))
                .unwrap_err()
                .to_string(),
            r#"198.51.100.8 is refused by the plugin's policy (allowed_hosts: only ["198.51.100.7/32"])"#
        );
        let none = RawPolicy::default().compile(Some(&[])).unwrap();
        assert!(none.check_addr("x", ip("198.51.100.7")).is_err());
        assert!(RawPolicy::default().compile(None).unwrap().is_permissive());
    }

    fn hook(key: &str, action: Action) -> HookSpec {
        HookSpec {
            phase: Phase::PostStart,
            key: key.into(),
            action,
            timeout: None,
            stop_signal: None,
        }
    }

    fn get(host: Option<&str>) -> Action {
        Action::HttpGet(HttpGet {
            path: "/".into(),
            port: 80,
            host: host.map(str::to_string),
            scheme: Scheme::Http,
            headers: vec![],
        })
    }

    #[test]
    fn hooks_at_create() {
        let p = compile(LOCKED).unwrap();
        let key = "prestop.lifecycle.nri.io/container.app";
        let hooks = |action| Hooks {
            post_start: Some(hook(
                "poststart.lifecycle.nri.io/pod",
                Action::Sleep { seconds: 1 },
            )),
            pre_stop: Some(hook(key, action)),
        };
        let exec = Action::Exec {
            command: vec!["true".into()],
        };
        assert_eq!(
            p.check_hooks(&hooks(exec.clone()), "team-a", &[])
                .unwrap_err()
                .to_string(),
            r#"annotation "prestop.lifecycle.nri.io/container.app": exec hooks are not allowed in namespace "team-a" (policy.handlers rule 1: exec only in ["kube-system","ops-*"])"#
        );
        assert!(p.check_hooks(&hooks(exec), "ops-x", &[]).is_ok());
        assert_eq!(
            p.check_hooks(&hooks(get(Some("10.244.99.3"))), "team-a", &[])
                .unwrap_err()
                .to_string(),
            r#"annotation "prestop.lifecycle.nri.io/container.app": host 10.244.99.3 is refused in namespace "team-a" (policy.network rule 2: deny ["10.244.99.0/24"])"#
        );
        // the pod's own address, loopback, the default host and names pass at create
        let own = [ip("10.244.99.3")];
        for ok in [
            get(Some("10.244.99.3")),
            get(Some("127.0.0.1")),
            get(None),
            get(Some("web.team-a.svc")),
        ] {
            assert!(
                p.check_hooks(&hooks(ok.clone()), "team-a", &own).is_ok(),
                "{ok:?}"
            );
        }
        assert!(p
            .check_hooks(
                &hooks(Action::TcpSocket {
                    host: Some("192.0.2.1".into()),
                    port: 1
                }),
                "team-a",
                &[]
            )
            .is_err());
    }

    #[test]
    fn compile_errors_name_the_field() {
        let e = |t: &str| compile(t).unwrap_err().to_string();
        assert_eq!(
            e("[[policy.handlers]]\nkinds = [\"Exec\"]\nnamespaces = [\"a\"]"),
            r#"field "policy.handlers[1].kinds": "Exec" is not a handler kind (one of ["exec","httpGet","sleep","tcpSocket"])"#
        );
        assert_eq!(
            e("[[policy.handlers]]\nkinds = []\nnamespaces = [\"a\"]"),
            r#"field "policy.handlers[1].kinds": must name at least one of ["exec","httpGet","sleep","tcpSocket"]"#
        );
        assert_eq!(
            e("[[policy.handlers]]\nkinds = [\"exec\"]\nnamespaces = []"),
            r#"field "policy.handlers[1].namespaces": must name at least one namespace ("*" for every namespace)"#
        );
        assert_eq!(
            e("[[policy.handlers]]\nkinds = [\"exec\"]\nnamespaces = [\"Kube_System\"]"),
            r#"field "policy.handlers[1].namespaces": "Kube_System" is not a namespace name or pattern (lower-case letters, digits, '-', and '*' for any run of characters)"#
        );
        assert_eq!(
            e("[[policy.network]]\nnamespaces = [\"a\"]"),
            r#"field "policy.network[1]": needs "allow", "deny" or both"#
        );
        assert_eq!(
            e("[[policy.network]]\ndeny = [\"10.0.0.0/8\"]\n[[policy.network]]\nallow = [\"10.0.0.1/8\"]"),
            r#"field "policy.network[2].allow": "10.0.0.1/8" has host bits set: write "10.0.0.0/8" for the whole network"#
        );
    }
}
