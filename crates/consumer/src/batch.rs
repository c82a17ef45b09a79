//! The claim → decide → settle loop.
//!
//! Each turn claims up to DAY15_BATCH_SIZE events (blocking only while the queue is empty, and
//! woken at once by an enqueue), optionally lingers for a fuller batch, decides every event
//! without waiting on anything, and settles the whole batch with one backend call. That call
//! is where acks, scheduled retries, dead letters and the exactly-once analytics effects are
//! applied atomically. Under load the turns overlap: the next batch is claimed before the one
//! in hand is decided, and a batch is decided while the previous one settles.
//!
//! A backend outage never kills the loop: calls are retried with capped backoff, and the
//! outage is logged once when it starts and once when it ends. A settle that keeps failing is
//! retried until it succeeds; at shutdown it gets a few last tries and is then abandoned,
//! which is safe: the unsettled events come back after their lease and the backend applies
//! each effect at most once.
//!
//! Fault injection (DAY15_FAULT_INJECTION with DAY15_FAULT_HOLD_BATCH=N) makes the consumer
//! hold its N-th batch, claimed and decided but not settled, until it is stopped, and then
//! leave it unsettled: a crash test that kills it after the hold is logged kills it holding a
//! batch for certain, however fast the build.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::Utc;
use pipeline_core::analytics::consumer_calls::{CLAIM, SETTLE};
use pipeline_core::backend::{Backend, BackendError, BackendResult, Delivery, Settlement};
use pipeline_core::config::Config;
use pipeline_core::logging::{EventLines, SummaryLevel};
use tokio_util::sync::CancellationToken;

use crate::dashboard_push::{BatchDeltas, DashboardPublisher};
use crate::decide::{decide, HandlerSettings};
use crate::figures::BatchFigures;
use crate::retry::OutageBackoff;
use crate::stats::ProcessingStats;

/// How often the `PROCESSING STATISTICS` block is logged.
pub const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// Shortest wait on an empty queue, so DAY15_BATCH_TIMEOUT_SECONDS=0 does not spin.
const MIN_CLAIM_WAIT: Duration = Duration::from_millis(50);
/// Settle attempts made after shutdown was requested before the batch is left to its lease.
const FINAL_SETTLE_ATTEMPTS: u32 = 3;
/// Pause between those last attempts.
const FINAL_SETTLE_PAUSE: Duration = Duration::from_millis(200);
/// How long queued dashboard updates may still be sent at shutdown.
const DASHBOARD_GRACE: Duration = Duration::from_secs(3);

/// Tracks whether the backend answers, so an outage is logged once per state change.
struct BackendHealth {
    /// When the current outage began; `None` while the backend answers.
    down_since: Option<Instant>,
    backoff: OutageBackoff,
}

impl BackendHealth {
    fn new() -> Self {
        BackendHealth {
            down_since: None,
            backoff: OutageBackoff::new(),
        }
    }

    /// Records a failed call; returns how long to wait before the next one.
    fn failed(&mut self, error: &BackendError) -> Duration {
        if self.down_since.is_none() {
            let cause = match error {
                BackendError::Unavailable(cause) => cause.clone(),
                other => other.to_string(),
            };
            tracing::error!("Backend unavailable: {cause} (retrying with backoff)");
            self.down_since = Some(Instant::now());
        }
        self.backoff.next_delay()
    }

    fn succeeded(&mut self) {
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                "Backend available again after {:.1}s",
                since.elapsed().as_secs_f64()
            );
            self.backoff.reset();
        }
    }
}

/// A batch decided: what to tell the backend, and what to count once it is settled.
struct Decided {
    settlements: Vec<Settlement>,
    outcomes: Vec<crate::decide::Outcome>,
    deltas: Option<BatchDeltas>,
    /// When the batch was taken in hand (its claim answered, deciding starts): its duration
    /// runs from here to settled.
    claimed_at: Instant,
    /// Whether the batch's lines are within the log budget: `Processing batch …` was written,
    /// and so will `Batch complete: …` be.
    logged: bool,
}

