//! The plugin config: TOML text (a file, or the string the runtime hands over in `Configure`)
//! → [`RawConfig`] → validated [`Config`] with every default applied.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::policy::{Policy, RawPolicy};

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
    #[error("plugin config: {0}")]
    Policy(#[from] crate::policy::PolicyError),
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
    pub log_format: Option<String>,
    pub log_max_bytes: Option<u64>,
    pub log_max_files: Option<usize>,
    pub runtime_dir: Option<PathBuf>,
    pub default_hook_timeout_seconds: Option<u64>,
    pub default_grace_period_seconds: Option<u64>,
    pub max_concurrent_hooks: Option<usize>,
    /// Deprecated: read as a `[[policy.network]]` rule (see [`RawConfig::validate_over`]).
    pub allowed_hosts: Option<Vec<String>>,
    pub policy: Option<RawPolicy>,
    pub containerd_address: Option<PathBuf>,
    pub containerd_state_dir: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub http_address: Option<String>,
    pub nri_socket: Option<PathBuf>,
}

/// The validated config every other module sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where logs go; `None` means standard error.
    pub log_file: Option<PathBuf>,
    /// A tracing filter directive, e.g. `info` or `nri_lifecycle=debug`.
    pub log_level: String,
    /// How log lines are written; `None` = by destination (see [`Config::log_format()`]).
    pub log_format: Option<LogFormat>,
    /// A log file is rotated once it holds this many bytes.
    pub log_max_bytes: u64,
    /// Log files kept, the current one included: the disk holds at most
    /// `log_max_files × log_max_bytes` of logs (plus one line).
    pub log_max_files: usize,
    /// Our state on the host: the extracted gate binary and per-container socket directories.
    pub runtime_dir: PathBuf,
    /// Bound of a hook without `timeoutSeconds`.
    pub default_hook_timeout: Duration,
    /// Grace period when the pod does not say (`io.kubernetes.pod.terminationGracePeriod`).
    pub default_grace_period: Duration,
    /// At most this many hooks run at once on the node.
    pub max_concurrent_hooks: usize,
    /// The operator's policy: handler kinds by namespace, addresses hooks may reach.
    pub policy: Arc<Policy>,
    /// What the config asks that deserves a warning (a deprecated key), logged when it is
    /// taken into use.
    pub warnings: Vec<String>,
    /// containerd's gRPC socket; `None` = discover from containerd's own configuration.
    pub containerd_address: Option<PathBuf>,
    /// containerd's state directory (where each task's OCI bundle lives); `None` = discover
    /// it from containerd's own configuration.
    pub containerd_state_dir: Option<PathBuf>,
    /// containerd namespace of CRI containers.
    pub containerd_namespace: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` = no listener.
    pub http_address: Option<std::net::SocketAddr>,
    /// The runtime's NRI socket, which the drop-in plugin's daemon connects to; `None` =
    /// read it from containerd's own configuration (`socket_path` of its NRI section).
    pub nri_socket: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, the event's fields as keys (for journald and `kubectl logs`).
    Json,
}

pub const DEFAULT_LOG_FILE: &str = "/var/log/nri-lifecycle.log";
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_LOG_MAX_FILES: usize = 3;
pub const DEFAULT_RUNTIME_DIR: &str = "/run/nri-lifecycle";

/// Upper bound of `log_max_bytes`.
const MAX_LOG_BYTES: u64 = 1 << 40;

impl Default for Config {
    fn default() -> Self {
        Config {
            log_file: Some(PathBuf::from(DEFAULT_LOG_FILE)),
            log_level: "info".to_string(),
            log_format: None,
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            log_max_files: DEFAULT_LOG_MAX_FILES,
            runtime_dir: PathBuf::from(DEFAULT_RUNTIME_DIR),
            default_hook_timeout: Duration::from_secs(30),
            default_grace_period: Duration::from_secs(30),
            max_concurrent_hooks: 64,
            policy: Arc::new(Policy::default()),
            warnings: Vec::new(),
            containerd_address: None,
            containerd_state_dir: None,
            containerd_namespace: "k8s.io".to_string(),
            http_address: None,
            nri_socket: None,
        }
    }
}

impl Config {
    /// The defaults of an external plugin (`nri-lifecycle run`): logs go to standard error,
    /// which systemd's journal or the container runtime collects. [`Config::default`] is the
    /// plugin containerd starts itself, whose standard error is /dev/null: logs go to a file.
    pub fn external() -> Config {
        Config {
            log_file: None,
            ..Config::default()
        }
    }

    /// Parses and validates TOML text. Empty text gives the defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_over(text, Config::default())
    }

    /// Parses and validates TOML text; keys it does not set keep their value in `defaults`.
    pub fn from_toml_over(text: &str, defaults: Config) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        raw.validate_over(defaults)
    }

    /// Reads and validates a config file; keys it does not set keep their value in `defaults`.
    pub fn from_file(path: &std::path::Path, defaults: Config) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml_over(&text, defaults)
    }

    /// The log format in force: the configured one, else JSON on standard error (a journal
    /// or `kubectl logs` reads it) and text in a file (a person reads it).
    pub fn log_format(&self) -> LogFormat {
        match (self.log_format, &self.log_file) {
            (Some(format), _) => format,
            (None, None) => LogFormat::Json,
            (None, Some(_)) => LogFormat::Text,
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<LogFormat, ()> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(()),
        }
    }
}

impl RawConfig {
    /// Validates with the defaults of a plugin containerd starts itself.
    pub fn validate(self) -> Result<Config, ConfigError> {
        self.validate_over(Config::default())
    }

    /// Validates; keys not set take their value from `d`.
    pub fn validate_over(self, d: Config) -> Result<Config, ConfigError> {
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
        let log_format = match self.log_format.as_deref() {
            None => d.log_format,
            Some(f) => Some(
                f.parse()
                    .map_err(|()| invalid("log_format", "must be \"text\" or \"json\""))?,
            ),
        };
        let log_max_bytes = match self.log_max_bytes {
            None => d.log_max_bytes,
            Some(n @ 4096..=MAX_LOG_BYTES) => n,
            Some(_) => {
                return Err(invalid(
                    "log_max_bytes",
                    "must be between 4096 and 1099511627776 (1 TiB)",
                ))
            }
        };
        let log_max_files = match self.log_max_files {
            None => d.log_max_files,
            Some(n @ 2..=100) => n,
            Some(_) => {
                return Err(invalid(
                    "log_max_files",
                    "must be between 2 and 100 (the current file and at least one older)",
                ))
            }
        };
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
        // `allowed_hosts` (before the policy existed: the only hosts besides the pod's own
        // addresses and loopback that hooks could reach) keeps exactly that meaning, as a
        // network rule for every pod, with a warning saying what to write instead.
        let mut warnings = Vec::new();
        let allowed_hosts = match self.allowed_hosts {
            None => None,
            Some(list) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for h in &list {
                    let ip = h.parse().map_err(|_| ConfigError::Invalid {
                        field: "allowed_hosts",
                        problem: format!("{h:?} is not an IP address"),
                    })?;
                    ips.push(ip);
                }
                let cidrs: Vec<String> = ips
                    .iter()
                    .map(|ip| format!("\"{}\"", ipnet::IpNet::from(*ip)))
                    .collect();
                warnings.push(format!(
                    "plugin config: \"allowed_hosts\" is deprecated; it still limits the hosts \
                     of httpGet and tcpSocket hooks to the pod's own addresses, loopback and \
                     the addresses listed; write instead: [[policy.network]] allow = [{}]",
                    cidrs.join(", ")
                ));
                Some(ips)
            }
        };
        let policy = match (self.policy, &allowed_hosts) {
            (None, None) => d.policy,
            (raw, hosts) => Arc::new(raw.unwrap_or_default().compile(hosts.as_deref())?),
        };
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
        let nri_socket = match self.nri_socket {
            Some(p) if !p.is_absolute() => {
                return Err(invalid("nri_socket", "must be an absolute socket path"))
            }
            None => d.nri_socket,
            other => other,
        };
        Ok(Config {
            nri_socket,
            log_file,
            log_level,
            log_format,
            log_max_bytes,
            log_max_files,
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
            policy,
            warnings,
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
    fn sample_config_policy_example_parses_when_uncommented() {
        let text = include_str!("../packaging/nri-lifecycle.conf");
        let example: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                (l.starts_with("[[policy.") && l.ends_with("]]"))
                    || (l.contains(" = [") && !l.contains("allowed_hosts") && !l.contains("[["))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(example.contains("[[policy.handlers]]"), "{example}");
        let c = Config::from_toml(&example).unwrap();
        assert!(c.policy.check_kind("exec", "team-a").is_err());
        assert!(c
            .policy
            .check_addr("team-a", "169.254.169.254".parse().unwrap())
            .is_err());
        assert!(c
            .policy
            .check_addr("team-a", "10.244.1.1".parse().unwrap())
            .is_ok());
        assert!(c
            .policy
            .check_addr("team-a", "192.0.2.1".parse().unwrap())
            .is_err());
        assert!(c
            .policy
            .check_addr("other", "192.0.2.1".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn readme_policy_example_says_what_it_does() {
        let readme = include_str!("../README.md");
        let start = readme.find("A worked example").unwrap();
        let block = &readme[start..];
        let toml_start = block.find("```toml\n").unwrap() + "```toml\n".len();
        let toml_end = toml_start + block[toml_start..].find("```").unwrap();
        let c = Config::from_toml(&block[toml_start..toml_end]).unwrap();
        let p = &c.policy;
        let exec = p.check_kind("exec", "team-a").unwrap_err().to_string();
        let net = p
            .check_addr("team-a", "10.96.7.3".parse().unwrap())
            .unwrap_err()
            .to_string();
        // the messages quoted after the example, as the README wraps them
        let after: String = block[toml_end..]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(after.contains(&exec), "{exec}");
        assert!(after.contains(&net), "{net}");
        assert!(p.check_kind("tcpSocket", "db-main").is_ok());
        assert!(p.check_kind("tcpSocket", "team-a").is_err());
        assert!(p
            .check_addr("team-a", "10.244.1.2".parse().unwrap())
            .is_ok());
        assert!(p
            .check_addr("team-a", "10.244.42.2".parse().unwrap())
            .is_err());
        assert!(p
            .check_addr("ops-x", "169.254.169.254".parse().unwrap())
            .is_err());
        assert!(p.check_addr("ops-x", "10.96.7.3".parse().unwrap()).is_ok());
    }

    #[test]
    fn sample_config_is_the_external_defaults_under_run() {
        let text = include_str!("../packaging/nri-lifecycle.conf");
        let c = Config::from_toml_over(text, Config::external()).unwrap();
        assert_eq!(c, Config::external());
        assert_eq!(c.log_file, None);
        assert_eq!(c.log_format(), LogFormat::Json);
    }

    #[test]
    fn log_format_follows_the_destination_unless_set() {
        assert_eq!(Config::default().log_format(), LogFormat::Text);
        assert_eq!(Config::external().log_format(), LogFormat::Json);
        let c = Config::from_toml("log_format = \"json\"").unwrap();
        assert_eq!(c.log_file, Some(PathBuf::from(DEFAULT_LOG_FILE)));
        assert_eq!(c.log_format(), LogFormat::Json);
        let c = Config::from_toml_over("log_format = \"text\"", Config::external()).unwrap();
        assert_eq!((&c.log_file, c.log_format()), (&None, LogFormat::Text));
        let c =
            Config::from_toml_over("log_file = \"/var/log/x.log\"", Config::external()).unwrap();
        assert_eq!(c.log_format(), LogFormat::Text);
    }

    #[test]
    fn log_rotation_keys() {
        let c = Config::from_toml("log_max_bytes = 4096\nlog_max_files = 2").unwrap();
        assert_eq!((c.log_max_bytes, c.log_max_files), (4096, 2));
        let e = |t| Config::from_toml(t).unwrap_err().to_string();
        assert!(e("log_max_bytes = 100").contains("\"log_max_bytes\""));
        assert!(e("log_max_files = 1").contains("\"log_max_files\""));
        assert_eq!(
            e("log_format = \"xml\""),
            "plugin config: field \"log_format\": must be \"text\" or \"json\""
        );
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
            http_address = "127.0.0.1:9464"
            containerd_address = "/run/c.sock"
            "#,
        )
        .unwrap();
        assert_eq!(c.log_file, None);
        assert_eq!(c.default_hook_timeout, Duration::from_secs(5));
        assert_eq!(c.http_address, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(Config::from_toml("http_address = \"localhost\"")
            .unwrap_err()
            .to_string()
            .contains("http_address"));
        assert_eq!(c.containerd_address, Some(PathBuf::from("/run/c.sock")));
    }

    #[test]
    fn policy_section() {
        let c = Config::from_toml(
            r#"
            [[policy.handlers]]
            kinds = ["exec"]
            namespaces = ["kube-system", "ops-*"]

            [[policy.network]]
            deny = ["169.254.0.0/16"]
            "#,
        )
        .unwrap();
        assert!(c.warnings.is_empty());
        assert!(c.policy.check_kind("exec", "ops-1").is_ok());
        assert_eq!(
            c.policy
                .check_kind("exec", "team-a")
                .unwrap_err()
                .to_string(),
            r#"exec hooks are not allowed in namespace "team-a" (policy.handlers rule 1: exec only in ["kube-system","ops-*"])"#
        );
        assert!(c
            .policy
            .check_addr("x", "169.254.169.254".parse().unwrap())
            .is_err());
        assert!(Config::default().policy.is_permissive());
        // a config without a policy keeps the one it is read over
        let over = Config::from_toml_over("log_level = \"debug\"", c.clone()).unwrap();
        assert_eq!(over.policy, c.policy);
        let e = |t| Config::from_toml(t).unwrap_err().to_string();
        assert_eq!(
            e("[[policy.handlers]]\nkinds = [\"exec\"]\nnamespaces = [\"A\"]"),
            "plugin config: field \"policy.handlers[1].namespaces\": \"A\" is not a namespace name or pattern (lower-case letters, digits, '-', and '*' for any run of characters)"
        );
        assert!(
            e("[[policy.handlers]]\nkinds = [\"exec\"]\nnamespaces = [\"a\"]\nextra = 1")
                .contains("unknown field `extra`")
        );
        assert!(e("[policy]\nrules = []").contains("unknown field `rules`"));
        assert!(e("[[policy.network]]\nallow = [\"10.0.0.0/33\"]")
            .contains("\"policy.network[1].allow\""));
    }

    #[test]
    fn allowed_hosts_keeps_its_meaning_with_a_warning() {
        let c = Config::from_toml("allowed_hosts = [\"10.0.0.1\", \"::1\"]").unwrap();
        assert_eq!(
            c.warnings,
            vec!["plugin config: \"allowed_hosts\" is deprecated; it still limits the hosts of httpGet and tcpSocket hooks to the pod's own addresses, loopback and the addresses listed; write instead: [[policy.network]] allow = [\"10.0.0.1/32\", \"::1/128\"]".to_string()]
        );
        assert!(c
            .policy
            .check_addr("a", "10.0.0.1".parse().unwrap())
            .is_ok());
        assert_eq!(
            c.policy
                .check_addr("a", "10.0.0.2".parse().unwrap())
                .unwrap_err()
                .to_string(),
            r#"10.0.0.2 is refused by the plugin's policy (allowed_hosts: only ["10.0.0.1/32","::1/128"])"#
        );
        // the empty list of the old sample config: nothing besides the pod itself
        let c = Config::from_toml("allowed_hosts = []").unwrap();
        assert_eq!(c.warnings.len(), 1);
        assert!(c.warnings[0].ends_with("allow = []"), "{}", c.warnings[0]);
        assert!(c
            .policy
            .check_addr("a", "10.0.0.1".parse().unwrap())
            .is_err());
        assert!(Config::from_toml("").unwrap().warnings.is_empty());
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
