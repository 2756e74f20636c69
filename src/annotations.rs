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
