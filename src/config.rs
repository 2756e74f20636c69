//! The plugin config: TOML text (a file, or the string the runtime hands over in `Configure`)
//! → [`RawConfig`] → validated [`Config`] with every default applied.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("plugin config: field {field:?}: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
    #[error("plugin config file {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The config as written. Unknown keys are refused so a typo never passes silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct RawConfig {
    pub log_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub runtime_dir: Option<PathBuf>,
    pub default_hook_timeout_seconds: Option<u64>,
    pub default_grace_period_seconds: Option<u64>,
    pub max_concurrent_hooks: Option<usize>,
    pub allowed_hosts: Option<Vec<String>>,
    pub containerd_address: Option<PathBuf>,
    pub containerd_state_dir: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub http_address: Option<String>,
}

/// The validated config every other module sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where logs go; `None` means standard error.
    pub log_file: Option<PathBuf>,
    /// A tracing filter directive, e.g. `info` or `nri_lifecycle=debug`.
    pub log_level: String,
    /// Our state on the host: the extracted gate binary and per-container socket directories.
    pub runtime_dir: PathBuf,
    /// Bound of a hook without `timeoutSeconds`.
    pub default_hook_timeout: Duration,
    /// Grace period when the pod does not say (`io.kubernetes.pod.terminationGracePeriod`).
    pub default_grace_period: Duration,
    /// At most this many hooks run at once on the node.
    pub max_concurrent_hooks: usize,
    /// Hosts that httpGet/tcpSocket hooks may reach besides the pod's own addresses and loopback.
    pub allowed_hosts: Vec<IpAddr>,
    /// containerd's gRPC socket; `None` = discover from containerd's own configuration.
    pub containerd_address: Option<PathBuf>,
    /// containerd's state directory (where each task's OCI bundle lives); `None` = discover
    /// it from containerd's own configuration.
    pub containerd_state_dir: Option<PathBuf>,
    /// containerd namespace of CRI containers.
    pub containerd_namespace: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` = no listener.
    pub http_address: Option<std::net::SocketAddr>,
}

pub const DEFAULT_LOG_FILE: &str = "/var/log/nri-lifecycle.log";
pub const DEFAULT_RUNTIME_DIR: &str = "/run/nri-lifecycle";

impl Default for Config {
    fn default() -> Self {
        Config {
            log_file: Some(PathBuf::from(DEFAULT_LOG_FILE)),
            log_level: "info".to_string(),
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            default_hook_timeout: Duration::from_secs(30),
            default_grace_period: Duration::from_secs(30),
            max_concurrent_hooks: 64,
            allowed_hosts: Vec::new(),
            containerd_address: None,
            containerd_state_dir: None,
            containerd_namespace: "k8s.io".to_string(),
            http_address: None,
        }
    }
}

impl Config {
    /// Parses and validates TOML text. Empty text gives the defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        raw.validate()
    }

    /// Reads and validates a config file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text)
    }
}

impl RawConfig {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let invalid = |field, problem: &str| ConfigError::Invalid {
            field,
            problem: problem.to_string(),
        };
        let log_file = match self.log_file {
            None => d.log_file,
            Some(p) if p.as_os_str() == "-" || p.as_os_str() == "stderr" => None,
            Some(p) if p.is_absolute() => Some(p),
            Some(_) => {
                return Err(invalid(
                    "log_file",
                    "must be an absolute path, or \"stderr\"",
                ))
            }
        };
        let log_level = self.log_level.unwrap_or(d.log_level);
        if tracing_subscriber::EnvFilter::builder()
            .parse(&log_level)
            .is_err()
        {
            return Err(invalid(
                "log_level",
                "not a valid filter (e.g. \"info\" or \"debug\")",
            ));
        }
        let runtime_dir = self.runtime_dir.unwrap_or(d.runtime_dir);
        if !runtime_dir.is_absolute() {
            return Err(invalid("runtime_dir", "must be an absolute path"));
        }
        let seconds = |field, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(invalid(field, "must be at least 1")),
            Some(s) if s > 86_400 => Err(invalid(field, "must be at most 86400")),
            Some(s) => Ok(Duration::from_secs(s)),
        };
        let max_concurrent_hooks = match self.max_concurrent_hooks {
            None => d.max_concurrent_hooks,
            Some(n @ 1..=4096) => n,
            Some(_) => {
                return Err(invalid(
                    "max_concurrent_hooks",
                    "must be between 1 and 4096",
                ))
            }
        };
        let mut allowed_hosts = Vec::new();
        for h in self.allowed_hosts.unwrap_or_default() {
            let ip = h.parse().map_err(|_| ConfigError::Invalid {
                field: "allowed_hosts",
                problem: format!("{h:?} is not an IP address"),
            })?;
            allowed_hosts.push(ip);
        }
        let containerd_address = match self.containerd_address {
            Some(p) if !p.is_absolute() => {
                return Err(invalid(
                    "containerd_address",
                    "must be an absolute socket path",
                ))
            }
            other => other,
        };
        let containerd_state_dir = match self.containerd_state_dir {
            Some(p) if !p.is_absolute() => {
                return Err(invalid(
                    "containerd_state_dir",
                    "must be an absolute directory path",
                ))
            }
            other => other,
        };
        let containerd_namespace = self.containerd_namespace.unwrap_or(d.containerd_namespace);
        if containerd_namespace.is_empty()
            || containerd_namespace.contains('/')
            || containerd_namespace.starts_with('.')
        {
            return Err(invalid(
                "containerd_namespace",
                "must be a plain name (not empty, no '/', not starting with '.')",
            ));
        }
        let http_address = match self.http_address.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(
                    "http_address",
                    "must be an IP address and port, e.g. \"127.0.0.1:9464\"",
                )
            })?),
        };
        Ok(Config {
            log_file,
            log_level,
            runtime_dir,
            default_hook_timeout: seconds(
                "default_hook_timeout_seconds",
                self.default_hook_timeout_seconds,
                d.default_hook_timeout,
            )?,
            default_grace_period: seconds(
                "default_grace_period_seconds",
                self.default_grace_period_seconds,
                d.default_grace_period,
            )?,
            max_concurrent_hooks,
            allowed_hosts,
            containerd_address,
            containerd_state_dir,
            containerd_namespace,
            http_address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn sample_config_is_the_defaults() {
        let text = include_str!("../packaging/nri-lifecycle.conf");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn full_config() {
        let c = Config::from_toml(
            r#"
            log_file = "stderr"
            log_level = "debug"
            runtime_dir = "/run/x"
            default_hook_timeout_seconds = 5
            max_concurrent_hooks = 8
            allowed_hosts = ["10.0.0.1", "::1"]
            http_address = "127.0.0.1:9464"
            containerd_address = "/run/c.sock"
            "#,
        )
        .unwrap();
        assert_eq!(c.log_file, None);
        assert_eq!(c.default_hook_timeout, Duration::from_secs(5));
        assert_eq!(c.allowed_hosts.len(), 2);
        assert_eq!(c.http_address, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(Config::from_toml("http_address = \"localhost\"")
            .unwrap_err()
            .to_string()
            .contains("http_address"));
        assert_eq!(c.containerd_address, Some(PathBuf::from("/run/c.sock")));
    }

    #[test]
    fn errors_name_the_field() {
        let e = |t| Config::from_toml(t).unwrap_err().to_string();
        assert_eq!(
            e("runtime_dir = \"rel\""),
            "plugin config: field \"runtime_dir\": must be an absolute path"
        );
        assert_eq!(
            e("allowed_hosts = [\"example\"]"),
            "plugin config: field \"allowed_hosts\": \"example\" is not an IP address"
        );
        assert_eq!(
            e("max_concurrent_hooks = 0"),
            "plugin config: field \"max_concurrent_hooks\": must be between 1 and 4096"
        );
        assert!(e("bogus = 1").contains("unknown field `bogus`"));
    }
}
