//! The `webhook` command line: reads the configuration, opens the backend and the port, and runs
//! [`crate::serve`] until SIGINT/SIGTERM. Exit codes are `pipeline_core::runtime::exit`. It lives in the library so
//! the orchestrator can run it from its own executable when the `webhook` binary is absent.

use std::ffi::OsString;

use std::time::Duration;

use crate::signature::WebhookSecret;
use clap::Parser;
use pipeline_core::config::{Config, ConfigArgs};
use pipeline_core::runtime::{self, exit};
use pipeline_core::{backend, logging};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long opening the backend may take before start-up gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Webhook receiver of the analytics pipeline: validates, deduplicates and queues events.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

/// Runs the webhook with these command-line arguments (the first is the program name) and
/// returns the exit code.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = Cli::parse_from(args);
    let config = runtime::config_or_exit(&cli.config);
    if let Some(secret) = config.http.webhook_secret.as_deref() {
        if let Err(e) = WebhookSecret::parse(secret) {
            eprintln!("Configuration problem:\n  {e}");
            return exit::USAGE;
        }
    }
    let _logs = match logging::init("webhook", &config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("webhook: {e}");
            return exit::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("Cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> i32 {
    runtime::warn_if_memory_backend_alone(&config);
    // Listening for signals first: a SIGTERM during start-up is a request to stop (exit 0 once
    // serving), not a kill.
    let shutdown = CancellationToken::new();
    runtime::cancel_on_signals(shutdown.clone());
    let backend = match tokio::time::timeout(CONNECT_TIMEOUT, backend::connect(&config)).await {
        Ok(Ok(backend)) => backend,
        Ok(Err(e)) => {
            tracing::error!("Cannot open the {} backend: {e}", config.queue_backend);
            return e.exit_status();
        }
        Err(_) => {
            tracing::error!(
                "Cannot open the {} backend: no answer within {} s",
                config.queue_backend,
                CONNECT_TIMEOUT.as_secs()
            );
            return exit::FAILURE;
        }
    };
    let (host, port) = (config.http.host.clone(), config.http.port);
    let listener = match TcpListener::bind((host.as_str(), port)).await {
        Ok(l) => l,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                " (another process uses this port; set DAY15_WEBHOOK_PORT or --port)"
            } else {
                ""
            };
            tracing::error!("Cannot listen on {host}:{port}: {e}{hint}");
            return exit::FAILURE;
        }
    };
    match crate::serve(config, backend, listener, shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!("Webhook receiver failed: {e:#}");
            exit::FAILURE
        }
    }
}
