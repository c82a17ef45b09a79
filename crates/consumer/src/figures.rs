//! This consumer's batch figures (sizes, durations, last progress), its own backend calls
//! (durations and errors of `claim` and `settle`) and process figures (resident memory, open
//! descriptors, CPU seconds), written to the backend about once a second so the webhook's
//! `/metrics` can export them per consumer.
//!
//! Batches and backend calls only touch local sums; one [`Backend::record`] call carries them. The maps can only
//! add, so the gauges (last-progress second, process figures) are kept by adding the
//! difference to the stored values, which are read once at start and again after any failed
//! write (a failed call may still have been applied, so the stored values are then unknown).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pipeline_core::analytics::{
    consumer_process, maps, Increment, StoredMetrics, CONSUMER_BATCH_SIZE_BOUNDS, LAST_PROGRESS,
};
use pipeline_core::backend::Backend;
use pipeline_core::latency;
use pipeline_core::process::ProcessFigures;

/// How often the sums are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often the process gauges (memory, open files, CPU) are written while the consumer has
/// nothing else to write.
const IDLE_FLUSH_INTERVAL: Duration = Duration::from_secs(15);
/// Longest a write (or the read of the stored progress) may take: the batch loop waits on it.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed write, how long until the next try, so an outage costs the loop little.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Fields of the process map, in the order of [`process_values`].
const PROCESS_FIELDS: [&str; 3] = [
    consumer_process::RESIDENT_MEMORY_BYTES,
    consumer_process::OPEN_FDS,
    consumer_process::CPU_SECONDS,
];

fn process_values(p: &ProcessFigures) -> [f64; 3] {
    [
        p.resident_memory_bytes as f64,
        p.open_fds as f64,
        p.cpu_seconds,
    ]
}

/// The gauges as the backend holds them for this consumer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stored {
    progress: f64,
    /// In [`PROCESS_FIELDS`] order.
    process: [f64; 3],
}

impl Stored {
    fn of(m: &StoredMetrics, name: &str) -> Self {
        let progress = m.map(&format!("{}{}", maps::CONSUMER_PROGRESS_PREFIX, name));
        let process = m.map(&format!("{}{}", maps::CONSUMER_PROCESS_PREFIX, name));
        Stored {
            progress: progress.get(LAST_PROGRESS).copied().unwrap_or(0.0),
            process: PROCESS_FIELDS.map(|f| process.get(f).copied().unwrap_or(0.0)),
        }
    }
}

/// One operation's backend calls not written yet.
#[derive(Debug, Default)]
struct CallSums {
    /// Latency bucket -> calls.
    durations: BTreeMap<u32, u64>,
    errors: u64,
}

/// Sums not written yet.
pub struct BatchFigures {
    name: String,
    /// Batch-size bucket (its bound, `+Inf` beyond) -> batches.
    sizes: BTreeMap<String, u64>,
    /// Latency bucket -> batches.
    durations: BTreeMap<u32, u64>,
    /// Operation (a `pipeline_core::analytics::consumer_calls` name) -> its calls.
    calls: BTreeMap<&'static str, CallSums>,
    /// Unix second of the last settled batch, when not written yet.
    progress: Option<i64>,
    /// The stored gauges; `None` = unknown, read before the next write.
    stored: Option<Stored>,
    next_flush: Instant,
    /// When the process gauges were last written while nothing else was to be written.
    idle_write: Option<Instant>,
}

impl BatchFigures {
    pub fn new(name: &str) -> Self {
        BatchFigures {
            name: name.to_string(),
            sizes: BTreeMap::new(),
            durations: BTreeMap::new(),
            calls: BTreeMap::new(),
            progress: None,
            stored: None,
            next_flush: Instant::now() + FLUSH_INTERVAL,
            idle_write: None,
        }
    }

    /// Counts one settled batch of `size` events that took `took`, claimed to settled.
    pub fn batch(&mut self, size: usize, took: Duration) {
        let size = size as u64;
        let bucket = CONSUMER_BATCH_SIZE_BOUNDS
            .iter()
            .find(|b| size <= **b)
            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        *self.sizes.entry(bucket).or_default() += 1;
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        *self
            .durations
            .entry(latency::bucket_of(micros))
            .or_default() += 1;
        self.progress = Some(chrono::Utc::now().timestamp());
    }

