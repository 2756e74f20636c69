//! Hook annotations: Kubernetes `LifecycleHandler` JSON → validated [`HookSpec`].

use std::time::Duration;

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    PostStart,
    PreStop,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::PostStart => "postStart",
            Phase::PreStop => "preStop",
        }
    }
}

/// `HTTP` or `HTTPS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// A validated `httpGet` handler. The port is already resolved to a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    pub path: String,
    pub port: u16,
    pub host: Option<String>,
    pub scheme: Scheme,
    pub headers: Vec<(String, String)>,
}

/// What a hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Exec { command: Vec<String> },
    HttpGet(HttpGet),
    Sleep { seconds: u64 },
    TcpSocket { host: Option<String>, port: u16 },
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Exec { .. } => "exec",
            Action::HttpGet(_) => "httpGet",
            Action::Sleep { .. } => "sleep",
            Action::TcpSocket { .. } => "tcpSocket",
        }
    }
}

/// A validated hook of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    pub phase: Phase,
    /// The annotation key it came from (for messages and logs).
    pub key: String,
    pub action: Action,
    /// `timeoutSeconds`, when given.
    pub timeout: Option<Duration>,
    /// PreStop only: extra signal (number) the gate treats as a stop signal besides
    /// SIGTERM, SIGINT and SIGQUIT (`"stopSignal": "SIGUSR1"`).
    pub stop_signal: Option<i32>,
}

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::hooks::reach;

/// Annotation key prefix of PostStart hooks.
pub const POST_START_PREFIX: &str = "poststart.lifecycle.nri.io/";
/// Annotation key prefix of PreStop hooks.
pub const PRE_STOP_PREFIX: &str = "prestop.lifecycle.nri.io/";
/// The kubelet's record of a container's declared ports (JSON list of `ContainerPort`).
pub const CONTAINER_PORTS_KEY: &str = "io.kubernetes.container.ports";
/// The kubelet's record of the pod's termination grace period, in seconds.
pub const GRACE_PERIOD_KEY: &str = "io.kubernetes.pod.terminationGracePeriod";

/// Largest annotation value we accept, in bytes.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// Largest `timeoutSeconds` and `sleep.seconds` we accept (one day).
pub const MAX_SECONDS: i64 = 86_400;
const MAX_COMMAND_ARGS: usize = 1024;
const MAX_HEADERS: usize = 64;

/// A hook annotation that cannot be used. The message names the key, the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {key:?}: {problem}")]
pub struct AnnotationError {
    pub key: String,
    pub problem: String,
}

impl AnnotationError {
    fn new(key: &str, problem: impl Into<String>) -> Self {
        AnnotationError {
            key: key.to_string(),
            problem: problem.into(),
        }
    }

    fn field(key: &str, field: &str, problem: impl std::fmt::Display) -> Self {
        AnnotationError::new(key, format!("field {field:?}: {problem}"))
    }
}

/// The hooks of one container, after validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub post_start: Option<HookSpec>,
    pub pre_stop: Option<HookSpec>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.post_start.is_none() && self.pre_stop.is_none()
    }
}

/// Finds and validates the hooks of container `container_name`.
///
/// Keys are looked up in this order, first found wins: the container-specific key as a
/// container annotation, as a pod annotation, then the pod-wide key as a container annotation,
/// as a pod annotation. Every key under our prefixes that is meant for this container (or for
/// no container at all, i.e. misspelt) is validated, so a typo never passes silently.
pub fn hooks_for(
    container_name: &str,
    pod_annotations: &BTreeMap<String, String>,
    container_annotations: &BTreeMap<String, String>,
) -> Result<Hooks, AnnotationError> {
    for annotations in [container_annotations, pod_annotations] {
        for key in annotations.keys() {
            check_key_shape(key)?;
        }
    }
    let ports = named_ports(container_annotations)?;
    let mut hooks = Hooks::default();
    for phase in [Phase::PostStart, Phase::PreStop] {
        let specific = format!("{}container.{container_name}", phase.prefix());
        let pod_wide = format!("{}pod", phase.prefix());
        let found = [
            (container_annotations, &specific),
            (pod_annotations, &specific),
            (container_annotations, &pod_wide),
            (pod_annotations, &pod_wide),
        ]
        .into_iter()
        .find_map(|(map, key)| map.get(key.as_str()).map(|value| (key, value)));
        if let Some((key, value)) = found {
            let spec = parse_hook(phase, key, value, &ports)?;
            match phase {
                Phase::PostStart => hooks.post_start = Some(spec),
                Phase::PreStop => hooks.pre_stop = Some(spec),
            }
        }
    }
    Ok(hooks)
}

