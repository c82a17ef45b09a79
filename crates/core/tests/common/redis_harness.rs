//! The conformance harness for a Redis server of the testkit, plain or TLS.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::conformance::Harness;
use pipeline_core::backend::redis::RedisBackend;
use pipeline_core::backend::{Backend, BackendOptions};
use pipeline_core::config::{RedisConfig, RedisMode, RedisTlsFiles};

/// One server per test; `open` takes a fresh key prefix on it, `reopen` the last one again.
pub struct RedisHarness<S> {
    /// The server (kept alive, and at hand for tests that stop or inspect it).
    pub server: S,
    url: String,
    tls: RedisTlsFiles,
    mode: RedisMode,
    partitions: u16,
    /// Prefix of the last `open`.
    prefix: Mutex<String>,
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

impl<S: Send + Sync> RedisHarness<S> {
    /// One server, one partition.
    pub fn new(server: S, url: String, tls: RedisTlsFiles) -> Self {
        Self::with_layout(server, url, tls, RedisMode::Standalone, 1)
    }

    /// `mode` with the queue split into `partitions`.
    pub fn with_layout(
        server: S,
        url: String,
        tls: RedisTlsFiles,
        mode: RedisMode,
        partitions: u16,
    ) -> Self {
        RedisHarness {
            server,
            url,
            tls,
            mode,
            partitions,
            prefix: Mutex::new("t0".into()),
        }
    }

    pub async fn backend(&self, prefix: &str, options: BackendOptions) -> RedisBackend {
        let config = RedisConfig {
            url: self.url.clone(),
            mode: self.mode,
            key_prefix: prefix.to_string(),
            partitions: self.partitions,
            wait_replicas: 0,
            wait_timeout: std::time::Duration::from_millis(100),
            tls: self.tls.clone(),
        };
        RedisBackend::open(&config, options).await.unwrap()
    }
}

#[async_trait]
impl<S: Send + Sync> Harness for RedisHarness<S> {
    async fn open(&self, options: BackendOptions) -> Arc<dyn Backend> {
        let prefix = format!("t{}", PREFIXES.fetch_add(1, Ordering::Relaxed));
        *self.prefix.lock().unwrap() = prefix.clone();
        Arc::new(self.backend(&prefix, options).await)
    }

    async fn reopen(&self, options: BackendOptions) -> Arc<dyn Backend> {
        let prefix = self.prefix.lock().unwrap().clone();
        Arc::new(self.backend(&prefix, options).await)
    }

    fn fifo(&self) -> bool {
        self.partitions == 1
    }
}
