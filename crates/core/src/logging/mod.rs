//! Log setup shared by every binary (README, "Logs").
//!
//! Every record goes to stdout and is appended to `DAY15_LOG_FILE`, one line each, in the
//! original's format: `2025-12-16 19:30:15,234 - webhook - INFO - message`. With
//! `DAY15_LOG_FORMAT=json` each line is a JSON object instead. Both sinks are written by a
//! background thread so request handlers never wait on disk or a slow terminal.
//!
//! `format.rs` makes every record one escaped, bounded line whatever values it carries;
//! `file.rs` is the private, shared, size-rotated log file.

use std::io::{BufWriter, Write};
use std::path::Path;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

mod event_lines;
mod file;
mod format;

pub use event_lines::{EventLines, SummaryLevel};
pub use file::{LogFile, Rotation};
pub use format::{
    escape, needs_escape, LogSafe, PipelineFormat, MAX_RECORD_CHARS, MAX_VALUE_CHARS,
};

use crate::config::{Config, LogFormat, LogLevel};

/// Bytes a sink collects before a write. The background writer flushes whenever it has no
/// more records waiting, so a quiet process still writes each line at once, while a busy one
/// writes many lines per system call. A line is never split: `BufWriter` writes a record that
/// does not fit after flushing what it holds, and an `O_APPEND` write is not interleaved.
const SINK_BUFFER: usize = 64 * 1024;

/// Keeps the background writers alive; dropping it flushes what is buffered.
#[must_use = "logs are lost when the guard is dropped"]
pub struct LogGuard {
    _guard: WorkerGuard,
}

/// Where the background thread writes each formatted record: stdout and the log file.
struct Sinks {
    stdout: BufWriter<std::io::Stdout>,
    file: Option<LogFile>,
}

impl Write for Sinks {
    /// A record arrives whole; each sink gets all of it (so a file line is never split).
    /// Stdout errors are dropped: a closed terminal or pipe must not cost the file its lines,
    /// and there is nowhere left to report them.
    fn write(&mut self, record: &[u8]) -> std::io::Result<usize> {
        let _ = self.stdout.write_all(record);
        if let Some(file) = &mut self.file {
            file.write_record(record)?;
        }
        Ok(record.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.stdout.flush();
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Why logging could not start (the log file path and the cause).
#[derive(Debug, thiserror::Error)]
#[error("cannot open log file {path}: {cause}")]
pub struct LoggingError {
    pub path: String,
    pub cause: String,
}

fn filter(level: LogLevel) -> EnvFilter {
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warning => "warn",
        LogLevel::Error => "error",
    };
    // Library chatter stays out of the pipeline's log unless it is a warning.
    EnvFilter::new(format!(
        "{level},hyper=warn,hyper_util=warn,h2=warn,reqwest=warn,tower=warn,tower_http=warn,redis=warn,rusqlite=warn"
    ))
}

/// Installs the global subscriber for `component`, writing to stdout and the log file.
pub fn init(component: &str, config: &Config) -> Result<LogGuard, LoggingError> {
    init_rotated(
        component,
        config.logging.level,
        config.logging.format,
        Some(&config.logging.file),
        Rotation {
            max_bytes: config.logging.max_bytes,
            max_files: config.logging.max_files,
        },
    )
}

/// As [`init`], with the file optional (`None` = stdout only), rotated by the defaults.
pub fn init_with(
    component: &str,
    level: LogLevel,
    format: LogFormat,
    file: Option<&Path>,
) -> Result<LogGuard, LoggingError> {
    init_rotated(component, level, format, file, Rotation::default())
}

/// As [`init_with`], with the file rotated by `rotation`.
pub fn init_rotated(
    component: &str,
    level: LogLevel,
    format: LogFormat,
    file: Option<&Path>,
    rotation: Rotation,
) -> Result<LogGuard, LoggingError> {
    let file = match file {
        Some(path) if !path.as_os_str().is_empty() => Some(
            LogFile::open(path, rotation, SINK_BUFFER).map_err(|cause| LoggingError {
                path: path.display().to_string(),
                cause: cause.to_string(),
            })?,
        ),
        _ => None,
    };
    // One background thread and one hand-over per record, whatever the number of sinks.
    let (writer, guard) = NonBlockingBuilder::default().lossy(false).finish(Sinks {
        stdout: BufWriter::with_capacity(SINK_BUFFER, std::io::stdout()),
        file,
    });
    let layer = tracing_subscriber::fmt::layer()
        .event_format(PipelineFormat {
            component: component.to_string(),
            format,
        })
        .with_ansi(false)
        .with_writer(writer);

    // A second init in one process (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter(level))
        .with(layer)
        .try_init();
    Ok(LogGuard { _guard: guard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_originals_shape() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/pipeline.log");
        {
            let _g = init_with("webhook", LogLevel::Info, LogFormat::Text, Some(&path)).unwrap();
            tracing::info!("Event received: user_signup (evt_1) - latency: 0.41ms");
            tracing::debug!("hidden at INFO");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text.lines().next().unwrap();
        let re_ok = line.len() > 26
            && line.as_bytes()[4] == b'-'
            && line.as_bytes()[19] == b','
            && line[23..].starts_with(" - webhook - INFO - Event received: user_signup (evt_1)");
        assert!(re_ok, "{line}");
        assert!(!text.contains("hidden"));
    }

    #[test]
    fn unwritable_log_path_names_the_path() {
        let err = init_with(
            "x",
            LogLevel::Info,
            LogFormat::Text,
            Some(Path::new("/proc/definitely/not/here.log")),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("/proc/definitely/not/here.log"));
    }
}
