//! Figures of this webhook process alone, kept in its memory for `/metrics`: HTTP requests by
//! route and status, backend calls by operation, whether the backend last answered, and the
//! process's CPU, memory and file descriptors.
//!
//! Unlike the pipeline figures these are per process by nature (each webhook serves its own
//! requests), so they are not written to the backend; several webhooks are several scrape
//! targets. Label values are bounded: routes are the router's templates (or `other`),
//! operations a fixed list.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pipeline_core::process::ProcessFigures;

/// Upper bounds (seconds) of the exported latency histogram buckets.
pub(crate) const BOUNDS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A histogram over [`BOUNDS`]; `buckets[i]` counts observations in `(BOUNDS[i-1], BOUNDS[i]]`
/// (not cumulative), anything above the last bound is only in `count`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Histogram {
    pub buckets: [u64; BOUNDS.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    /// Adds `n` observations of `seconds`.
    pub fn observe_n(&mut self, seconds: f64, n: u64) {
        if let Some(i) = BOUNDS.iter().position(|b| seconds <= *b) {
            self.buckets[i] = self.buckets[i].saturating_add(n);
        }
        self.count = self.count.saturating_add(n);
        self.sum += seconds * n as f64;
    }
}

/// Route label of requests no route matched (404s): one value, whatever the path.
pub(crate) const OTHER_ROUTE: &str = "other";

/// This process's own figures; cheap to update (one short lock per request).
#[derive(Default)]
pub(crate) struct OwnMetrics {
    /// (route, status) -> requests answered.
    http_requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route -> request durations.
    http_durations: Mutex<BTreeMap<String, Histogram>>,
    /// operation -> (durations, errors).
    backend_calls: Mutex<BTreeMap<&'static str, (Histogram, u64)>>,
    /// Whether the last backend call succeeded (false until one did).
    backend_up: AtomicBool,
}

/// A copy of [`OwnMetrics`] for rendering.
#[derive(Debug, Clone, Default)]
pub(crate) struct OwnSnapshot {
    pub http_requests: BTreeMap<(String, u16), u64>,
    pub http_durations: BTreeMap<String, Histogram>,
    pub backend_calls: BTreeMap<&'static str, (Histogram, u64)>,
    pub backend_up: bool,
    pub process: Option<ProcessFigures>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay consistent even if a holder panicked: every update is one insertion.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl OwnMetrics {
    /// Counts one answered request.
    pub fn record_request(&self, route: &str, status: u16, elapsed: Duration) {
        *lock(&self.http_requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        lock(&self.http_durations)
            .entry(route.to_string())
            .or_default()
            .observe_n(elapsed.as_secs_f64(), 1);
    }

    /// Counts one backend call of `operation` and remembers whether the backend answered.
    pub fn record_backend_call(&self, operation: &'static str, elapsed: Duration, ok: bool) {
        let mut calls = lock(&self.backend_calls);
        let (histogram, errors) = calls.entry(operation).or_default();
        histogram.observe_n(elapsed.as_secs_f64(), 1);
        if !ok {
            *errors += 1;
        }
        self.backend_up.store(ok, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> OwnSnapshot {
        OwnSnapshot {
            http_requests: lock(&self.http_requests).clone(),
            http_durations: lock(&self.http_durations).clone(),
            backend_calls: lock(&self.backend_calls).clone(),
            backend_up: self.backend_up.load(Ordering::Relaxed),
            process: ProcessFigures::read(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_up_follows_the_last_call() {
        let own = OwnMetrics::default();
        assert!(!own.snapshot().backend_up);
        own.record_backend_call("ping", Duration::from_millis(1), true);
        assert!(own.snapshot().backend_up);
        own.record_backend_call("enqueue", Duration::from_millis(1), false);
        let snapshot = own.snapshot();
        assert!(!snapshot.backend_up);
        assert_eq!(snapshot.backend_calls["enqueue"].1, 1);
        assert_eq!(snapshot.backend_calls["ping"].1, 0);
    }
}
