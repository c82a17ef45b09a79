//! Start-up checks that turn a doomed start into one clear sentence.

use std::time::Duration;

use pipeline_core::backend;
use pipeline_core::config::{BackendKind, Config};

/// Opens the configured backend and pings it, within a few seconds.
///
/// The message says where, why, and what to do about it, e.g.
/// `Redis connection failed at redis://127.0.0.1:6379/0: connection refused — start
/// redis-server or set DAY15_QUEUE_BACKEND=sqlite`.
pub async fn check_backend(config: &Config) -> Result<(), String> {
    let attempt = async {
        let b = backend::connect(config).await?;
        b.ping().await
    };
    let outcome = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 5 s".to_string()),
    };
    outcome.map_err(|cause| match config.queue_backend {
        BackendKind::Redis => format!(
            "Redis connection failed at {}: {cause} — start redis-server or set DAY15_QUEUE_BACKEND=sqlite",
            config.redis_url_redacted()
        ),
        BackendKind::Sqlite => format!(
            "Cannot open the SQLite queue at {}: {cause} — check DAY15_SQLITE_PATH",
            config.sqlite.path.display()
        ),
        BackendKind::Memory => format!("In-memory backend failed: {cause}"),
    })
}