/// A backend call that has been sent and whose answer is collected later.
///
/// Sending is one poll of the call's future: both backends start the work then (a Redis
/// command is written to the connection, a SQLite job handed to the writer thread) and carry
/// on whether or not the future is polled again, so this task can decide a batch meanwhile.
///
/// The call is timed from sending to the moment its answer is seen, not collected: while the
/// loop waits on one call it also polls the other in flight ([`Sent::answer_beside`]), so a
/// call's duration exceeds the backend's answer only by the time spent deciding a batch (pure
/// computation, during which nothing is polled) or, about once a second, writing the figures.
struct Sent<T> {
    call: Pin<Box<dyn Future<Output = T> + Send>>,
    sent_at: Instant,
    /// The answer and how long it took, once seen.
    answer: Option<(T, Duration)>,
}

impl<T> Sent<T> {
    async fn send(call: impl Future<Output = T> + Send + 'static) -> Self {
        let mut sent = Sent {
            call: Box::pin(call),
            sent_at: Instant::now(),
            answer: None,
        };
        std::future::poll_fn(|cx| {
            let _ = sent.poll_note(cx);
            Poll::Ready(())
        })
        .await;
        sent
    }

    /// Polls the call unless its answer is in, and notes the answer with its duration.
    fn poll_note(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.answer.is_none() {
            let Poll::Ready(answer) = self.call.as_mut().poll(cx) else {
                return Poll::Pending;
            };
            self.answer = Some((answer, self.sent_at.elapsed()));
        }
        Poll::Ready(())
    }

    /// Waits for the answer and how long the call took, meanwhile noting the answer of
    /// `meanwhile` (another call in flight) as soon as it arrives, so that one is timed
    /// right too.
    async fn answer_beside<U>(mut self, mut meanwhile: Option<&mut Sent<U>>) -> (T, Duration) {
        let sent_at = self.sent_at;
        std::future::poll_fn(|cx| {
            if let Some(other) = meanwhile.as_deref_mut() {
                let _ = other.poll_note(cx);
            }
            match self.answer.take() {
                Some(answer) => Poll::Ready(answer),
                // Never polled again once ready: this future completes with the answer.
                None => self
                    .call
                    .as_mut()
                    .poll(cx)
                    .map(|answer| (answer, sent_at.elapsed())),
            }
        })
        .await
    }
}

/// Whether a claim's duration tells how fast the backend answered. A claim that came back
/// empty after being allowed to wait is not: it lasted the wait it was given (or until
/// shutdown). Every other claim is timed, failures included. A claim that returned events
/// was answered at once when they were ready; when the queue was empty as it was made, it
/// includes the wait until an enqueue woke it, so under a trickle of events the upper buckets
/// show gaps between events. Under load the claims find events ready, and the pipelined
/// claims ([`Consumer::send_claim`]) never wait.
fn claim_is_timed(wait: Duration, answer: &BackendResult<Vec<Delivery>>) -> bool {
    wait.is_zero() || !matches!(answer, Ok(batch) if batch.is_empty())
}

/// A decided batch whose settle call is in flight.
struct Settling {
    call: Sent<BackendResult<()>>,
    decided: Decided,
}

/// One consumer: its settings, its backend handle and its local statistics.
pub struct Consumer {
    backend: Arc<dyn Backend>,
    /// Unique among consumers sharing the backend; names the leases it holds.
    name: String,
    batch_size: usize,
    batch_timeout: Duration,
    batch_linger: Duration,
    settings: HandlerSettings,
    /// The budget of batch lines (DAY15_LOG_EVENTS_PER_SECOND batches a second).
    batch_lines: EventLines,
    stats: ProcessingStats,
    health: BackendHealth,
    /// `Some` when DAY15_DASHBOARD_UPDATE_ENABLED.
    dashboard: Option<DashboardPublisher>,
    /// Which batch to hold unsettled until shutdown (1 = the first); `Some` only with fault
    /// injection and DAY15_FAULT_HOLD_BATCH set.
    hold_batch: Option<u64>,
    /// Batches claimed so far, counting the one being decided: what `hold_batch` refers to.
    batches_claimed: u64,
    /// Batch sizes, durations and last progress not yet written to the backend.
    figures: BatchFigures,
}

