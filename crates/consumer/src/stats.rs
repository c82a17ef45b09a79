//! This consumer's own counts, logged as the original's `PROCESSING STATISTICS` block.
//!
//! Pipeline-wide figures live in the backend (`/stats`); these are local to one consumer so
//! an operator can tell consumers apart in the shared log file. Latency percentiles use the
//! same log-scaled buckets as the backend histograms (at most ~2.5% error) so they are cheap
//! to record and agree with `/stats`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pipeline_core::analytics::FailureCounts;
use pipeline_core::latency::{self, bucket_of, Percentiles};

use crate::decide::Outcome;

/// Dashboard delivery counts (best effort: failures are counted, never fail events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DashboardCounts {
    /// Batch documents the dashboard API accepted.
    pub posted: u64,
    /// POSTs that failed (unreachable, timeout, non-2xx).
    pub failed: u64,
    /// Documents dropped because the sender queue was full.
    pub dropped: u64,
}

/// What one consumer did since it started.
#[derive(Debug, Clone)]
pub struct ProcessingStats {
    /// Which consumer these figures belong to.
    pub consumer: String,
    /// Batches claimed and settled.
    pub batches: u64,
    /// Events acked (dry-run acks included).
    pub processed: u64,
    /// Of `processed`, events acked without effect because of DAY15_DRY_RUN.
    pub dry_run: u64,
    /// Failed attempts: scheduled for a retry, or sent to the DLQ (permanent failures and
    /// exhausted retries).
    pub failures: FailureCounts,
    /// Batches whose settle gave up at shutdown; their events come back after the lease.
    pub unsettled_batches: u64,
    /// `None` when dashboard updates are off.
    pub dashboard: Option<DashboardCounts>,
    /// Bucket -> count of `received_at` → processed latencies, as the backend stores them.
    latency_buckets: BTreeMap<String, f64>,
    /// Exact sum, for an exact average.
    latency_sum: Duration,
    latency_count: u64,
    started: Instant,
}

impl ProcessingStats {
    pub fn new(consumer: impl Into<String>) -> Self {
        ProcessingStats {
            consumer: consumer.into(),
            batches: 0,
            processed: 0,
            dry_run: 0,
            failures: FailureCounts::default(),
            unsettled_batches: 0,
            dashboard: None,
            latency_buckets: BTreeMap::new(),
            latency_sum: Duration::ZERO,
            latency_count: 0,
            started: Instant::now(),
        }
    }

    /// Counts one settled event.
    pub fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Processed { latency } => {
                self.processed += 1;
                if let Some(l) = latency {
                    let micros = l.as_micros().min(u64::MAX as u128) as u64;
                    *self
                        .latency_buckets
                        .entry(bucket_of(micros).to_string())
                        .or_insert(0.0) += 1.0;
                    self.latency_sum += *l;
                    self.latency_count += 1;
                }
            }
            Outcome::DryRun => {
                self.processed += 1;
                self.dry_run += 1;
            }
            Outcome::Retrying { .. } | Outcome::DeadLettered { .. } => {
                self.failures.count(outcome.counted())
            }
        }
    }

    /// Time since the consumer started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Percentiles of processing latency (`received_at` → processed).
    pub fn latency(&self) -> Percentiles {
        latency::percentiles(&self.latency_buckets)
    }

    /// Exact mean processing latency in milliseconds (0 before the first event).
    pub fn average_latency_ms(&self) -> f64 {
        if self.latency_count == 0 {
            return 0.0;
        }
        self.latency_sum.as_secs_f64() * 1000.0 / self.latency_count as f64
    }

    /// Processed events per second since start.
    pub fn events_per_second(&self) -> f64 {
        let secs = self.elapsed().as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.processed as f64 / secs
    }

    /// The `PROCESSING STATISTICS` block, one log line per entry so each keeps the log prefix.
    pub fn report_lines(&self) -> Vec<String> {
        let rule = "=".repeat(50);
        let mut lines = vec![
            rule.clone(),
            format!("PROCESSING STATISTICS ({})", self.consumer),
            rule.clone(),
            format!("Batches processed: {}", self.batches),
            format!("Events processed: {}", self.processed),
            format!(
                "Events failed: {} (retried: {}, dead-lettered: {})",
                self.failures.failed, self.failures.retried, self.failures.dead_lettered
            ),
            format!("Average latency: {:.2}ms", self.average_latency_ms()),
            format!("P99 latency: {:.2}ms", self.latency().p99_ms),
            format!(
                "Throughput: {:.1} events/s over {:.1}s",
                self.events_per_second(),
                self.elapsed().as_secs_f64()
            ),
        ];
        if self.dry_run > 0 {
            lines.push(format!(
                "Dry run: {} events acknowledged without analytics",
                self.dry_run
            ));
        }
        if self.unsettled_batches > 0 {
            lines.push(format!(
                "Unsettled batches: {} (redelivered after the visibility timeout)",
                self.unsettled_batches
            ));
        }
        if let Some(d) = self.dashboard {
            lines.push(format!(
                "Dashboard updates: {} sent, {} failed, {} dropped",
                d.posted, d.failed, d.dropped
            ));
        }
        lines.push(rule);
        lines
    }

    /// Logs the block at INFO.
    pub fn log(&self) {
        for line in self.report_lines() {
            tracing::info!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_and_latency_summarised() {
        let mut s = ProcessingStats::new("c1");
        for ms in [1, 2, 3] {
            s.record(&Outcome::Processed {
                latency: Some(Duration::from_millis(ms)),
            });
        }
        s.record(&Outcome::Retrying {
            delay: Duration::from_secs(1),
        });
        s.record(&Outcome::DeadLettered {
            reason: pipeline_core::backend::FailureReason::Permanent,
        });
        assert_eq!(
            (
                s.processed,
                s.failures.failed,
                s.failures.retried,
                s.failures.dead_lettered
            ),
            (3, 2, 1, 1)
        );
        assert!((s.average_latency_ms() - 2.0).abs() < 1e-9);
        assert!((s.latency().p99_ms - 3.0).abs() < 0.1);
        let text = s.report_lines().join("\n");
        assert!(text.contains("PROCESSING STATISTICS (c1)"), "{text}");
        assert!(text.contains("Events failed: 2 (retried: 1, dead-lettered: 1)"));
    }
}
