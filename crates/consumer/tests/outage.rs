//! A backend that stops answering: the consumer waits it out, logs once per state change, and
//! loses nothing. (One test in this file: it owns the process's log subscriber.)
mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use pipeline_core::analytics::{counters, Increment, MetricsSnapshot};
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::*;
use pipeline_core::config::{LogFormat, LogLevel};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// The memory backend behind switches that make `claim_batch` and `settle` fail.
struct FlakyBackend {
    inner: Arc<MemoryBackend>,
    /// While set, every claim fails.
    claims_down: AtomicBool,
    /// This many next settles fail.
    settles_to_fail: AtomicU32,
    /// Calls that failed so far.
    failures: AtomicU64,
}

impl FlakyBackend {
    fn refuse(&self) -> BackendError {
        self.failures.fetch_add(1, Ordering::SeqCst);
        BackendError::Unavailable("connection refused".into())
    }
}

#[async_trait]
impl Backend for FlakyBackend {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn ping(&self) -> BackendResult<()> {
        self.inner.ping().await
    }
    async fn enqueue(&self, events: Vec<QueuedEvent>) -> BackendResult<Vec<EnqueueOutcome>> {
        self.inner.enqueue(events).await
    }
    async fn claim_batch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        if self.claims_down.load(Ordering::SeqCst) {
            return Err(self.refuse());
        }
        self.inner.claim_batch(consumer, max, wait, cancel).await
    }
    async fn settle(&self, settlements: Vec<Settlement>) -> BackendResult<()> {
        let failing = self
            .settles_to_fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(self.refuse());
        }
        self.inner.settle(settlements).await
    }
    async fn depths(&self) -> BackendResult<Depths> {
        self.inner.depths().await
    }
    async fn dlq_list(&self, limit: usize, offset: usize) -> BackendResult<Vec<DeadLetter>> {
        self.inner.dlq_list(limit, offset).await
    }
    async fn dlq_replay(&self, which: DlqSelection) -> BackendResult<u64> {
        self.inner.dlq_replay(which).await
    }
    async fn dlq_purge(&self) -> BackendResult<u64> {
        self.inner.dlq_purge().await
    }
    async fn record(&self, increments: Vec<Increment>) -> BackendResult<()> {
        self.inner.record(increments).await
    }
    async fn metrics(&self) -> BackendResult<MetricsSnapshot> {
        self.inner.metrics().await
    }
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn an_outage_is_waited_out_logged_once_each_way_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("consumer.log");
    let _logs = pipeline_core::logging::init_with(
        "consumer",
        LogLevel::Info,
        LogFormat::Text,
        Some(&log_path),
    )
    .unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let config = config(&[]);
    let memory = memory_backend(&config);
    let flaky = Arc::new(FlakyBackend {
        inner: memory.clone(),
        claims_down: AtomicBool::new(true),
        settles_to_fail: AtomicU32::new(0),
        failures: AtomicU64::new(0),
    });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer::run(config, flaky.clone(), shutdown.clone()));

    // Phase 1: claims fail. The consumer keeps trying (it does not exit) and says so once.
    enqueue(&memory, vec![signup("evt_1", "u1", json!({}))]).await;
    eventually("several failed claims", || async {
        flaky.failures.load(Ordering::SeqCst) >= 4
    })
    .await;
    assert!(
        !running.is_finished(),
        "an outage must not end the consumer"
    );
    flaky.claims_down.store(false, Ordering::SeqCst);
    counter_reaches(&memory, counters::PROCESSED, 1).await;

    // Phase 2: the claim works but the settle fails twice; it is retried, applied once.
    let before = flaky.failures.load(Ordering::SeqCst);
    flaky.settles_to_fail.store(2, Ordering::SeqCst);
    enqueue(&memory, vec![signup("evt_2", "u2", json!({}))]).await;
    counter_reaches(&memory, counters::PROCESSED, 2).await;
    assert_eq!(flaky.failures.load(Ordering::SeqCst), before + 2);

    shutdown.cancel();
    let stats = tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((stats.processed, stats.batches), (2, 2));
    assert_eq!(metrics(&memory).await.counter(counters::PROCESSED), 2);
    assert_eq!(memory.depths().await.unwrap().queue, 0);

    eventually("the statistics block in the log", || async {
        read_log().contains("PROCESSING STATISTICS")
    })
    .await;
    let log = read_log();
    assert_eq!(count_lines(&log, "Backend unavailable: "), 2, "{log}");
    assert_eq!(count_lines(&log, "Backend available again"), 2, "{log}");
    assert_eq!(
        count_lines(&log, "Processing batch of 1 events"),
        2,
        "{log}"
    );
    assert_eq!(
        count_lines(&log, "Batch complete: 1 success, 0 failed"),
        2,
        "{log}"
    );
    assert_eq!(
        count_lines(&log, "User signup: u1 from unknown"),
        1,
        "{log}"
    );
    assert!(
        log.lines().any(|l| l
            .contains(" - consumer - INFO - Processed user_signup (evt_1) - latency: ")
            && l.ends_with("ms")),
        "{log}"
    );
}