impl Consumer {
    /// Prepares a consumer; fails only when the dashboard client cannot be built.
    pub fn new(config: &Config, backend: Arc<dyn Backend>, name: String) -> anyhow::Result<Self> {
        let dashboard = if config.dashboard.update_enabled {
            Some(DashboardPublisher::start(&config.dashboard.api_url)?)
        } else {
            None
        };
        Ok(Consumer {
            backend,
            stats: ProcessingStats::new(name.clone()),
            figures: BatchFigures::new(&name),
            name,
            batch_size: config.consumer.batch_size,
            batch_timeout: config.consumer.batch_timeout.max(MIN_CLAIM_WAIT),
            batch_linger: config.consumer.batch_linger,
            settings: HandlerSettings::from_config(config),
            batch_lines: EventLines::new(
                config.logging.events_per_second,
                "batches processed",
                SummaryLevel::Info,
            ),
            health: BackendHealth::new(),
            dashboard,
            hold_batch: (config.consumer.fault_injection && config.consumer.fault_hold_batch > 0)
                .then_some(config.consumer.fault_hold_batch),
            batches_claimed: 0,
        })
    }

    /// Runs until `shutdown` fires: the batches in hand are finished and settled, statistics
    /// are logged and returned.
    ///
    /// Batches are pipelined: while one batch is being settled, the next is claimed and
    /// decided, so the backend's work and this process's work overlap instead of taking turns.
    /// At most one settle is in flight, and a batch's outcome is counted once it is settled.
    pub async fn run(mut self, shutdown: CancellationToken) -> ProcessingStats {
        let mut next_report = Instant::now() + STATS_INTERVAL;
        // Claimed (leased), not yet decided.
        let mut batch = Vec::new();
        // Decided, being settled.
        let mut settling: Option<Settling> = None;
        while !shutdown.is_cancelled() {
            if batch.is_empty() {
                // Nothing to overlap with: finish the batch in flight before waiting.
                if let Some(previous) = settling.take() {
                    self.complete(previous, None, &shutdown).await;
                }
                // Never sleep past the next statistics report on an idle queue.
                let until_report = next_report.saturating_duration_since(Instant::now());
                let wait = self.batch_timeout.min(until_report).max(MIN_CLAIM_WAIT);
                batch = self.claim(wait, &shutdown).await;
            }
            if !batch.is_empty() {
                self.batches_claimed += 1;
                if self.hold_batch == Some(self.batches_claimed) {
                    // The previous batch is settled first, so the held one is the only batch
                    // leased and the last one in the log. Returns at shutdown, ending the loop.
                    if let Some(previous) = settling.take() {
                        self.complete(previous, None, &shutdown).await;
                    }
                    let held = self.decide(std::mem::take(&mut batch));
                    self.hold_until_stopped(held, &shutdown).await;
                    continue;
                }
                // The next batch is claimed before this one is decided, so its answer is back
                // when it is needed, while the backend works on the previous settle. Not with
                // DAY15_BATCH_LINGER_MS, which would not apply to a batch claimed this way.
                let mut next = if self.batch_linger.is_zero() {
                    Some(self.send_claim(&shutdown).await)
                } else {
                    None
                };
                let decided = self.decide(std::mem::take(&mut batch));
                if let Some(previous) = settling.take() {
                    self.complete(previous, next.as_mut(), &shutdown).await;
                }
                let in_flight = settling.insert(self.send_settle(decided).await);
                if let Some(next) = next {
                    batch = self.claimed(next, &mut in_flight.call).await;
                }
            }
            if self.figures.due() {
                self.figures.flush(self.backend.as_ref()).await;
            }
            if Instant::now() >= next_report {
                self.refresh_dashboard_counts();
                self.stats.log();
                next_report = Instant::now() + STATS_INTERVAL;
            }
        }
        // Leased already: finish them now rather than leave them to their lease.
        if let Some(previous) = settling.take() {
            self.complete(previous, None, &shutdown).await;
        }
        if !batch.is_empty() {
            let last = self.send_settle(self.decide(batch)).await;
            self.complete(last, None, &shutdown).await;
        }
        self.figures.flush(self.backend.as_ref()).await;
        if let Some(dashboard) = self.dashboard.take() {
            self.stats.dashboard = Some(dashboard.close(DASHBOARD_GRACE).await);
        }
        tracing::info!("Consumer {} stopped", self.name);
        self.stats.log();
        self.stats
    }

    fn refresh_dashboard_counts(&mut self) {
        if let Some(d) = &self.dashboard {
            self.stats.dashboard = Some(d.counts());
        }
    }

