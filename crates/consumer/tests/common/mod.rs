//! Test support: a tight configuration, event builders, a consumer running in-process on a
//! memory backend, and the deadline its waits share.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use consumer::ProcessingStats;
use pipeline_core::analytics::StoredMetrics;
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{Backend, BackendOptions, QueuedEvent};
use pipeline_core::config::{Config, ConfigArgs};
use pipeline_core::event::{Event, EventId};
use pipeline_core::testkit::wait::eventually;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A configuration that makes retries and idle waits short; `vars` override it.
pub fn config(vars: &[(&str, &str)]) -> Config {
    let base = [
        ("DAY15_QUEUE_BACKEND", "memory"),
        ("DAY15_BATCH_SIZE", "10"),
        ("DAY15_BATCH_TIMEOUT_SECONDS", "0.2"),
        ("DAY15_MAX_RETRIES", "3"),
        ("DAY15_RETRY_DELAY_SECONDS", "0.05"),
        ("DAY15_RETRY_MAX_DELAY_SECONDS", "0.2"),
        ("DAY15_LOG_FILE", ""),
    ];
    let environment = base
        .iter()
        .chain(vars)
        .map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load_from(&ConfigArgs::default(), environment).expect("test configuration is valid")
}

pub fn memory_backend(config: &Config) -> Arc<MemoryBackend> {
    Arc::new(MemoryBackend::new(BackendOptions::from_config(config)))
}

/// A valid event as the webhook would store it (with `received_at`).
pub fn event(v: Value) -> QueuedEvent {
    let mut e = Event::from_value(v).expect("test event is valid");
    e.stamp_received_at(Utc::now());
    QueuedEvent::of(&e)
}

pub fn signup(id: &str, user: &str, metadata: Value) -> QueuedEvent {
    event(
        json!({"event_id": id, "event_type": "user_signup", "user_id": user,
                 "timestamp": "2025-12-16T10:00:00Z", "metadata": metadata}),
    )
}

/// A signup that fails as `simulate_failure` says (with fault injection on).
pub fn failing(id: &str, simulate_failure: &str) -> QueuedEvent {
    signup(
        id,
        "user_f",
        json!({"source": "organic", "simulate_failure": simulate_failure}),
    )
}

pub fn raw(id: &str, payload: &str) -> QueuedEvent {
    QueuedEvent {
        event_id: EventId::parse(id).expect("test id is valid"),
        payload: payload.to_string(),
    }
}

pub async fn enqueue(backend: &Arc<MemoryBackend>, events: Vec<QueuedEvent>) {
    backend.enqueue(events).await.expect("memory enqueue");
}

pub async fn metrics(backend: &Arc<MemoryBackend>) -> StoredMetrics {
    backend.metrics().await.expect("memory metrics")
}

/// A consumer running in-process; dropping it requests shutdown.
pub struct RunningConsumer {
    shutdown: CancellationToken,
    running: Option<JoinHandle<anyhow::Result<ProcessingStats>>>,
}

pub fn start(config: Config, backend: &Arc<MemoryBackend>) -> RunningConsumer {
    let shutdown = CancellationToken::new();
    let backend: Arc<dyn Backend> = backend.clone();
    let running = tokio::spawn(consumer::run(config, backend, shutdown.clone()));
    RunningConsumer {
        shutdown,
        running: Some(running),
    }
}

impl RunningConsumer {
    /// Requests shutdown and returns the consumer's result.
    pub async fn stop(mut self) -> anyhow::Result<ProcessingStats> {
        self.shutdown.cancel();
        let running = self.running.take().expect("stopped once");
        tokio::time::timeout(DEADLINE, running)
            .await
            .expect("consumer stops within the deadline")
            .expect("consumer does not panic")
    }
}

impl Drop for RunningConsumer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits until the backend counter `name` reaches `at_least`.
pub async fn counter_reaches(backend: &Arc<MemoryBackend>, name: &str, at_least: u64) {
    eventually(
        &format!("counter {name} >= {at_least}"),
        DEADLINE,
        || async { (metrics(backend).await.counter(name) >= at_least).then_some(()) },
    )
    .await;
}
