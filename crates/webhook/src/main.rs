//! The `webhook` binary: reads the configuration, opens the backend and the port, and runs
//! [`webhook::serve`] until SIGINT/SIGTERM. Exit codes follow SPEC §10.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use pipeline_core::config::{Config, ConfigArgs};
use pipeline_core::runtime::{self, exit};
use pipeline_core::{backend, logging};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use webhook::signature::WebhookSecret;

/// How long opening the backend may take before start-up gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Webhook receiver of the analytics pipeline: validates, deduplicates and queues events.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = runtime::config_or_exit(&cli.config);
    if let Some(secret) = config.webhook_secret.as_deref() {
        if let Err(e) = WebhookSecret::parse(secret) {
            eprintln!("Configuration problem:\n  {e}");
            return code(exit::USAGE);
        }
    }
    let _logs = match logging::init("webhook", &config) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("webhook: {e}");
            return code(exit::FAILURE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("Cannot start the async runtime: {e}");
            return code(exit::FAILURE);
        }
    };
    code(runtime.block_on(run(config)))
}

async fn run(config: Config) -> i32 {
    let backend = match tokio::time::timeout(CONNECT_TIMEOUT, backend::connect(&config)).await {
        Ok(Ok(backend)) => backend,
        Ok(Err(e)) => {
            tracing::error!("Cannot open the {} backend: {e}", config.queue_backend);
            return exit::FAILURE;
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
    let (host, port) = (config.webhook_host.clone(), config.webhook_port);
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
    let shutdown = CancellationToken::new();
    runtime::cancel_on_signals(shutdown.clone());
    match webhook::serve(config, backend, listener, shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => {
            tracing::error!("Webhook receiver failed: {e:#}");
            exit::FAILURE
        }
    }
}