    /// Counts one backend call of `operation` (a `consumer_calls` name) that took `took`;
    /// `ok` is false when it failed. Which calls are worth timing is the caller's choice.
    pub fn backend_call(&mut self, operation: &'static str, took: Duration, ok: bool) {
        let sums = self.calls.entry(operation).or_default();
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        *sums
            .durations
            .entry(latency::bucket_of(micros))
            .or_default() += 1;
        if !ok {
            sums.errors += 1;
        }
    }

    /// Whether a flush is due.
    pub fn due(&self) -> bool {
        Instant::now() >= self.next_flush
    }

    /// Writes the sums and this process's current figures; on failure the sums are kept for
    /// the next attempt (never lost, at worst counted twice when a timed-out call was applied
    /// after all).
    pub async fn flush(&mut self, backend: &dyn Backend) {
        self.next_flush = Instant::now() + FLUSH_INTERVAL;
        let idle = self.sizes.is_empty() && self.calls.is_empty() && self.progress.is_none();
        // An idle consumer's gauges barely move: written every IDLE_FLUSH_INTERVAL, not every
        // second, so a pipeline at rest does not keep its store busy.
        if idle
            && self
                .idle_write
                .is_some_and(|at| at.elapsed() < IDLE_FLUSH_INTERVAL)
        {
            return;
        }
        let process = ProcessFigures::read();
        if idle && process.is_none() {
            return;
        }
        if idle {
            self.idle_write = Some(Instant::now());
        }
        let stored = match self.stored {
            Some(stored) => stored,
            None => match tokio::time::timeout(CALL_TIMEOUT, backend.metrics()).await {
                Ok(Ok(m)) => *self.stored.insert(Stored::of(&m, &self.name)),
                _ => {
                    self.next_flush = Instant::now() + RETRY_AFTER_FAILURE;
                    return;
                }
            },
        };
        let increments = self.increments(&stored, process.as_ref());
        if increments.is_empty() {
            return;
        }
        let written = matches!(
            tokio::time::timeout(CALL_TIMEOUT, backend.record(increments)).await,
            Ok(Ok(()))
        );
        if written {
            self.sizes.clear();
            self.durations.clear();
            self.calls.clear();
            let mut now = stored;
            if let Some(at) = self.progress.take() {
                now.progress = at as f64;
            }
            if let Some(p) = &process {
                now.process = process_values(p);
            }
            self.stored = Some(now);
        } else {
            self.stored = None;
            self.next_flush = Instant::now() + RETRY_AFTER_FAILURE;
            tracing::debug!(
                "Consumer {}: batch figures not written, kept for later",
                self.name
            );
        }
    }

