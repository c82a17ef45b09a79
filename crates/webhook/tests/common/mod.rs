//! A webhook server running in-process on 127.0.0.1:0, stopped when its handle is dropped.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{Backend, BackendOptions};
use pipeline_core::config::{BackendKind, Config};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Defaults with the memory backend and no log file.
pub fn test_config() -> Config {
    let mut c = Config::defaults();
    c.queue_backend = BackendKind::Memory;
    c
}

/// A valid `user_signup` event with this id.
pub fn event(id: &str) -> Value {
    json!({
        "event_id": id,
        "event_type": "user_signup",
        "user_id": "user_abc123",
        "timestamp": "2025-12-16T10:00:00Z",
        "metadata": {"source": "organic", "email": "test@example.com"}
    })
}

pub struct ServerHandle {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub backend: Arc<dyn Backend>,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl ServerHandle {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(config: Config) -> Self {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BackendOptions::default()));
        Self::start_on(config, backend).await
    }

    pub async fn start_on(config: Config, backend: Arc<dyn Backend>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(webhook::serve(
            config,
            backend.clone(),
            listener,
            shutdown.clone(),
        ));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        ServerHandle {
            base,
            backend,
            client,
            shutdown,
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    pub async fn queue_depth(&self) -> u64 {
        self.backend.depths().await.unwrap().queue
    }

    /// Cancels the server and waits for `serve` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve does not panic")
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts a JSON error body with `error` and `message`; returns it.
pub async fn error_body(response: reqwest::Response) -> Value {
    let ct = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    assert!(body["message"].is_string(), "{body}");
    body
}
