//! Logging that works before we know where logs should go.
//!
//! Two destinations, chosen by the config (`log_file`, `log_format`):
//! - standard error, for an external plugin under systemd or Kubernetes: JSON lines by
//!   default, one object per event with its fields as keys, for the journal and `kubectl logs`;
//! - a file, for the plugin containerd starts itself (its standard error is /dev/null): text
//!   lines by default, rotated by size by the `rolling-file` appender, so that at most
//!   `log_max_files` files of `log_max_bytes` each (plus one line) are ever on disk.
//!
//! A pre-installed plugin learns its destination only from the config the runtime hands over
//! in `Configure`, after registration. Until then every event is kept in both formats in a
//! bounded buffer, and [`Logging::apply`] flushes the one of the chosen format there. A log
//! file that cannot be opened or written leaves logging on standard error, with a warning.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use rolling_file::{BasicRollingFileAppender, RollingConditionBasic};
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{Config, LogFormat, DEFAULT_LOG_MAX_BYTES, DEFAULT_LOG_MAX_FILES};

/// Bytes of early log kept (per format) before the destination is known.
const EARLY_BUFFER: usize = 256 * 1024;

/// When a log file is rotated and how many are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The file is rotated before a write once it holds at least this many bytes.
    pub max_bytes: u64,
    /// Files kept, the current one included (at least 2).
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_bytes: DEFAULT_LOG_MAX_BYTES,
            max_files: DEFAULT_LOG_MAX_FILES,
        }
    }
}

impl Rotation {
    fn of(config: &Config) -> Rotation {
        Rotation {
            max_bytes: config.log_max_bytes,
            max_files: config.log_max_files,
        }
    }
}

/// An open, rotated log file.
struct LogFile {
    path: PathBuf,
    rotation: Rotation,
    appender: BasicRollingFileAppender,
}

impl LogFile {
    fn open(path: &Path, rotation: Rotation) -> io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let condition = RollingConditionBasic::new().max_size(rotation.max_bytes);
        // The appender counts the files it keeps besides the current one.
        let older = rotation.max_files.max(2) - 1;
        let appender = BasicRollingFileAppender::new(path, condition, older)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            rotation,
            appender,
        })
    }

    /// Writes whole lines and hands them to the kernel at once (the appender buffers).
    fn write_line(&mut self, data: &[u8]) -> io::Result<()> {
        self.appender.write_all(data)?;
        self.appender.flush()
    }
}

enum Target {
    Buffer { text: Vec<u8>, json: Vec<u8> },
    File(LogFile),
    Stderr,
}

struct State {
    target: Target,
    format: LogFormat,
}

/// Which formatter runs for an event: both while buffering, else the chosen one only.
const WANT_BOTH: u8 = 0;
const WANT_TEXT: u8 = 1;
const WANT_JSON: u8 = 2;

fn want(format: LogFormat) -> u8 {
    match format {
        LogFormat::Text => WANT_TEXT,
        LogFormat::Json => WANT_JSON,
    }
}

/// Where log lines go; can be switched while running.
pub struct LogSink {
    state: Mutex<State>,
    /// Read for every event without taking the lock; written under it.
    wanted: AtomicU8,
}