    fn increments(&self, stored: &Stored, process: Option<&ProcessFigures>) -> Vec<Increment> {
        let sizes = format!("{}{}", maps::CONSUMER_BATCH_SIZE_PREFIX, self.name);
        let durations = format!("{}{}", maps::CONSUMER_BATCH_DURATION_PREFIX, self.name);
        let mut out: Vec<Increment> = self
            .sizes
            .iter()
            .map(|(bucket, n)| Increment::new(&sizes, bucket.clone(), *n as f64))
            .chain(
                self.durations
                    .iter()
                    .map(|(bucket, n)| Increment::new(&durations, bucket.to_string(), *n as f64)),
            )
            .collect();
        let errors = format!("{}{}", maps::CONSUMER_CALL_ERRORS_PREFIX, self.name);
        for (operation, sums) in &self.calls {
            let durations = maps::consumer_call_duration(operation, &self.name);
            out.extend(
                sums.durations
                    .iter()
                    .map(|(bucket, n)| Increment::new(&durations, bucket.to_string(), *n as f64)),
            );
            if sums.errors > 0 {
                out.push(Increment::new(&errors, *operation, sums.errors as f64));
            }
        }
        if let Some(at) = self.progress {
            let progress = format!("{}{}", maps::CONSUMER_PROGRESS_PREFIX, self.name);
            out.push(Increment::new(
                &progress,
                LAST_PROGRESS,
                at as f64 - stored.progress,
            ));
        }
        if let Some(p) = process {
            let map = format!("{}{}", maps::CONSUMER_PROCESS_PREFIX, self.name);
            for ((field, now), before) in PROCESS_FIELDS
                .iter()
                .zip(process_values(p))
                .zip(stored.process)
            {
                if now != before {
                    out.push(Increment::new(&map, *field, now - before));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_core::backend::memory::MemoryBackend;
    use pipeline_core::backend::BackendOptions;

    #[tokio::test]
    async fn figures_reach_the_backend_and_progress_is_the_last_second() {
        let backend = MemoryBackend::new(BackendOptions::default());
        let mut f = BatchFigures::new("consumer-1");
        f.batch(3, Duration::from_millis(4));
        f.batch(100, Duration::from_millis(40));
        f.batch(1_000_000, Duration::from_millis(40));
        f.flush(&backend).await;
        f.batch(1, Duration::from_millis(1));
        f.flush(&backend).await;
        let m = backend.metrics().await.unwrap();
        let sizes = m.map("consumer_batch_size:consumer-1");
        assert_eq!(sizes.get("5"), Some(&1.0));
        assert_eq!(sizes.get("100"), Some(&1.0));
        assert_eq!(sizes.get("+Inf"), Some(&1.0));
        assert_eq!(sizes.get("1"), Some(&1.0));
        let durations: f64 = m
            .map("consumer_batch_duration_us:consumer-1")
            .values()
            .sum();
        assert_eq!(durations, 4.0);
        let now = chrono::Utc::now().timestamp() as f64;
        let stored = Stored::of(&m, "consumer-1");
        let last = stored.progress;
        assert!((now - last).abs() <= 2.0, "{last} vs {now}");
    }

    #[tokio::test]
    async fn backend_calls_reach_the_backend_per_operation_with_their_errors() {
        use pipeline_core::analytics::consumer_calls::{CLAIM, SETTLE};
        let ms = Duration::from_millis;
        let backend = MemoryBackend::new(BackendOptions::default());
        let mut f = BatchFigures::new("consumer-1");
        f.backend_call(CLAIM, ms(2), true);
        f.backend_call(SETTLE, ms(3), true);
        f.backend_call(SETTLE, ms(900), false);
        f.flush(&backend).await;
        f.backend_call(SETTLE, ms(1), true);
        f.flush(&backend).await;
        let m = backend.metrics().await.unwrap();
        let calls = |operation| -> f64 {
            m.map(&maps::consumer_call_duration(operation, "consumer-1"))
                .values()
                .sum()
        };
        assert_eq!((calls(CLAIM), calls(SETTLE)), (1.0, 3.0));
        let errors = m.map("consumer_call_errors:consumer-1");
        assert_eq!(errors.get(SETTLE), Some(&1.0));
        assert_eq!(errors.get(CLAIM), None, "no failed claim");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn process_figures_are_the_last_reading_not_a_sum() {
        let backend = MemoryBackend::new(BackendOptions::default());
        // A previous run of this consumer left its figures behind.
        backend
            .record(vec![Increment::new(
                "consumer_process:consumer-1",
                consumer_process::RESIDENT_MEMORY_BYTES,
                1e12,
            )])
            .await
            .unwrap();
        let mut f = BatchFigures::new("consumer-1");
        f.flush(&backend).await;
        f.flush(&backend).await;
        let m = backend.metrics().await.unwrap();
        let stored = Stored::of(&m, "consumer-1");
        let [rss, fds, cpu] = stored.process;
        let now = ProcessFigures::read().unwrap();
        // Within a factor of two of a fresh reading: neither summed over flushes nor offset
        // by the earlier run's value.
        let expected = now.resident_memory_bytes as f64;
        assert!(
            rss > expected / 2.0 && rss < expected * 2.0,
            "{rss} vs {expected}"
        );
        assert!(fds >= 3.0 && fds < 2.0 * now.open_fds as f64 + 8.0, "{fds}");
        assert!(cpu >= 0.0 && cpu <= now.cpu_seconds, "{cpu}");
    }
}
