//! The webhook's own counters (`received`, `rejected`) and ingest latencies, kept locally and
//! flushed to the backend in the background.
//!
//! Writing a counter to the backend on every request would add a round trip to the hot path,
//! so requests only touch atomics here and a task calls [`Backend::record`] every
//! [`FLUSH_INTERVAL`] and at shutdown. Readers (`/stats`, `/metrics`) add what is not flushed
//! yet, under the same lock the flush holds across its backend call, so a figure is never
//! counted twice nor missed while a flush is in flight: one webhook always reports exact
//! figures, and several webhooks converge within one interval.
//!
//! Counting rule: `received = accepted + duplicates + rejected`. Requests refused for capacity
//! (429) or availability (503) are not counted: nothing was judged, and the sender retries them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pipeline_core::analytics::{counters, maps, Increment};
use pipeline_core::latency;

/// How often local counts are written to the backend.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(250);

/// Histogram buckets kept locally; [`latency::bucket_of`] of any latency up to hours fits.
const BUCKETS: usize = 512;

/// Counts not yet written to the backend.
pub struct LocalMetrics {
    received: AtomicU64,
    rejected: AtomicU64,
    /// Ingest latency histogram, indexed by [`latency::bucket_of`] (the last bucket also holds
    /// anything longer).
    ingest_buckets: Box<[AtomicU64]>,
    /// Held by a flush across its backend call and by readers across their backend read, so a
    /// reader sees each count exactly once: either in the backend or here.
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    /// Fired by the first count after the counters were empty, so the flush task can rest
    /// while nothing is counted.
    pub(crate) counted: tokio::sync::Notify,
}

/// A set of counts taken out of [`LocalMetrics`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    pub received: u64,
    pub rejected: u64,
    /// (bucket, count) of ingest latencies, non-zero only.
    pub ingest: Vec<(usize, u64)>,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        self.received == 0 && self.rejected == 0 && self.ingest.is_empty()
    }

    /// As backend increments.
    pub fn increments(&self) -> Vec<Increment> {
        let mut out = Vec::with_capacity(2 + self.ingest.len());
        if self.received > 0 {
            out.push(Increment::new(
                maps::COUNTERS,
                counters::RECEIVED,
                self.received as f64,
            ));
        }
        if self.rejected > 0 {
            out.push(Increment::new(
                maps::COUNTERS,
                counters::REJECTED,
                self.rejected as f64,
            ));
        }
        for &(bucket, n) in &self.ingest {
            out.push(Increment::new(
                maps::LATENCY_INGEST,
                bucket.to_string(),
                n as f64,
            ));
        }
        out
    }
}

impl Default for LocalMetrics {
    fn default() -> Self {
        LocalMetrics {
            received: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            ingest_buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            flush_lock: tokio::sync::Mutex::new(()),
            counted: tokio::sync::Notify::new(),
        }
    }
}

impl LocalMetrics {
    /// `n` events judged and let through (accepted or duplicate).
    ///
    /// Every count goes through here, so its step up from zero is the one moment the flush
    /// task needs to hear about (a stored permit if it is not waiting yet).
    pub fn received(&self, n: u64) {
        if self.received.fetch_add(n, Ordering::Relaxed) == 0 && n > 0 {
            self.counted.notify_one();
        }
    }

    /// `n` events judged and refused; they count as received too.
    pub fn rejected(&self, n: u64) {
        self.received(n);
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether nothing waits to be flushed: every request counts `received`, and counts put
    /// back after a failed flush include it.
    pub fn nothing_pending(&self) -> bool {
        self.received.load(Ordering::Relaxed) == 0
    }

    /// One request's ingest latency.
    pub fn ingest_latency(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = (latency::bucket_of(micros) as usize).min(BUCKETS - 1);
        self.ingest_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    fn collect(&self, read: impl Fn(&AtomicU64) -> u64) -> Counts {
        Counts {
            received: read(&self.received),
            rejected: read(&self.rejected),
            ingest: self
                .ingest_buckets
                .iter()
                .enumerate()
                .filter_map(|(b, c)| Some((b, read(c))).filter(|(_, n)| *n > 0))
                .collect(),
        }
    }

    /// What is not flushed yet, left in place.
    pub fn peek(&self) -> Counts {
        self.collect(|c| c.load(Ordering::Relaxed))
    }

    /// What is not flushed yet, taken out (zeroed here).
    pub fn take(&self) -> Counts {
        self.collect(|c| c.swap(0, Ordering::Relaxed))
    }

    /// Puts back counts whose flush failed, so they are written by a later one.
    pub fn restore(&self, counts: &Counts) {
        self.received.fetch_add(counts.received, Ordering::Relaxed);
        self.rejected.fetch_add(counts.rejected, Ordering::Relaxed);
        for &(b, n) in &counts.ingest {
            self.ingest_buckets[b].fetch_add(n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_counts_are_zeroed_and_restored_counts_come_back() {
        let m = LocalMetrics::default();
        m.received(2);
        m.rejected(1);
        m.ingest_latency(Duration::from_micros(400));
        m.ingest_latency(Duration::from_secs(100_000));
        let taken = m.take();
        assert_eq!(taken.received, 3);
        assert_eq!(taken.rejected, 1);
        assert_eq!(taken.ingest.iter().map(|x| x.1).sum::<u64>(), 2);
        assert!(m.peek().is_empty());
        m.restore(&taken);
        assert_eq!(m.peek(), taken);
        let incs = taken.increments();
        assert_eq!(incs[0].field, counters::RECEIVED);
        assert_eq!(incs[0].by, 3.0);
    }
}
