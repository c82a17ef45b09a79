//! A backend that fails on demand, for tests of what the webhook and the consumer do during an
//! outage: the memory backend behind switches.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::analytics::{Increment, StoredMetrics};
use crate::backend::memory::MemoryBackend;
use crate::backend::{
    Backend, BackendError, BackendOptions, BackendResult, DeadLetter, Delivery, DeliveryMark,
    Depths, DlqSelection, EnqueueOutcome, QueuedEvent, Settlement,
};

/// How every call of a [`FaultyBackend`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FaultMode {
    /// Calls go through.
    Up = 0,
    /// Calls fail with `Unavailable`, as with a refused connection.
    Failing = 1,
    /// Calls never return.
    Hanging = 2,
    /// Calls take [`FaultyBackend::SLOW_CALL`]; an enqueue stores first, then answers late.
    Slow = 3,
}

/// The memory backend behind switches: a mode for every call, plus claim- and settle-only
/// failures, and a count of the calls refused.
pub struct FaultyBackend {
    /// The store that answers when nothing fails.
    pub inner: Arc<MemoryBackend>,
    mode: AtomicU8,
    /// While set, every claim fails (whatever the mode).
    claims_down: AtomicBool,
    /// This many next settles fail.
    settles_to_fail: AtomicU32,
    /// Calls refused so far.
    failures: AtomicU64,
}

impl FaultyBackend {
    /// How long a call takes in [`FaultMode::Slow`].
    pub const SLOW_CALL: Duration = Duration::from_millis(300);

    pub fn new(options: BackendOptions, mode: FaultMode) -> Self {
        Self::over(Arc::new(MemoryBackend::new(options)), mode)
    }

    /// Wraps an existing memory backend, which the test may keep using directly.
    pub fn over(inner: Arc<MemoryBackend>, mode: FaultMode) -> Self {
        FaultyBackend {
            inner,
            mode: AtomicU8::new(mode as u8),
            claims_down: AtomicBool::new(false),
            settles_to_fail: AtomicU32::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn set_mode(&self, mode: FaultMode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    pub fn set_claims_down(&self, down: bool) {
        self.claims_down.store(down, Ordering::SeqCst);
    }

    pub fn fail_next_settles(&self, n: u32) {
        self.settles_to_fail.store(n, Ordering::SeqCst);
    }

    /// Calls refused so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    fn mode(&self) -> u8 {
        self.mode.load(Ordering::SeqCst)
    }

    fn refuse(&self) -> BackendError {
        self.failures.fetch_add(1, Ordering::SeqCst);
        BackendError::Unavailable("connection refused".into())
    }

    /// Applies the mode to one call.
    async fn gate(&self) -> BackendResult<()> {
        match self.mode() {
            m if m == FaultMode::Failing as u8 => Err(self.refuse()),
            m if m == FaultMode::Hanging as u8 => std::future::pending().await,
            m if m == FaultMode::Slow as u8 => {
                tokio::time::sleep(Self::SLOW_CALL).await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Backend for FaultyBackend {
    fn name(&self) -> &'static str {
        "faulty"
    }

    async fn ping(&self) -> BackendResult<()> {
        self.gate().await?;
        self.inner.ping().await
    }

    async fn enqueue_delivery(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        if self.mode() == FaultMode::Slow as u8 {
            // Stored at once, answered late: the request is visibly in flight meanwhile.
            let outcomes = self.inner.enqueue_delivery(events, mark).await;
            tokio::time::sleep(Self::SLOW_CALL).await;
            return outcomes;
        }
        self.gate().await?;
        self.inner.enqueue_delivery(events, mark).await
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
        self.gate().await?;
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

    async fn metrics(&self) -> BackendResult<StoredMetrics> {
        self.gate().await?;
        self.inner.metrics().await
    }

    async fn rollups(
        &self,
        aggregate: &str,
        granularity: crate::analytics::rollup::Granularity,
        from: i64,
        to: i64,
    ) -> BackendResult<crate::analytics::rollup::Buckets> {
        self.gate().await?;
        self.inner.rollups(aggregate, granularity, from, to).await
    }
}