    /// Claims one batch, lingering for a fuller one when configured. Returns empty on an
    /// idle queue, at shutdown, or after a failed call (having waited out its backoff).
    async fn claim(&mut self, wait: Duration, shutdown: &CancellationToken) -> Vec<Delivery> {
        let mut batch = match self.timed_claim(self.batch_size, wait, shutdown).await {
            Ok(batch) => {
                self.health.succeeded();
                batch
            }
            Err(e) => {
                let pause = self.health.failed(&e);
                // Shutdown wins over the pause; nothing is held while pausing.
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => {}
                }
                return Vec::new();
            }
        };
        if batch.is_empty() || batch.len() >= self.batch_size || self.batch_linger.is_zero() {
            return batch;
        }
        let deadline = Instant::now() + self.batch_linger;
        while batch.len() < self.batch_size && !shutdown.is_cancelled() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self
                .timed_claim(self.batch_size - batch.len(), left, shutdown)
                .await
            {
                Ok(more) if more.is_empty() => break,
                Ok(more) => batch.extend(more),
                Err(e) => {
                    // Process what is already leased rather than wait on an outage.
                    self.health.failed(&e);
                    break;
                }
            }
        }
        batch
    }

    /// One claim, counted in this consumer's backend-call figures when [`claim_is_timed`].
    async fn timed_claim(
        &mut self,
        max: usize,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        let started = Instant::now();
        let answer = self
            .backend
            .claim_batch(&self.name, max, wait, shutdown)
            .await;
        self.note_claim(wait, started.elapsed(), &answer);
        answer
    }

    fn note_claim(
        &mut self,
        wait: Duration,
        took: Duration,
        answer: &BackendResult<Vec<Delivery>>,
    ) {
        if claim_is_timed(wait, answer) {
            self.figures.backend_call(CLAIM, took, answer.is_ok());
        }
    }

    /// Decides every event of the batch: pure computation, nothing is waited on.
    fn decide(&self, batch: Vec<Delivery>) -> Decided {
        let claimed_at = Instant::now();
        let logged = tracing::enabled!(tracing::Level::INFO) && self.batch_lines.admit();
        if logged {
            tracing::info!("Processing batch of {} events", batch.len());
        }
        let mut deltas = self
            .dashboard
            .as_ref()
            .map(|_| BatchDeltas::new(&self.name));
        let mut settlements = Vec::with_capacity(batch.len());
        let mut outcomes = Vec::with_capacity(batch.len());
        for delivery in batch {
            let decision = decide(delivery, &self.settings, Utc::now());
            if let Some(deltas) = deltas.as_mut() {
                let effect = match &decision.settlement {
                    Settlement::Ack { effect, .. } => effect.as_ref(),
                    _ => None,
                };
                deltas.record(&decision.outcome, effect);
            }
            outcomes.push(decision.outcome);
            settlements.push(decision.settlement);
        }
        Decided {
            settlements,
            outcomes,
            deltas,
            claimed_at,
            logged,
        }
    }

    /// Sends a claim for the next batch, without waiting on an empty queue.
    async fn send_claim(&self, shutdown: &CancellationToken) -> Sent<BackendResult<Vec<Delivery>>> {
        let backend = Arc::clone(&self.backend);
        let (name, max, shutdown) = (self.name.clone(), self.batch_size, shutdown.clone());
        Sent::send(async move {
            backend
                .claim_batch(&name, max, Duration::ZERO, &shutdown)
                .await
        })
        .await
    }

    /// The batch a [`Self::send_claim`] got, noting the answer of `settling` (the settle in
    /// flight) meanwhile. A failure is noted (the loop's next waiting claim backs off) and
    /// gives an empty batch.
    async fn claimed(
        &mut self,
        claim: Sent<BackendResult<Vec<Delivery>>>,
        settling: &mut Sent<BackendResult<()>>,
    ) -> Vec<Delivery> {
        let (answer, took) = claim.answer_beside(Some(settling)).await;
        self.note_claim(Duration::ZERO, took, &answer);
        match answer {
            Ok(batch) => batch,
            Err(e) => {
                self.health.failed(&e);
                Vec::new()
            }
        }
    }

    /// Sends a decided batch's settle call (one backend call for the whole batch).
    async fn send_settle(&self, decided: Decided) -> Settling {
        let backend = Arc::clone(&self.backend);
        // The copy is what a failed call gives back: `settle` consumes its input.
        let settlements = decided.settlements.clone();
        let call = Sent::send(async move { backend.settle(settlements).await }).await;
        Settling { call, decided }
    }

    /// Fault injection: keeps a decided batch unsettled until `shutdown` fires, then leaves
    /// it unsettled. Its events come back after their lease, exactly as after a crash.
    async fn hold_until_stopped(&mut self, decided: Decided, shutdown: &CancellationToken) {
        let events = decided.outcomes.len();
        tracing::warn!(
            "Fault injection: holding batch {} of {events} events before settling it until stopped",
            self.batches_claimed
        );
        shutdown.cancelled().await;
        self.stats.unsettled_batches += 1;
        tracing::warn!(
            "Batch of {events} events left unsettled at shutdown: it will be delivered again after the visibility timeout"
        );
    }

    /// Waits for a batch's settle (retrying it through an outage), then counts and reports.
    /// `claiming` (the next batch's claim, when in flight) has its answer noted meanwhile.
    async fn complete(
        &mut self,
        settling: Settling,
        claiming: Option<&mut Sent<BackendResult<Vec<Delivery>>>>,
        shutdown: &CancellationToken,
    ) {
        let Settling { call, decided } = settling;
        let (first_try, took) = call.answer_beside(claiming).await;
        self.figures.backend_call(SETTLE, took, first_try.is_ok());
        let settled = match first_try {
            Ok(()) => {
                self.health.succeeded();
                true
            }
            Err(e) => {
                let pause = self.health.failed(&e);
                self.settle_again(decided.settlements, shutdown, pause)
                    .await
            }
        };
        let outcomes = decided.outcomes;
        if !settled {
            self.stats.unsettled_batches += 1;
            tracing::warn!(
                "Batch of {} events left unsettled at shutdown: it will be delivered again after the visibility timeout",
                outcomes.len()
            );
            return;
        }

        self.stats.batches += 1;
        self.figures
            .batch(outcomes.len(), decided.claimed_at.elapsed());
        let mut success = 0;
        for outcome in &outcomes {
            self.stats.record(outcome);
            if outcome.is_success() {
                success += 1;
            }
        }
        if decided.logged {
            tracing::info!(
                "Batch complete: {success} success, {} failed",
                outcomes.len() - success
            );
        }
        if let (Some(dashboard), Some(deltas)) = (self.dashboard.as_mut(), decided.deltas) {
            dashboard.publish(deltas.finish(pipeline_core::event::format_received_at(Utc::now())));
        }
    }

    /// Retries a settle whose first try failed (`pause` is the backoff that failure earned),
    /// through an outage. Returns false only when shutdown was requested and the last attempts
    /// failed too.
    async fn settle_again(
        &mut self,
        settlements: Vec<Settlement>,
        shutdown: &CancellationToken,
        mut pause: Duration,
    ) -> bool {
        let mut final_attempts = 0;
        loop {
            if shutdown.is_cancelled() {
                final_attempts += 1;
                if final_attempts > FINAL_SETTLE_ATTEMPTS {
                    return false;
                }
                tokio::time::sleep(FINAL_SETTLE_PAUSE).await;
            } else {
                // Shutdown cuts the pause short; the loop then makes its last tries.
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            // The copy is what a failed call gives back: `settle` consumes its input.
            let started = Instant::now();
            let answer = self.backend.settle(settlements.clone()).await;
            self.figures
                .backend_call(SETTLE, started.elapsed(), answer.is_ok());
            match answer {
                Ok(()) => {
                    self.health.succeeded();
                    return true;
                }
                Err(e) => pause = self.health.failed(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_claims_that_came_back_empty_after_waiting_go_untimed() {
        let waited = Duration::from_secs(1);
        let refused: BackendResult<Vec<Delivery>> =
            Err(BackendError::Unavailable("connection refused".into()));
        assert!(!claim_is_timed(waited, &Ok(Vec::new())));
        assert!(claim_is_timed(Duration::ZERO, &Ok(Vec::new())));
        assert!(claim_is_timed(waited, &refused));
        assert!(claim_is_timed(Duration::ZERO, &refused));
    }
}