impl LogSink {
    fn new() -> LogSink {
        LogSink {
            state: Mutex::new(State {
                target: Target::Buffer {
                    text: Vec::new(),
                    json: Vec::new(),
                },
                format: LogFormat::Text,
            }),
            wanted: AtomicU8::new(WANT_BOTH),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::lock::lock(&self.state)
    }

    fn wants(&self, format: LogFormat) -> bool {
        match self.wanted.load(Ordering::Relaxed) {
            WANT_BOTH => true,
            w => w == want(format),
        }
    }

    /// Switches to `target` in `format`, first writing there what was buffered in that format.
    fn switch(&self, state: &mut State, mut target: Target, format: LogFormat) -> io::Result<()> {
        if let Target::Buffer { text, json } = &state.target {
            let early = match format {
                LogFormat::Text => text,
                LogFormat::Json => json,
            };
            match &mut target {
                Target::File(file) => file.write_line(early)?,
                Target::Stderr => {
                    let _ = io::stderr().write_all(early);
                }
                Target::Buffer { .. } => {}
            }
        }
        state.target = target;
        state.format = format;
        self.wanted.store(want(format), Ordering::Relaxed);
        Ok(())
    }

    /// Sends logs (and everything buffered so far) to `path`, rotated as `rotation` says. A
    /// file that is already open with the same path and rotation is kept. When the file cannot
    /// be opened, logs go to standard error instead and the error is returned.
    pub fn set_file_rotated(
        &self,
        path: &Path,
        rotation: Rotation,
        format: LogFormat,
    ) -> io::Result<()> {
        let mut state = self.lock();
        if let Target::File(open) = &state.target {
            if open.path == path && open.rotation == rotation {
                state.format = format;
                self.wanted.store(want(format), Ordering::Relaxed);
                return Ok(());
            }
        }
        let opened = LogFile::open(path, rotation)
            .and_then(|file| self.switch(&mut state, Target::File(file), format));
        if opened.is_err() {
            let _ = self.switch(&mut state, Target::Stderr, format);
        }
        opened
    }

    /// Sends logs (and everything buffered so far) to `path`, in the format and rotation in
    /// force (text and the default rotation before any config).
    pub fn set_file(&self, path: &Path) -> io::Result<()> {
        let (rotation, format) = {
            let state = self.lock();
            let rotation = match &state.target {
                Target::File(file) => file.rotation,
                _ => Rotation::default(),
            };
            (rotation, state.format)
        };
        self.set_file_rotated(path, rotation, format)
    }

    /// Sends logs (and everything buffered so far) to standard error, in `format`.
    pub fn set_stderr_as(&self, format: LogFormat) {
        let mut state = self.lock();
        let _ = self.switch(&mut state, Target::Stderr, format);
    }

    /// Sends logs (and everything buffered so far) to standard error, in the format in force.
    pub fn set_stderr(&self) {
        let mut state = self.lock();
        let format = state.format;
        let _ = self.switch(&mut state, Target::Stderr, format);
    }

    /// Takes one formatted line of `format`.
    fn write_line(&self, format: LogFormat, data: &[u8]) {
        let mut guard = self.lock();
        let state = &mut *guard;
        match &mut state.target {
            Target::Buffer { text, json } => {
                let buf = match format {
                    LogFormat::Text => text,
                    LogFormat::Json => json,
                };
                if buf.len() + data.len() <= EARLY_BUFFER {
                    buf.extend_from_slice(data);
                }
            }
            // Formatted just before a switch to the other format.
            _ if format != state.format => {}
            Target::File(file) => {
                if let Err(e) = file.write_line(data) {
                    // Tracing cannot be called from inside its own writer: say it by hand.
                    let note = write_failed_note(state.format, &file.path, &e);
                    state.target = Target::Stderr;
                    let mut err = io::stderr().lock();
                    let _ = err.write_all(note.as_bytes());
                    let _ = err.write_all(data);
                }
            }
            Target::Stderr => {
                let _ = io::stderr().write_all(data);
            }
        }
    }
}

/// The warning written when the log file fails, in the format of the lines around it.
fn write_failed_note(format: LogFormat, path: &Path, error: &io::Error) -> String {
    let message = "cannot write the log file: logging to standard error from now on";
    match format {
        LogFormat::Text => format!("WARN {message} path={} error={error}\n", path.display()),
        LogFormat::Json => {
            let note = serde_json::json!({
                "level": "WARN",
                "message": message,
                "path": path.display().to_string(),
                "error": error.to_string(),
            });
            format!("{note}\n")
        }
    }
}

/// One formatted log line on its way to the sink.
pub struct LineWriter {
    sink: Arc<LogSink>,
    format: LogFormat,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.sink.write_line(self.format, data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
struct SinkWriter {
    sink: Arc<LogSink>,
    format: LogFormat,
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            sink: self.sink.clone(),
            format: self.format,
        }
    }
}

/// The two formatters, each writing to `sink` and running only while the sink wants its
/// format (so after start-up every event is formatted once).
fn format_layers<S>(sink: &Arc<LogSink>) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let writer = |format| SinkWriter {
        sink: sink.clone(),
        format,
    };
    let wants = |format| {
        let sink = sink.clone();
        filter_fn(move |_| sink.wants(format))
    };
    let text = tracing_subscriber::fmt::layer()
        .with_writer(writer(LogFormat::Text))
        .with_ansi(false)
        .with_target(false)
        .with_filter(wants(LogFormat::Text));
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(writer(LogFormat::Json))
        .with_target(false)
        .with_filter(wants(LogFormat::Json));
    text.and_then(json)
}

