//! Logging that works before we know where logs should go.
//!
//! A pre-installed plugin starts with standard output and error on /dev/null and learns its
//! log file only from the config the runtime hands over in `Configure`, after registration.
//! Until then lines are kept in a bounded buffer; [`LogSink::set_file`] flushes them there.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

/// Bytes of early log kept before the destination is known.
const EARLY_BUFFER: usize = 256 * 1024;

enum Target {
    Buffer(Vec<u8>),
    File(File),
    Stderr,
}

/// Where log lines go; can be switched while running.
pub struct LogSink {
    target: Mutex<Target>,
}

impl LogSink {
    fn lock(&self) -> std::sync::MutexGuard<'_, Target> {
        crate::lock::lock(&self.target)
    }

    /// Sends logs (and everything buffered so far) to `path`, appending.
    pub fn set_file(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        let mut target = self.lock();
        if let Target::Buffer(buf) = &*target {
            file.write_all(buf)?;
        }
        *target = Target::File(file);
        Ok(())
    }

    /// Sends logs (and everything buffered so far) to standard error.
    pub fn set_stderr(&self) {
        let mut target = self.lock();
        if let Target::Buffer(buf) = &*target {
            let _ = io::stderr().write_all(buf);
        }
        *target = Target::Stderr;
    }
}

/// One formatted log line on its way to the sink.
pub struct LineWriter(Arc<LogSink>);

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut *self.0.lock() {
            Target::Buffer(buf) => {
                if buf.len() + data.len() <= EARLY_BUFFER {
                    buf.extend_from_slice(data);
                }
                Ok(data.len())
            }
            Target::File(f) => f.write(data),
            Target::Stderr => io::stderr().write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Clone)]
pub struct SinkWriter(Arc<LogSink>);

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter(self.0.clone())
    }
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
        let sink = Arc::new(LogSink {
            target: Mutex::new(Target::Buffer(Vec::new())),
        });
        let filter =
            EnvFilter::try_new(filter_directives(level)).unwrap_or_else(|_| EnvFilter::new("info"));
        let (filter, handle) = reload::Layer::new(filter);
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(SinkWriter(sink.clone()))
            .with_ansi(false)
            .with_target(false);
        // Only fails when a subscriber is already installed (tests); then keep that one.
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
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

    /// Applies a config's destination and level.
    pub fn apply(&self, log_file: Option<&Path>, level: &str) -> io::Result<()> {
        self.set_level(level);
        match log_file {
            Some(path) => self.sink.set_file(path),
            None => {
                self.sink.set_stderr();
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
    use super::filter_directives;

    #[test]
    fn bare_levels_are_ours_only() {
        assert_eq!(filter_directives("debug"), "warn,nri_lifecycle=debug");
        assert_eq!(filter_directives("h2=debug,info"), "h2=debug,info");
    }
}
