//! Load shedding, a failing or hanging backend, recovery, and graceful shutdown.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use common::{error_body, event, eventually, test_config, ServerHandle};
use pipeline_core::analytics::{Increment, MetricsSnapshot};
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{
    Backend, BackendError, BackendOptions, BackendResult, DeadLetter, Delivery, Depths,
    DlqSelection, EnqueueOutcome, QueuedEvent, Settlement,
};
use tokio_util::sync::CancellationToken;

const UP: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;
const SLOW: u8 = 3;

/// The memory backend behind a switch: up, failing with `Unavailable`, hanging forever, or
/// slow (each call takes 300 ms; an enqueue stores first, then takes 300 ms to answer).
struct SwitchedBackend {
    inner: MemoryBackend,
    mode: AtomicU8,
}

impl SwitchedBackend {
    fn new(mode: u8) -> Arc<Self> {
        Arc::new(SwitchedBackend {
            inner: MemoryBackend::new(BackendOptions::default()),
            mode: AtomicU8::new(mode),
        })
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    async fn gate(&self) -> BackendResult<()> {
        match self.mode.load(Ordering::SeqCst) {
            FAILING => Err(BackendError::Unavailable("connection refused".into())),
            HANGING => std::future::pending().await,
            SLOW => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Backend for SwitchedBackend {
    fn name(&self) -> &'static str {
        "switched"
    }
    async fn ping(&self) -> BackendResult<()> {
        self.gate().await
    }
    async fn enqueue(&self, events: Vec<QueuedEvent>) -> BackendResult<Vec<EnqueueOutcome>> {
        if self.mode.load(Ordering::SeqCst) == SLOW {
            // Stored at once, answered late: the request is visibly in flight meanwhile.
            let outcomes = self.inner.enqueue(events).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            return outcomes;
        }
        self.gate().await?;
        self.inner.enqueue(events).await
    }
    async fn claim_batch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        self.gate().await?;
        self.inner.claim_batch(consumer, max, wait, cancel).await
    }
    async fn settle(&self, settlements: Vec<Settlement>) -> BackendResult<()> {
        self.gate().await?;
        self.inner.settle(settlements).await
    }
    async fn depths(&self) -> BackendResult<Depths> {
        self.gate().await?;
        self.inner.depths().await
    }
    async fn dlq_list(&self, limit: usize, offset: usize) -> BackendResult<Vec<DeadLetter>> {
        self.gate().await?;
        self.inner.dlq_list(limit, offset).await
    }
    async fn dlq_replay(&self, which: DlqSelection) -> BackendResult<u64> {
        self.gate().await?;
        self.inner.dlq_replay(which).await
    }
    async fn dlq_purge(&self) -> BackendResult<u64> {
        self.gate().await?;
        self.inner.dlq_purge().await
    }
    async fn record(&self, increments: Vec<Increment>) -> BackendResult<()> {
        self.gate().await?;
        self.inner.record(increments).await
    }
    async fn metrics(&self) -> BackendResult<MetricsSnapshot> {
        self.gate().await?;
        self.inner.metrics().await
    }
}

async fn assert_unavailable_within_a_second(server: &ServerHandle, path: &str) {
    let started = Instant::now();
    let r = match path {
        "/webhook/batch" => {
            server
                .post(path, &serde_json::json!({"events": [event("evt_down")]}))
                .await
        }
        _ => server.post(path, &event("evt_down")).await,
    };
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 503, "{path}");
    assert_eq!(r.headers()["retry-after"], "1");
    let body = error_body(r).await;
    assert_eq!(body["error"], "backend_unavailable");
    assert!(
        elapsed < Duration::from_secs(1),
        "{path}: answered in {elapsed:?}"
    );
}

#[tokio::test]
async fn a_queue_above_the_limit_sheds_load_with_429_until_it_drains() {
    let mut config = test_config();
    config.max_queue_depth = 1;
    let server = ServerHandle::start_with(config).await;
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_q1"))
            .await
            .status(),
        202
    );
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_q2"))
            .await
            .status(),
        202
    );

    let r = server.post("/webhook/events", &event("evt_q3")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_body(r).await["error"], "queue_full");
    let r = server
        .post(
            "/webhook/batch",
            &serde_json::json!({"events": [event("evt_q4")]}),
        )
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(server.queue_depth().await, 2);

    // A consumer drains the queue; the webhook accepts again by itself.
    let cancel = CancellationToken::new();
    let taken = server
        .backend
        .claim_batch("c", 10, Duration::ZERO, &cancel)
        .await
        .unwrap();
    let acks = taken
        .into_iter()
        .map(|delivery| Settlement::Ack {
            delivery,
            effect: None,
        })
        .collect();
    server.backend.settle(acks).await.unwrap();
    let client = server.client.clone();
    let url = server.url("/webhook/events");
    let accepted = eventually(Duration::from_secs(5), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .post(url)
                .json(&event("evt_q3"))
                .send()
                .await
                .unwrap();
            r.status() == 202
        }
    })
    .await;
    assert!(accepted);
}

#[tokio::test]
async fn a_failing_backend_gives_503_with_retry_after_and_the_webhook_recovers() {
    let backend = SwitchedBackend::new(FAILING);
    let server = ServerHandle::start_on(test_config(), backend.clone()).await;
    assert_unavailable_within_a_second(&server, "/webhook/events").await;
    assert_unavailable_within_a_second(&server, "/webhook/batch").await;

    let r = server.get("/health").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let health: serde_json::Value = r.json().await.unwrap();
    assert_eq!(health["status"], "unhealthy");
    assert!(health["reason"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
    for path in ["/stats", "/metrics", "/analytics", "/dlq"] {
        let r = server.get(path).await;
        assert_eq!(r.status(), 503, "{path}");
        error_body(r).await;
    }

    backend.set(UP);
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_back"))
            .await
            .status(),
        202
    );
    assert_eq!(server.get("/health").await.status(), 200);
    // The unjudged 503s were not counted; the accept after recovery was.
    let stats = server.get_json("/stats").await;
    assert_eq!(stats["received"], 1, "{stats}");
    assert_eq!(stats["accepted"], 1, "{stats}");
}

#[tokio::test]
async fn a_hanging_backend_still_gives_503_within_a_second() {
    let backend = SwitchedBackend::new(HANGING);
    let server = ServerHandle::start_on(test_config(), backend.clone()).await;
    assert_unavailable_within_a_second(&server, "/webhook/events").await;

    let started = Instant::now();
    let r = server.get("/health").await;
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(1));

    backend.set(UP);
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_back"))
            .await
            .status(),
        202
    );
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let backend = SwitchedBackend::new(SLOW);
    let server = ServerHandle::start_on(test_config(), backend.clone()).await;
    let in_flight = {
        let client = server.client.clone();
        let url = server.url("/webhook/events");
        tokio::spawn(async move { client.post(url).json(&event("evt_late")).send().await })
    };
    // Wait until the request is inside the backend call, then stop the server.
    let depth_seen = eventually(Duration::from_secs(5), || async {
        backend.inner.depths().await.unwrap().queue == 1
    })
    .await;
    assert!(depth_seen);
    server.stop().await.unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 202);
}
