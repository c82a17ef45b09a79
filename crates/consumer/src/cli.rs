//! The `consumer` command line: runs the batch loop, or administers the dead-letter queue. It
//! lives in the library so the orchestrator can run it from its own executable when the
//! `consumer` binary is absent.

use std::ffi::OsString;

use clap::{Parser, Subcommand};
use pipeline_core::backend::{self, DlqSelection};
use pipeline_core::config::ConfigArgs;
use pipeline_core::event::EventId;
use pipeline_core::{logging, runtime};
use tokio_util::sync::CancellationToken;

/// Applies queued webhook events to the analytics in micro-batches, exactly once; retries
/// failures with backoff and parks what keeps failing in the dead-letter queue.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Process events until SIGINT/SIGTERM (the default)
    Run,
    /// Inspect and manage the dead-letter queue
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first
    List {
        /// Print a JSON array instead of a table
        #[arg(long)]
        json: bool,
        /// Most entries to show
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
        /// Entries to skip
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: usize,
    },
    /// Move dead letters back to the queue (attempts reset)
    Replay {
        /// Event id to replay (repeatable)
        #[arg(long = "id", value_name = "ID", value_parser = parse_event_id,
              required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<EventId>,
        /// Replay every dead letter
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead letter
    Purge,
}

fn parse_event_id(s: &str) -> Result<EventId, String> {
    EventId::parse(s).map_err(|problem| format!("event id {problem}"))
}

/// Runs the consumer with these command-line arguments (the first is the program name) and
/// returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = Cli::parse_from(args);
    let config = runtime::config_or_exit(&cli.config);
    // One thread: a consumer is one loop (claim, apply, settle) whose steps wait on each
    // other, so worker threads would only hand every reply from one thread to another.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return failure(format_args!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => run(config).await,
            Command::Dlq(command) => dlq(config, command).await,
        }
    })
}

fn failure(message: impl std::fmt::Display) -> i32 {
    eprintln!("consumer: {message}");
    runtime::exit::FAILURE
}

async fn run(config: pipeline_core::config::Config) -> i32 {
    let _log_guard = match logging::init("consumer", &config) {
        Ok(guard) => guard,
        Err(e) => return failure(e),
    };
    runtime::warn_if_memory_backend_alone(&config);
    // Listening for signals first: a SIGTERM while the backend is being opened is a request
    // to stop (exit 0 once running), not a kill.
    let shutdown = CancellationToken::new();
    runtime::cancel_on_signals(shutdown.clone());
    let backend = match backend::connect(&config).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("Cannot open the {} backend: {e}", config.queue_backend);
            eprintln!(
                "consumer: cannot open the {} backend: {e}",
                config.queue_backend
            );
            return e.exit_status();
        }
    };
    match crate::run(config, backend, shutdown).await {
        Ok(_) => runtime::exit::OK,
        Err(e) => {
            tracing::error!("Consumer failed: {e:#}");
            failure(format_args!("{e:#}"))
        }
    }
}

/// DLQ commands print only their result on stdout (no log lines), so `--json` is pipeable.
async fn dlq(config: pipeline_core::config::Config, command: DlqCommand) -> i32 {
    let backend = match backend::connect(&config).await {
        Ok(b) => b,
        Err(e) => {
            return failure(format_args!(
                "cannot open the {} backend: {e}",
                config.queue_backend
            ))
        }
    };
    let result = match command {
        DlqCommand::List {
            json,
            limit,
            offset,
        } => crate::dlq::list(backend.as_ref(), limit, offset, json).await,
        DlqCommand::Replay { ids, all } => {
            let which = if all {
                DlqSelection::All
            } else {
                DlqSelection::Ids(ids)
            };
            crate::dlq::replay(backend.as_ref(), which).await
        }
        DlqCommand::Purge => crate::dlq::purge(backend.as_ref()).await,
    };
    match result {
        Ok(text) => {
            println!("{text}");
            runtime::exit::OK
        }
        Err(e) => failure(format_args!("{e:#}")),
    }
}