impl Phase {
    /// The annotation key prefix of this phase.
    pub fn prefix(self) -> &'static str {
        match self {
            Phase::PostStart => POST_START_PREFIX,
            Phase::PreStop => PRE_STOP_PREFIX,
        }
    }
}

/// Refuses keys under our prefixes that can never match anything (`.../contaner.app`, `.../pods`).
fn check_key_shape(key: &str) -> Result<(), AnnotationError> {
    let Some(rest) = key
        .strip_prefix(POST_START_PREFIX)
        .or_else(|| key.strip_prefix(PRE_STOP_PREFIX))
    else {
        return Ok(());
    };
    if rest == "pod" {
        return Ok(());
    }
    match rest.strip_prefix("container.") {
        Some(name) if is_container_name(name) => Ok(()),
        Some(name) => Err(AnnotationError::new(
            key,
            format!("{name:?} is not a valid container name (lower-case letters, digits and '-', at most 63)"),
        )),
        None => Err(AnnotationError::new(
            key,
            "unknown key: expected \"<phase>.lifecycle.nri.io/pod\" or \"<phase>.lifecycle.nri.io/container.<container-name>\"",
        )),
    }
}

fn is_container_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The container's named ports, from the kubelet's `io.kubernetes.container.ports` annotation.
fn named_ports(
    annotations: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, u16>, AnnotationError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ContainerPort {
        #[serde(default)]
        name: String,
        container_port: i64,
    }
    let Some(raw) = annotations.get(CONTAINER_PORTS_KEY) else {
        return Ok(BTreeMap::new());
    };
    let ports: Vec<ContainerPort> = serde_json::from_str(raw)
        .map_err(|e| AnnotationError::new(CONTAINER_PORTS_KEY, format!("invalid JSON: {e}")))?;
    Ok(ports
        .into_iter()
        .filter(|p| !p.name.is_empty())
        .filter_map(|p| u16::try_from(p.container_port).ok().map(|n| (p.name, n)))
        .filter(|(_, n)| *n != 0)
        .collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHandler {
    exec: Option<RawExec>,
    http_get: Option<RawHttpGet>,
    sleep: Option<RawSleep>,
    tcp_socket: Option<RawTcpSocket>,
    timeout_seconds: Option<i64>,
    stop_signal: Option<IntOrString>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExec {
    command: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttpGet {
    path: Option<String>,
    port: IntOrString,
    host: Option<String>,
    scheme: Option<String>,
    http_headers: Option<Vec<RawHeader>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSleep {
    seconds: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpSocket {
    port: IntOrString,
    host: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

/// Parses and validates one hook annotation value.
pub fn parse_hook(
    phase: Phase,
    key: &str,
    value: &str,
    ports: &BTreeMap<String, u16>,
) -> Result<HookSpec, AnnotationError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(AnnotationError::new(
            key,
            format!(
                "value is {} bytes, more than the {MAX_VALUE_BYTES} allowed",
                value.len()
            ),
        ));
    }
    let mut de = serde_json::Deserializer::from_str(value);
    let raw: RawHandler = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" || path.is_empty() {
            AnnotationError::new(key, format!("invalid JSON: {inner}"))
        } else {
            AnnotationError::field(key, &path, format!("invalid JSON: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| AnnotationError::new(key, format!("invalid JSON: {e}")))?;

    let kinds = [
        raw.exec.is_some().then_some("exec"),
        raw.http_get.is_some().then_some("httpGet"),
        raw.sleep.is_some().then_some("sleep"),
        raw.tcp_socket.is_some().then_some("tcpSocket"),
    ];
    let given: Vec<&str> = kinds.into_iter().flatten().collect();
    if given.len() != 1 {
        let problem = if given.is_empty() {
            "no handler: exactly one of \"exec\", \"httpGet\", \"sleep\", \"tcpSocket\" is required"
                .to_string()
        } else {
            format!(
                "{} handlers given ({}): exactly one of \"exec\", \"httpGet\", \"sleep\", \"tcpSocket\" is allowed",
                given.len(),
                given.join(", ")
            )
        };
        return Err(AnnotationError::new(key, problem));
    }

    let action = if let Some(exec) = raw.exec {
        Action::Exec {
            command: check_command(key, exec.command)?,
        }
    } else if let Some(get) = raw.http_get {
        Action::HttpGet(check_http_get(key, get, ports)?)
    } else if let Some(sleep) = raw.sleep {
        Action::Sleep {
            seconds: check_seconds(key, "sleep.seconds", sleep.seconds, true)?,
        }
    } else if let Some(tcp) = raw.tcp_socket {
        Action::TcpSocket {
            host: check_host(key, "tcpSocket.host", tcp.host)?,
            port: check_port(key, "tcpSocket.port", tcp.port, ports)?,
        }
    } else {
        return Err(AnnotationError::new(key, "no handler"));
    };

    let timeout = match raw.timeout_seconds {
        None => None,
        Some(s) => Some(Duration::from_secs(check_seconds(
            key,
            "timeoutSeconds",
            s,
            false,
        )?)),
    };
    let stop_signal = match (phase, raw.stop_signal) {
        (_, None) => None,
        (Phase::PostStart, Some(_)) => {
            return Err(AnnotationError::field(
                key,
                "stopSignal",
                "only a preStop hook can name a stop signal",
            ))
        }
        (Phase::PreStop, Some(sig)) => Some(check_signal(key, sig)?),
    };
    Ok(HookSpec {
        phase,
        key: key.to_string(),
        action,
        timeout,
        stop_signal,
    })
}

fn check_command(key: &str, command: Option<Vec<String>>) -> Result<Vec<String>, AnnotationError> {
    let command = command.unwrap_or_default();
    if command.is_empty() {
        return Err(AnnotationError::field(
            key,
            "exec.command",
            "must not be empty",
        ));
    }
    if command.len() > MAX_COMMAND_ARGS {
        return Err(AnnotationError::field(
            key,
            "exec.command",
            format!(
                "{} arguments, more than the {MAX_COMMAND_ARGS} allowed",
                command.len()
            ),
        ));
    }
    if command[0].is_empty() {
        return Err(AnnotationError::field(
            key,
            "exec.command[0]",
            "the program must not be empty",
        ));
    }
    if let Some(i) = command.iter().position(|a| a.contains('\0')) {
        return Err(AnnotationError::field(
            key,
            &format!("exec.command[{i}]"),
            "contains a NUL byte",
        ));
    }
    Ok(command)
}

fn check_http_get(
    key: &str,
    get: RawHttpGet,
    ports: &BTreeMap<String, u16>,
) -> Result<HttpGet, AnnotationError> {
    let scheme = match get.scheme.as_deref() {
        None | Some("HTTP") => Scheme::Http,
        Some("HTTPS") => Scheme::Https,
        Some(other) => {
            return Err(AnnotationError::field(
                key,
                "httpGet.scheme",
                format!("{other:?} is not supported: use \"HTTP\" or \"HTTPS\""),
            ))
        }
    };
    let mut path = get.path.unwrap_or_default();
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(AnnotationError::field(
            key,
            "httpGet.path",
            "must not contain spaces or control characters",
        ));
    }
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let mut headers = Vec::new();
    for (i, h) in get.http_headers.unwrap_or_default().into_iter().enumerate() {
        if i >= MAX_HEADERS {
            return Err(AnnotationError::field(
                key,
                "httpGet.httpHeaders",
                format!("more than {MAX_HEADERS} headers"),
            ));
        }
        if h.name.is_empty() || !h.name.bytes().all(is_token_byte) {
            return Err(AnnotationError::field(
                key,
                &format!("httpGet.httpHeaders[{i}].name"),
                format!("{:?} is not a valid HTTP header name", h.name),
            ));
        }
        if h.value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(AnnotationError::field(
                key,
                &format!("httpGet.httpHeaders[{i}].value"),
                "must not contain CR, LF or NUL",
            ));
        }
        headers.push((h.name, h.value));
    }
    Ok(HttpGet {
        path,
        port: check_port(key, "httpGet.port", get.port, ports)?,
        host: check_host(key, "httpGet.host", get.host)?,
        scheme,
        headers,
    })
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_port(
    key: &str,
    field: &str,
    port: IntOrString,
    ports: &BTreeMap<String, u16>,
) -> Result<u16, AnnotationError> {
    match port {
        IntOrString::Int(n) => match u16::try_from(n) {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(AnnotationError::field(
                key,
                field,
                format!("{n} is out of range 1-65535"),
            )),
        },
        IntOrString::Str(name) => {
            if name.is_empty() || name.len() > 15 || !name.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err(AnnotationError::field(
                    key,
                    field,
                    format!("{name:?} is neither a port number nor a port name"),
                ));
            }
            ports.get(&name).copied().ok_or_else(|| {
                AnnotationError::field(
                    key,
                    field,
                    format!(
                        "unknown port name {name:?}: the container declares no port of that name"
                    ),
                )
            })
        }
    }
}

/// A hook's `host`: empty (the pod's address, stored as `None`), an IP address or a DNS name,
/// by the rule in [`reach`].
fn check_host(
    key: &str,
    field: &str,
    host: Option<String>,
) -> Result<Option<String>, AnnotationError> {
    match reach::parse_host(host.as_deref()) {
        Ok(reach::Host::Pod) => Ok(None),
        Ok(reach::Host::Addr(_) | reach::Host::Name(_)) => Ok(host),
        Err(e) => Err(AnnotationError::field(key, field, e)),
    }
}

fn check_seconds(
    key: &str,
    field: &str,
    seconds: i64,
    zero_ok: bool,
) -> Result<u64, AnnotationError> {
    let min = i64::from(!zero_ok);
    if seconds < min {
        return Err(AnnotationError::field(
            key,
            field,
            format!("{seconds} is below the minimum of {min}"),
        ));
    }
    if seconds > MAX_SECONDS {
        return Err(AnnotationError::field(
            key,
            field,
            format!("{seconds} is more than the maximum of {MAX_SECONDS}"),
        ));
    }
    // The range check above makes this conversion exact.
    Ok(seconds.unsigned_abs())
}

/// Signals a container may name as its stop signal.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("TERM", libc::SIGTERM),
    ("PWR", libc::SIGPWR),
    ("WINCH", libc::SIGWINCH),
];

fn check_signal(key: &str, sig: IntOrString) -> Result<i32, AnnotationError> {
    let names = || {
        SIGNALS
            .iter()
            .map(|(n, _)| format!("SIG{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match &sig {
        IntOrString::Int(n) => SIGNALS.iter().find(|(_, v)| i64::from(*v) == *n),
        IntOrString::Str(s) => {
            let bare = s.strip_prefix("SIG").unwrap_or(s);
            SIGNALS.iter().find(|(n, _)| *n == bare)
        }
    };
    match found {
        Some((_, v)) => Ok(*v),
        None => {
            let shown = match sig {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::Str(s) => format!("{s:?}"),
            };
            Err(AnnotationError::field(
                key,
                "stopSignal",
                format!(
                    "{shown} is not a signal a container can stop with (one of {})",
                    names()
                ),
            ))
        }
    }
}

/// The pod's termination grace period from the kubelet's annotation, when present and sane.
pub fn grace_period(container_annotations: &BTreeMap<String, String>) -> Option<Duration> {
    container_annotations
        .get(GRACE_PERIOD_KEY)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "poststart.lifecycle.nri.io/container.app";

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(value: &str) -> Result<HookSpec, AnnotationError> {
        let ports = map(&[]);
        let ports = named_ports(&ports).unwrap();
        parse_hook(Phase::PostStart, KEY, value, &ports)
    }

    fn err(value: &str) -> String {
        parse(value).unwrap_err().to_string()
    }

    #[test]
    fn exec_hook() {
        let spec =
            parse(r#"{"exec":{"command":["sh","-c","echo hi"]},"timeoutSeconds":5}"#).unwrap();
        assert_eq!(
            spec.action,
            Action::Exec {
                command: vec!["sh".into(), "-c".into(), "echo hi".into()]
            }
        );
        assert_eq!(spec.timeout, Some(Duration::from_secs(5)));
        assert_eq!(spec.key, KEY);
    }

    #[test]
    fn http_get_hook_with_defaults_and_headers() {
        let spec = parse(
            r#"{"httpGet":{"path":"drain?now=1","port":8080,"httpHeaders":[{"name":"X-Why","value":"stop"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            spec.action,
            Action::HttpGet(HttpGet {
                path: "/drain?now=1".into(),
                port: 8080,
                host: None,
                scheme: Scheme::Http,
                headers: vec![("X-Why".into(), "stop".into())],
            })
        );
    }

    #[test]
    fn named_port_resolves_through_kubelet_annotation() {
        let container = map(&[
            (
                CONTAINER_PORTS_KEY,
                r#"[{"name":"http","containerPort":8080,"protocol":"TCP"}]"#,
            ),
            (KEY, r#"{"httpGet":{"port":"http","scheme":"HTTPS"}}"#),
        ]);
        let hooks = hooks_for("app", &map(&[]), &container).unwrap();
        match hooks.post_start.unwrap().action {
            Action::HttpGet(get) => {
                assert_eq!(get.port, 8080);
                assert_eq!(get.scheme, Scheme::Https);
                assert_eq!(get.path, "/");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn sleep_zero_and_tcp_socket() {
        assert_eq!(
            parse(r#"{"sleep":{"seconds":0}}"#).unwrap().action,
            Action::Sleep { seconds: 0 }
        );
        assert_eq!(
            parse(r#"{"tcpSocket":{"port":5432,"host":"127.0.0.1"}}"#)
                .unwrap()
                .action,
            Action::TcpSocket {
                host: Some("127.0.0.1".into()),
                port: 5432
            }
        );
    }

    #[test]
    fn hosts_may_be_addresses_or_dns_names() {
        for host in [
            "10.244.1.7",
            "fd00::7",
            "localhost",
            "web",
            "web.team-a.svc.cluster.local.",
        ] {
            let value = format!(r#"{{"httpGet":{{"port":80,"host":"{host}"}}}}"#);
            match parse(&value).unwrap().action {
                Action::HttpGet(get) => assert_eq!(get.host.as_deref(), Some(host)),
                other => panic!("unexpected {other:?}"),
            }
            let value = format!(r#"{{"tcpSocket":{{"port":80,"host":"{host}"}}}}"#);
            assert_eq!(
                parse(&value).unwrap().action,
                Action::TcpSocket {
                    host: Some(host.to_string()),
                    port: 80
                }
            );
        }
        // an empty host is the pod's address
        match parse(r#"{"httpGet":{"port":80,"host":""}}"#)
            .unwrap()
            .action
        {
            Action::HttpGet(get) => assert_eq!(get.host, None),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn exact_error_texts() {
        let p = "annotation \"poststart.lifecycle.nri.io/container.app\"";
        assert_eq!(
            err("{bad"),
            format!("{p}: invalid JSON: key must be a string at line 1 column 2")
        );
        assert_eq!(
            err(r#"{"exec":{"command":["true"]},"retries":3}"#),
            format!("{p}: field \"retries\": invalid JSON: unknown field `retries`, expected one of `exec`, `httpGet`, `sleep`, `tcpSocket`, `timeoutSeconds`, `stopSignal` at line 1 column 38")
        );
        assert_eq!(
            err(r#"{"exec":{"cmd":["true"]}}"#),
            format!("{p}: field \"exec.cmd\": invalid JSON: unknown field `cmd`, expected `command` at line 1 column 14")
        );
        assert_eq!(
            err("{}"),
            format!("{p}: no handler: exactly one of \"exec\", \"httpGet\", \"sleep\", \"tcpSocket\" is required")
        );
        assert_eq!(
            err(r#"{"exec":{"command":["true"]},"sleep":{"seconds":1}}"#),
            format!("{p}: 2 handlers given (exec, sleep): exactly one of \"exec\", \"httpGet\", \"sleep\", \"tcpSocket\" is allowed")
        );
        assert_eq!(
            err(r#"{"exec":{"command":[]}}"#),
            format!("{p}: field \"exec.command\": must not be empty")
        );
        assert_eq!(
            err(r#"{"httpGet":{"port":70000}}"#),
            format!("{p}: field \"httpGet.port\": 70000 is out of range 1-65535")
        );
        assert_eq!(
            err(r#"{"tcpSocket":{"port":0}}"#),
            format!("{p}: field \"tcpSocket.port\": 0 is out of range 1-65535")
        );
        assert_eq!(
            err(r#"{"httpGet":{"port":"metrics"}}"#),
            format!("{p}: field \"httpGet.port\": unknown port name \"metrics\": the container declares no port of that name")
        );
        assert_eq!(
            err(r#"{"sleep":{"seconds":-1}}"#),
            format!("{p}: field \"sleep.seconds\": -1 is below the minimum of 0")
        );
        assert_eq!(
            err(r#"{"sleep":{"seconds":999999999}}"#),
            format!("{p}: field \"sleep.seconds\": 999999999 is more than the maximum of 86400")
        );
        assert_eq!(
            err(r#"{"sleep":{"seconds":1},"timeoutSeconds":0}"#),
            format!("{p}: field \"timeoutSeconds\": 0 is below the minimum of 1")
        );
        assert_eq!(
            err(r#"{"httpGet":{"port":80,"scheme":"ftp"}}"#),
            format!("{p}: field \"httpGet.scheme\": \"ftp\" is not supported: use \"HTTP\" or \"HTTPS\"")
        );
        assert_eq!(
            err(r#"{"httpGet":{"port":80,"host":"http://example"}}"#),
            format!("{p}: field \"httpGet.host\": \"http://example\" is neither an IP address nor a DNS name")
        );
        assert_eq!(
            err(r#"{"tcpSocket":{"port":80,"host":"db:5432"}}"#),
            format!("{p}: field \"tcpSocket.host\": \"db:5432\" is neither an IP address nor a DNS name")
        );
        assert_eq!(
            err(r#"{"sleep":{"seconds":1},"stopSignal":"SIGUSR1"}"#),
            format!("{p}: field \"stopSignal\": only a preStop hook can name a stop signal")
        );
        assert_eq!(
            err(r#"{"exec":{"command":["true"]}} trailing"#),
            format!("{p}: invalid JSON: trailing characters at line 1 column 31")
        );
        let big = format!(
            r#"{{"exec":{{"command":["{}"]}}}}"#,
            "x".repeat(MAX_VALUE_BYTES)
        );
        assert_eq!(
            err(&big),
            format!("{p}: value is 16409 bytes, more than the 16384 allowed")
        );
    }

    #[test]
    fn prestop_stop_signal() {
        let ports = BTreeMap::new();
        let spec = parse_hook(
            Phase::PreStop,
            "prestop.lifecycle.nri.io/pod",
            r#"{"sleep":{"seconds":1},"stopSignal":"SIGWINCH"}"#,
            &ports,
        )
        .unwrap();
        assert_eq!(spec.stop_signal, Some(libc::SIGWINCH));
        let e = parse_hook(
            Phase::PreStop,
            "prestop.lifecycle.nri.io/pod",
            r#"{"sleep":{"seconds":1},"stopSignal":"SIGKILL"}"#,
            &ports,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("\"SIGKILL\" is not a signal a container can stop with"),
            "{e}"
        );
    }

    #[test]
    fn lookup_order_and_pod_wide_keys() {
        let pod = map(&[
            (
                "poststart.lifecycle.nri.io/pod",
                r#"{"sleep":{"seconds":1}}"#,
            ),
            (
                "poststart.lifecycle.nri.io/container.web",
                r#"{"sleep":{"seconds":2}}"#,
            ),
            (
                "prestop.lifecycle.nri.io/container.web",
                r#"{"sleep":{"seconds":3}}"#,
            ),
        ]);
        let ctr = map(&[(
            "prestop.lifecycle.nri.io/container.web",
            r#"{"sleep":{"seconds":4}}"#,
        )]);
        let web = hooks_for("web", &pod, &ctr).unwrap();
        assert_eq!(web.post_start.unwrap().action, Action::Sleep { seconds: 2 });
        assert_eq!(web.pre_stop.unwrap().action, Action::Sleep { seconds: 4 });
        let side = hooks_for("side", &pod, &map(&[])).unwrap();
        assert_eq!(
            side.post_start.unwrap().action,
            Action::Sleep { seconds: 1 }
        );
        assert!(side.pre_stop.is_none());
        assert!(hooks_for("x", &map(&[]), &map(&[])).unwrap().is_empty());
    }

    #[test]
    fn kubelet_keys_are_ignored_and_typos_refused() {
        let ctr = map(&[("io.kubernetes.container.preStopHandler", "{not ours")]);
        assert!(hooks_for("app", &map(&[]), &ctr).unwrap().is_empty());
        let pod = map(&[(
            "prestop.lifecycle.nri.io/contianer.app",
            r#"{"sleep":{"seconds":1}}"#,
        )]);
        assert_eq!(
            hooks_for("app", &pod, &map(&[])).unwrap_err().to_string(),
            "annotation \"prestop.lifecycle.nri.io/contianer.app\": unknown key: expected \"<phase>.lifecycle.nri.io/pod\" or \"<phase>.lifecycle.nri.io/container.<container-name>\""
        );
    }

    #[test]
    fn grace_period_annotation() {
        assert_eq!(
            grace_period(&map(&[(GRACE_PERIOD_KEY, "12")])),
            Some(Duration::from_secs(12))
        );
        assert_eq!(grace_period(&map(&[(GRACE_PERIOD_KEY, "x")])), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_any_value(value in ".{0,200}") {
            let _ = parse(&value);
        }

        #[test]
        fn never_panics_on_json_like_values(
            kind in proptest::sample::select(vec!["exec", "httpGet", "sleep", "tcpSocket", "bogus"]),
            body in r#"\{("[a-zA-Z]{1,12}":(-?[0-9]{1,12}|"[a-z0-9]{0,8}"|\[("[a-z ]{0,5}",?){0,3}\]|\{\}),?){0,4}\}"#,
            timeout in proptest::option::of(-5i64..100_000),
        ) {
            let mut value = format!(r#"{{"{kind}":{body}"#);
            if let Some(t) = timeout {
                value.push_str(&format!(r#","timeoutSeconds":{t}"#));
            }
            value.push('}');
            let _ = parse(&value);
        }
    }
}
