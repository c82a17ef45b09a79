//! The orchestrator: one command runs the whole pipeline (README, "Running it").
//!
//! Start-up order: validate the configuration (every problem at once, exit 2), check the
//! backend is reachable and the webhook's port is free (one clear sentence each, exit 1), start
//! the webhook and wait for its own `/health`, then start the consumers. Children are
//! supervised (in-process tasks with the memory backend, by the same policy): an unexpected
//! exit is restarted with exponential backoff, and a role that keeps dying stops everything
//! with exit 1. The first SIGINT/SIGTERM asks every child to finish (SIGTERM) and waits up to
//! DAY15_SHUTDOWN_TIMEOUT_SECONDS before killing stragglers; a second signal kills at once.

use pipeline_core::config::{Config, ConfigArgs, RawSettings};
use pipeline_core::runtime::exit;

pub mod banner;
pub mod in_process;
pub mod preflight;
pub mod restart;
pub mod supervisor;

/// Subcommand that makes the orchestrator's executable run as the webhook (how it starts its
/// webhook child).
pub const RUN_WEBHOOK: &str = "run-webhook";
/// Subcommand that makes the orchestrator's executable run as a consumer.
pub const RUN_CONSUMER: &str = "run-consumer";

/// Runs the orchestrator and returns the process exit code.
pub fn main_entry(args: ConfigArgs, check_only: bool) -> i32 {
    let resolved = RawSettings::gather(&args, std::env::vars())
        .and_then(|raw| Config::validate(&raw).map(|config| (raw, config)));
    let (raw, config) = match resolved {
        Ok(r) => r,
        Err(e) => {
            eprint!("{e}");
            return exit::USAGE;
        }
    };
    if check_only {
        println!("Configuration OK");
        print!("{}", banner::summary(&config));
        return exit::OK;
    }
    let _log = match pipeline_core::logging::init("orchestrator", &config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("{e}");
            return exit::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(run(raw, config))
}

async fn run(raw: RawSettings, config: Config) -> i32 {
    print!("{}", banner::banner(&config));
    if config.queue_backend == pipeline_core::config::BackendKind::Memory {
        return in_process::run(config).await;
    }
    let checks = async {
        preflight::check_backend(&config).await?;
        preflight::check_port(&config)
            .await
            .map_err(|message| (exit::FAILURE, message))
    };
    if let Err((status, message)) = checks.await {
        tracing::error!("{message}");
        eprintln!("{message}");
        return status;
    }
    supervisor::run(raw, config).await
}
