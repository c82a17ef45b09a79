//! Start-up and shutdown plumbing every binary shares, so `main` stays thin.

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigArgs};

/// Exit codes of every binary (SPEC §10).
pub mod exit {
    pub const OK: i32 = 0;
    /// Runtime failure: backend unreachable, port taken, a child that keeps crashing.
    pub const FAILURE: i32 = 1;
    /// Bad configuration or usage.
    pub const USAGE: i32 = 2;
}

/// Loads and validates the configuration; on any problem prints all of them and exits 2.
pub fn config_or_exit(args: &ConfigArgs) -> Config {
    match Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            std::process::exit(exit::USAGE);
        }
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM; a second signal exits at once with 130.
///
/// The token is the one shutdown signal of the process: every task watches it.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        let mut signals = 0;
        loop {
            // Whichever signal arrives first wins; the other stream stays registered.
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            signals += 1;
            if signals == 1 {
                tracing::info!(
                    "Shutdown requested, finishing in-flight work (signal again to exit now)"
                );
                token.cancel();
            } else {
                tracing::warn!("Second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
}

/// Warns when a standalone webhook or consumer runs on the memory backend: its queue lives in
/// this process only, so events never cross to the other side (the original's mock mode lost
/// them silently). The orchestrator runs both in one process instead, which is how the memory
/// backend is meant to be used.
pub fn warn_if_memory_backend_alone(config: &Config) {
    if config.queue_backend == crate::config::BackendKind::Memory {
        tracing::warn!(
            "DAY15_QUEUE_BACKEND=memory keeps the queue inside this process: no other webhook or \
             consumer process can see it. Run the orchestrator (it runs both in one process), or \
             use sqlite or redis."
        );
    }
}
