//! Log setup shared by every binary (README, "Logs").
//!
//! Every record goes to stdout and is appended to `DAY15_LOG_FILE`, one line each, in the
//! original's format: `2025-12-16 19:30:15,234 - webhook - INFO - message`. With
//! `DAY15_LOG_FORMAT=json` each line is a JSON object instead. Both sinks are written by a
//! background thread so request handlers never wait on disk or a slow terminal. The file is
//! opened with `O_APPEND` and each line is handed to one `write`, so several processes can
//! share one log file without tearing each other's lines.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;

use chrono::{Datelike, Timelike};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

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
    file: Option<BufWriter<std::fs::File>>,
}

impl Write for Sinks {
    /// A record arrives whole; each sink gets all of it (so a file line is never split).
    /// Stdout errors are dropped: a closed terminal or pipe must not cost the file its lines,
    /// and there is nowhere left to report them.
    fn write(&mut self, record: &[u8]) -> std::io::Result<usize> {
        let _ = self.stdout.write_all(record);
        if let Some(file) = &mut self.file {
            file.write_all(record)?;
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

/// Formats one record as the original did, or as JSON.
pub struct PipelineFormat {
    /// Which process wrote the line (`webhook`, `consumer`, …).
    pub component: String,
    pub format: LogFormat,
}

fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    }
}

/// Collects a record's message and fields.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

impl<S, N> FormatEvent<S, N> for PipelineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = chrono::Local::now();
        let level = level_name(event.metadata().level());
        match self.format {
            LogFormat::Text => {
                // Written field by field: no strftime parsing, no intermediate line string.
                write!(
                    writer,
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02},{:03} - {} - {} - {}",
                    now.year(),
                    now.month(),
                    now.day(),
                    now.hour(),
                    now.minute(),
                    now.second(),
                    now.timestamp_subsec_millis().min(999),
                    self.component,
                    level,
                    fields.message
                )?;
                for (k, v) in &fields.rest {
                    write!(writer, " {k}={v}")?;
                }
                writeln!(writer)
            }
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("timestamp".into(), now.to_rfc3339().into());
                obj.insert("component".into(), self.component.clone().into());
                obj.insert("level".into(), level.into());
                obj.insert("message".into(), fields.message.into());
                for (k, v) in fields.rest {
                    obj.insert(k, v.into());
                }
                writeln!(writer, "{}", serde_json::Value::Object(obj))
            }
        }
    }
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
    init_with(
        component,
        config.logging.level,
        config.logging.format,
        Some(&config.logging.file),
    )
}

/// As [`init`], with the file optional (`None` = stdout only).
pub fn init_with(
    component: &str,
    level: LogLevel,
    format: LogFormat,
    file: Option<&Path>,
) -> Result<LogGuard, LoggingError> {
    let file = match file {
        Some(path) if !path.as_os_str().is_empty() => {
            let err = |cause: std::io::Error| LoggingError {
                path: path.display().to_string(),
                cause: cause.to_string(),
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(err)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(err)?;
            Some(BufWriter::with_capacity(SINK_BUFFER, f))
        }
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
