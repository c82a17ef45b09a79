//! Start-up and shutdown plumbing every binary shares, so `main` stays thin.

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigArgs};

/// Exit codes of every binary (README, "Exit codes").
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
    let at_once = CancellationToken::new();
    watch_signals(token, at_once.clone());
    tokio::spawn(async move {
        at_once.cancelled().await;
        std::process::exit(130);
    });
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM and `at_once` on the second, so the
/// caller decides what "stop now" means (exit, or kill its children first).
///
/// The handlers are installed before this returns, not in the spawned task: a signal that
/// came before that task first ran would otherwise kill the process (no handler yet) or be
/// missed (handler installed, listener not yet subscribed) on a busy machine.
pub fn watch_signals(shutdown: CancellationToken, at_once: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGINT/SIGTERM");
        return;
    };
    tokio::spawn(async move {
        for n in 0.. {
            // Whichever signal comes first counts; both streams stay registered.
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n == 0 {
                tracing::info!(
                    "Shutdown requested: finishing in-flight work (signal again to stop at once)"
                );
                shutdown.cancel();
            } else {
                tracing::warn!("Second signal: stopping at once");
                at_once.cancel();
                return;
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
