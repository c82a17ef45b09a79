//! Start-up checks that turn a doomed start into one clear sentence.

use std::time::Duration;

use pipeline_core::backend;
use pipeline_core::config::{BackendKind, Config};
use tokio::net::TcpListener;

/// Opens the configured backend and pings it, within a few seconds.
///
/// The message says where, why, and what to do about it, e.g.
/// `Redis connection failed at redis://127.0.0.1:6379/0: connection refused — start
/// redis-server or set DAY15_QUEUE_BACKEND=sqlite`.
pub async fn check_backend(config: &Config) -> Result<(), (i32, String)> {
    let attempt = async {
        let b = backend::connect(config).await?;
        b.ping().await
    };
    let outcome = match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(r) => r,
        Err(_) => Err(backend::BackendError::Unavailable(
            "no answer within 5 s".to_string(),
        )),
    };
    outcome.map_err(|e| {
        let message = match (&e, config.queue_backend) {
            // The stored data disagrees with the configuration: the sentence says what to set.
            (backend::BackendError::Misconfigured(m), _) => m.clone(),
            (_, BackendKind::Redis) => format!(
                "Redis connection failed at {}: {e} — start redis-server or set DAY15_QUEUE_BACKEND=sqlite",
                config.redis_url_redacted()
            ),
            (_, BackendKind::Sqlite) => format!(
                "Cannot open the SQLite queue at {}: {e} — check DAY15_SQLITE_PATH",
                config.sqlite.path.display()
            ),
            (_, BackendKind::Memory) => format!("In-memory backend failed: {e}"),
        };
        (e.exit_status(), message)
    })
}

/// Binds the webhook's address, as the webhook itself binds it (same resolution, same
/// `SO_REUSEADDR`), so a taken port is found before anything starts.
///
/// The message is one sentence saying what to do, e.g. `Cannot listen on 127.0.0.1:5015: the
/// address is already in use (is another pipeline running?) — stop it or set
/// DAY15_WEBHOOK_PORT`.
pub async fn bind_webhook(config: &Config) -> Result<TcpListener, String> {
    let (host, port) = (config.http.host.as_str(), config.http.port);
    TcpListener::bind((host, port)).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                "Cannot listen on {host}:{port}: the address is already in use (is another pipeline running?) — stop it or set DAY15_WEBHOOK_PORT"
            )
        } else {
            format!(
                "Cannot listen on {host}:{port}: {e} — check DAY15_WEBHOOK_HOST and DAY15_WEBHOOK_PORT"
            )
        }
    })
}

/// Checks the webhook's port is free, then releases it for the webhook child to bind: an
/// orchestrator started beside a running pipeline stops here instead of polling the other
/// pipeline's webhook and restarting its own on "Address already in use".
pub async fn check_port(config: &Config) -> Result<(), String> {
    bind_webhook(config).await.map(drop)
}
