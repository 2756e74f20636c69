//! The `nri-lifecycle` binary: argument handling, logging, and the subcommands. All logic is in
//! the library.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use nri_lifecycle::annotations;
use nri_lifecycle::config::{Config, LogFormat};
use nri_lifecycle::logging::Logging;

#[derive(Parser)]
#[command(
    name = "nri-lifecycle",
    version,
    about = "Kubernetes-style lifecycle hooks for every container, as a containerd NRI plugin"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run as an external plugin connected to the runtime's NRI socket (reconnects when it goes away).
    Run {
        /// The runtime's NRI socket.
        #[arg(long, default_value = "/var/run/nri/nri.sock")]
        socket: PathBuf,
        /// Plugin name to register with.
        #[arg(long, default_value = "nri-lifecycle")]
        name: String,
        /// Plugin index (two digits, orders plugins).
        #[arg(long, default_value = "10")]
        index: String,
        /// Plugin config file (TOML); the runtime's config, if it sends one, replaces it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log file ("stderr" for standard error); overrides the config. Default: standard
        /// error unless the config names a file.
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Log line format; overrides the config. Default: json on standard error, text in a
        /// file.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Check hook annotations: reads a JSON object of annotations (pod or container) from a
    /// file or standard input and prints the hooks of the named container, or the error.
    Validate {
        /// The container the hooks are for.
        #[arg(long, default_value = "app")]
        container: String,
        /// File holding `{"key": "value", ...}`; `-` for standard input.
        #[arg(default_value = "-")]
        file: PathBuf,
    },
    /// The daemon a drop-in plugin keeps connected to the runtime (started by the plugin
    /// itself; see the README).
    #[command(hide = true)]
    Daemon {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        index: String,
        /// The plugin config the runtime handed to the launcher.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write the embedded PreStop gate binary to a file.
    Gate {
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> LogFormat {
        match arg {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

fn main() -> ExitCode {
    // Launched by the runtime: no argv, no PATH, the socket on an inherited fd.
    if std::env::var_os("NRI_PLUGIN_SOCKET").is_some() {
        return run_preinstalled();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        None => {
            eprintln!("nri-lifecycle is started by containerd from its plugin directory; to run it by hand use `nri-lifecycle run` (see --help)");
            return ExitCode::from(2);
        }
        Some(Command::Run {
            socket,
            name,
            index,
            config,
            log_file,
            log_format,
        }) => run_external(
            socket,
            name,
            index,
            config,
            log_file,
            log_format.map(Into::into),
        ),
        Some(Command::Daemon {
            socket,
            name,
            index,
            config,
        }) => run_daemon(socket, name, index, &config),
        Some(Command::Validate { container, file }) => validate(&container, &file),
        Some(Command::Gate { output }) => write_gate(&output),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nri-lifecycle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Pre-installed mode. Registration comes first: nothing here may fail before it, because
/// containerd 1.7 exits when a pre-installed plugin does not register.
fn run_preinstalled() -> ExitCode {
    let logging = Logging::init("info");
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            // Nothing can work without a runtime; say why where the operator will look.
            let _ = logging.apply(&Config::default());
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(nri_lifecycle::daemon::run_preinstalled(logging));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn run_external(
    socket: PathBuf,
    name: String,
    index: String,
    config_file: Option<PathBuf>,
    log_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<ExitCode> {
    let mut config = match &config_file {
        Some(path) => Config::from_file(path, Config::external())?,
        None => Config::external(),
    };
    // The flags become part of the config, so a `Configure` that keeps it keeps them too.
    match log_file {
        Some(p) if p.as_os_str() == "stderr" || p.as_os_str() == "-" => config.log_file = None,
        Some(p) => config.log_file = Some(p),
        None => {}
    }
    if log_format.is_some() {
        config.log_format = log_format;
    }
    let logging = Logging::init(&config.log_level);
    logging.apply(&config).context("opening the log file")?;
    let rt = runtime().context("starting the async runtime")?;
    rt.block_on(nri_lifecycle::daemon::run_external(
        socket, name, index, config, logging,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The drop-in plugin's daemon: external mode with the drop-in's defaults (logs to a file)
/// and the config the runtime handed over. A config that cannot be read or is invalid leaves
/// the defaults, as the runtime's own hand-over does.
fn run_daemon(
    socket: PathBuf,
    name: String,
    index: String,
    config_file: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let (config, problem) = match Config::from_file(config_file, Config::default()) {
        Ok(config) => (config, None),
        Err(e) => (Config::default(), Some(e)),
    };
    let logging = Logging::init(&config.log_level);
    if let Err(e) = logging.apply(&config) {
        tracing::warn!(error = %e, "cannot open the log file");
    }
    if let Some(e) = problem {
        tracing::warn!(error = %e, "the plugin config handed over by the runtime is unusable: using the defaults");
    }
    let rt = runtime().context("starting the async runtime")?;
    rt.block_on(nri_lifecycle::daemon::run_external(
        socket, name, index, config, logging,
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn validate(container: &str, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    let map: BTreeMap<String, String> = serde_json::from_str(&text)
        .context("expected a JSON object of annotation keys to string values")?;
    match annotations::hooks_for(container, &map, &BTreeMap::new()) {
        Ok(hooks) if hooks.is_empty() => {
            println!("container {container:?}: no lifecycle hooks");
            Ok(ExitCode::SUCCESS)
        }
        Ok(hooks) => {
            for spec in [hooks.post_start, hooks.pre_stop].into_iter().flatten() {
                println!(
                    "container {container:?}: {} {:?} (from {:?})",
                    spec.phase.as_str(),
                    spec.action,
                    spec.key
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => bail!("{e}"),
    }
}

fn write_gate(output: &std::path::Path) -> anyhow::Result<ExitCode> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(output, nri_lifecycle::gate::embedded_gate())
        .and_then(|()| std::fs::set_permissions(output, std::fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("writing the gate to {}", output.display()))?;
    Ok(ExitCode::SUCCESS)
}
