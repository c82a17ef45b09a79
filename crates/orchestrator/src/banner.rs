//! What the orchestrator prints on start, as the original did: name, webhook URL, health URL.

use pipeline_core::config::{BackendKind, Config};

const RULE: &str = "============================================================";

/// The start-up banner.
pub fn banner(config: &Config) -> String {
    format!(
        "{RULE}\nReal-Time Analytics Orchestrator v{}\n{RULE}\n{}{RULE}\n",
        env!("CARGO_PKG_VERSION"),
        summary(config)
    )
}

/// The key settings, one per line (also printed by `--check`).
pub fn summary(config: &Config) -> String {
    let url = config.webhook_url();
    let backend = match config.queue_backend {
        BackendKind::Sqlite => format!("sqlite ({})", config.sqlite.path.display()),
        BackendKind::Redis => format!("redis ({})", config.redis_url_redacted()),
        BackendKind::Memory => "memory (single process)".to_string(),
    };
    format!(
        "Webhook URL:   {url}/webhook/events\n\
         Health check:  {url}/health\n\
         Dashboard:     {url}/dashboard\n\
         Queue backend: {backend}\n\
         Consumers:     {}\n\
         Log file:      {}\n",
        config.consumers,
        config.logging.file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_names_the_webhook_and_health_urls() {
        let b = banner(&Config::defaults());
        assert!(b.contains("Real-Time Analytics Orchestrator"));
        assert!(b.contains("http://127.0.0.1:5015/webhook/events"));
        assert!(b.contains("http://127.0.0.1:5015/health"));
    }
}
