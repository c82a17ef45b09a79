//! The conformance harness for a Redis server of the testkit, plain or TLS.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::conformance::Harness;
use pipeline_core::backend::redis::RedisBackend;
use pipeline_core::backend::{Backend, BackendOptions};
use pipeline_core::config::RedisTlsFiles;

/// One server per test; `open` takes a fresh key prefix on it, `reopen` the last one again.
pub struct RedisHarness<S> {
    /// The server (kept alive, and at hand for tests that stop or inspect it).
    pub server: S,
    url: String,
    tls: RedisTlsFiles,
    /// Prefix of the last `open`.
    prefix: Mutex<String>,
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

impl<S: Send + Sync> RedisHarness<S> {
    pub fn new(server: S, url: String, tls: RedisTlsFiles) -> Self {
        RedisHarness {
            server,
            url,
            tls,
            prefix: Mutex::new("t0".into()),
        }
    }

    pub async fn backend(&self, prefix: &str, options: BackendOptions) -> RedisBackend {
        RedisBackend::connect(&self.url, prefix, &self.tls, options)
            .await
            .unwrap()
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
}