/// Handle to change the log destination and level after start-up.
#[derive(Clone)]
pub struct Logging {
    pub sink: Arc<LogSink>,
    filter: reload::Handle<EnvFilter, Registry>,
}

impl Logging {
    /// Installs the global subscriber. Lines are buffered until a destination is set.
    pub fn init(level: &str) -> Logging {
        let sink = Arc::new(LogSink::new());
        let filter =
            EnvFilter::try_new(filter_directives(level)).unwrap_or_else(|_| EnvFilter::new("info"));
        let (filter, handle) = reload::Layer::new(filter);
        // Only fails when a subscriber is already installed (tests); then keep that one.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(format_layers(&sink))
            .try_init();
        Logging {
            sink,
            filter: handle,
        }
    }

    /// Changes the level filter (`info`, `debug`, `nri_lifecycle=trace`, ...).
    pub fn set_level(&self, level: &str) {
        if let Ok(filter) = EnvFilter::try_new(filter_directives(level)) {
            let _ = self.filter.reload(filter);
        }
    }

    /// Applies a config's level, destination, format and rotation. When the log file cannot
    /// be opened, logs go to standard error and the error is returned.
    pub fn apply(&self, config: &Config) -> io::Result<()> {
        self.set_level(&config.log_level);
        let format = config.log_format();
        match &config.log_file {
            Some(path) => self
                .sink
                .set_file_rotated(path, Rotation::of(config), format),
            None => {
                self.sink.set_stderr_as(format);
                Ok(())
            }
        }
    }
}

