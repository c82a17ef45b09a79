//! The consumer: takes events from the shared queue in micro-batches and applies them to the
//! analytics exactly once (docs/guarantees.md).
//!
//! [`run`] is the whole service; the `consumer` binary only reads configuration, connects the
//! backend and calls it, and the orchestrator calls it in-process for the memory backend.
//!
//! - [`batch`]: the claim → decide → settle loop, one backend round trip per batch.
//! - [`decide`]: the per-event decision (apply, retry later, dead-letter), fault injection.
//! - [`retry`]: capped exponential backoff with equal jitter.
//! - [`dlq`]: `consumer dlq list | replay | purge`.
//! - [`dashboard_push`]: optional best-effort POST of each batch's metric deltas.
//! - [`stats`]: this consumer's `PROCESSING STATISTICS`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use pipeline_core::backend::Backend;
use pipeline_core::config::Config;
use tokio_util::sync::CancellationToken;

pub mod batch;
pub mod cli;
pub mod dashboard_push;
pub mod decide;
pub mod dlq;
pub mod figures;
pub mod retry;
pub mod stats;

pub use stats::ProcessingStats;

/// Processes events until `shutdown` fires, then finishes and settles the batch in hand and
/// returns this consumer's statistics.
///
/// Backend outages are waited out (logged once per state change), never returned as errors;
/// the only error is a dashboard client that cannot be built at start-up.
pub async fn run(
    config: Config,
    backend: Arc<dyn Backend>,
    shutdown: CancellationToken,
) -> anyhow::Result<ProcessingStats> {
    let name = consumer_name();
    tracing::info!(
        "Consumer {name} started: backend {}, batch size {}, batch timeout {:.1}s, max retries {}",
        backend.name(),
        config.consumer.batch_size,
        config.consumer.batch_timeout.as_secs_f64(),
        config.consumer.max_retries
    );
    if config.consumer.dry_run {
        tracing::warn!("[DRY RUN] Events are logged and acknowledged without touching analytics");
    }
    if config.consumer.fault_injection {
        tracing::warn!(
            "FAULT INJECTION ENABLED: events with metadata.simulate_failure fail on purpose. Never use this in production."
        );
    }
    let consumer = batch::Consumer::new(&config, backend, name)?;
    Ok(consumer.run(shutdown).await)
}

/// A name unique among the consumers sharing a backend: `<hostname>-<pid>`, with a `-<n>`
/// suffix for the second and later consumers of one process.
pub fn consumer_name() -> String {
    static STARTED: AtomicU32 = AtomicU32::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "consumer".to_string());
    let pid = std::process::id();
    match STARTED.fetch_add(1, Ordering::Relaxed) {
        0 => format!("{host}-{pid}"),
        n => format!("{host}-{pid}-{n}"),
    }
}