/// A bare level (`debug`) applies to this plugin only; the libraries it uses stay at `warn`
/// (their debug output is HTTP/2 frames, not what an operator asks for). Full filter
/// directives (`h2=debug,info`) are taken as written.
fn filter_directives(level: &str) -> String {
    let level = level.trim();
    if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("warn,nri_lifecycle={level}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::{info, warn};

    #[test]
    fn bare_levels_are_ours_only() {
        assert_eq!(filter_directives("debug"), "warn,nri_lifecycle=debug");
        assert_eq!(filter_directives("h2=debug,info"), "h2=debug,info");
    }

    /// Runs `f` with a subscriber that formats into `sink` exactly as the daemon's does.
    fn with_sink(sink: &Arc<LogSink>, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::registry().with(format_layers(sink));
        tracing::subscriber::with_default(subscriber, f);
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn json_lines_carry_message_level_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log").join("plugin.log");
        let sink = Arc::new(LogSink::new());
        with_sink(&sink, || {
            // Before the destination is known: buffered.
            info!(container = "c1", hook = "postStart", "hook started");
            sink.set_file_rotated(&path, Rotation::default(), LogFormat::Json)
                .unwrap();
            warn!(container = "c2", exit_code = 3, "hook failed");
            info!("no fields");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["message"], "hook started");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["container"], "c1");
        assert_eq!(lines[0]["hook"], "postStart");
        assert_eq!(lines[1]["message"], "hook failed");
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["container"], "c2");
        assert_eq!(lines[1]["exit_code"], 3);
        assert!(lines[1]["timestamp"].is_string());
        assert_eq!(lines[2]["message"], "no fields");
        assert!(lines[2].get("container").is_none());
    }

    #[test]
    fn text_lines_after_the_buffer_in_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.log");
        let sink = Arc::new(LogSink::new());
        with_sink(&sink, || {
            info!(container = "c1", "early");
            sink.set_file(&path).unwrap();
            info!(container = "c1", "late");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("INFO early container=\"c1\""), "{text}");
        assert!(lines[1].contains("INFO late container=\"c1\""), "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(lines[0]).is_err());
    }

    #[test]
    fn the_file_rotates_at_its_size_and_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.log");
        let rotation = Rotation {
            max_bytes: 1000,
            max_files: 3,
        };
        let sink = LogSink::new();
        sink.set_file_rotated(&path, rotation, LogFormat::Text)
            .unwrap();
        // Lines of exactly 100 bytes.
        let line = |n: usize| format!("{n:099}\n");
        for n in 0..10 {
            sink.write_line(LogFormat::Text, line(n).as_bytes());
        }
        // Exactly at the bound: not rotated yet.
        assert_eq!(files_in(dir.path()), ["plugin.log"]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1000);
        sink.write_line(LogFormat::Text, line(10).as_bytes());
        assert_eq!(files_in(dir.path()), ["plugin.log", "plugin.log.1"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line(10));
        for n in 11..100 {
            sink.write_line(LogFormat::Text, line(n).as_bytes());
        }
        assert_eq!(
            files_in(dir.path()),
            ["plugin.log", "plugin.log.1", "plugin.log.2"]
        );
        for name in files_in(dir.path()) {
            assert!(std::fs::metadata(dir.path().join(name)).unwrap().len() <= 1000);
        }
        // The newest lines survive, in order: 70..=99.
        let kept: String = ["plugin.log.2", "plugin.log.1", "plugin.log"]
            .iter()
            .map(|n| std::fs::read_to_string(dir.path().join(n)).unwrap())
            .collect();
        let expected: String = (70..100).map(line).collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn reapplying_the_same_file_keeps_it_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plugin.log");
        let rotation = Rotation {
            max_bytes: 4096,
            max_files: 2,
        };
        let sink = LogSink::new();
        sink.set_file_rotated(&path, rotation, LogFormat::Text)
            .unwrap();
        sink.write_line(LogFormat::Text, b"one\n");
        sink.set_file_rotated(&path, rotation, LogFormat::Json)
            .unwrap();
        // A text line in flight when the format changed is dropped, never mixed in.
        sink.write_line(LogFormat::Text, b"two\n");
        sink.write_line(LogFormat::Json, b"{}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n{}\n");
    }

    #[test]
    fn a_file_that_cannot_be_opened_leaves_logs_on_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "").unwrap();
        let sink = LogSink::new();
        sink.set_file_rotated(
            &not_a_dir.join("plugin.log"),
            Rotation::default(),
            LogFormat::Text,
        )
        .unwrap_err();
        assert!(matches!(sink.lock().target, Target::Stderr));
        assert!(sink.wants(LogFormat::Text) && !sink.wants(LogFormat::Json));
    }

    #[test]
    fn a_file_that_cannot_be_written_leaves_logs_on_stderr() {
        // Opening the full device works; every write to it fails with ENOSPC.
        let sink = LogSink::new();
        sink.set_file_rotated(Path::new("/dev/full"), Rotation::default(), LogFormat::Json)
            .unwrap();
        assert!(matches!(sink.lock().target, Target::File(_)));
        sink.write_line(LogFormat::Json, b"{\"message\":\"lost\"}\n");
        assert!(matches!(sink.lock().target, Target::Stderr));
        let note = write_failed_note(
            LogFormat::Json,
            Path::new("/dev/full"),
            &io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let note: serde_json::Value = serde_json::from_str(&note).unwrap();
        assert_eq!(note["level"], "WARN");
        assert_eq!(note["path"], "/dev/full");
    }
}
