//! The load path: each worker takes the next request index, waits for its slot (open loop),
//! sends and tallies the answer in its own [`Tally`]; only the few [`LiveCounters`] the
//! progress display reads are shared.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::Url;
use tokio_util::sync::CancellationToken;

use super::LoadPlan;
use crate::client::{error_kind, BatchAnswer, WebhookClient, JSON};
use crate::events::EventFactory;

/// Highest latency the histograms hold (longer ones are clamped), in microseconds.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;

/// Counters the progress display reads while workers run.
#[derive(Default)]
pub(super) struct LiveCounters {
    pub(super) requests: AtomicU64,
    pub(super) events: AtomicU64,
    pub(super) errors: AtomicU64,
}

/// What all workers share.
pub(super) struct Shared {
    pub(super) plan: LoadPlan,
    pub(super) url: Url,
    pub(super) started: Instant,
    /// No request is scheduled at or after this instant.
    pub(super) end: Option<Instant>,
    /// Index of the next request to send.
    pub(super) next_request: AtomicU64,
    pub(super) live: LiveCounters,
    /// Fires on Ctrl+C: workers stop taking work and drop requests in flight.
    pub(super) cancel: CancellationToken,
}

/// One worker's figures, merged at the end.
pub(super) struct Tally {
    /// Latency of every answered request, in microseconds.
    pub(super) latency: Histogram<u64>,
    pub(super) statuses: BTreeMap<u16, u64>,
    pub(super) transport_errors: BTreeMap<&'static str, u64>,
    pub(super) requests: u64,
    pub(super) events_sent: u64,
    pub(super) events_accepted: u64,
    pub(super) duplicates: u64,
    /// Events a batch answer reported as invalid.
    pub(super) batch_errors: u64,
    /// Worst delay between a request's scheduled and actual send time (open loop).
    pub(super) max_lag: Duration,
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            // Bounds are constants within hdrhistogram's limits.
            latency: Histogram::new_with_bounds(1, HISTOGRAM_MAX_MICROS, 3)
                .unwrap_or_else(|e| unreachable!("histogram bounds: {e}")),
            statuses: BTreeMap::new(),
            transport_errors: BTreeMap::new(),
            requests: 0,
            events_sent: 0,
            events_accepted: 0,
            duplicates: 0,
            batch_errors: 0,
            max_lag: Duration::ZERO,
        }
    }

    pub(super) fn merge(&mut self, other: Tally) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.transport_errors {
            *self.transport_errors.entry(k).or_default() += v;
        }
        self.requests += other.requests;
        self.events_sent += other.events_sent;
        self.events_accepted += other.events_accepted;
        self.duplicates += other.duplicates;
        self.batch_errors += other.batch_errors;
        self.max_lag = self.max_lag.max(other.max_lag);
    }
}

pub(super) async fn worker(
    shared: Arc<Shared>,
    client: WebhookClient,
    mut factory: EventFactory,
) -> Tally {
    let plan = &shared.plan;
    let interval = plan.request_interval();
    let max_requests = plan.max_requests();
    let batch = plan.batch_size > 1;
    let mut tally = Tally::new();
    loop {
        let k = shared.next_request.fetch_add(1, Ordering::Relaxed);
        if max_requests.is_some_and(|max| k >= max) {
            break;
        }
        let scheduled = match interval {
            Some(every) => shared.started + Duration::from_secs_f64(every * k as f64),
            None => Instant::now(),
        };
        if shared.end.is_some_and(|end| scheduled >= end) {
            break;
        }
        // Where this request's latency starts. Behind schedule, the scheduled time: the
        // wait was caused by earlier slow answers and must count. Ahead of it, the actual
        // send: the timer wakes up to a millisecond late, and that lateness is the
        // generator's, not the webhook's.
        let mut measured_from = scheduled;
        if scheduled > Instant::now() {
            // On cancellation the request that was waiting for its slot is never sent.
            tokio::select! {
                _ = shared.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(scheduled.into()) => {}
            }
            measured_from = Instant::now();
        } else if shared.cancel.is_cancelled() {
            break;
        }
        let events = plan.events_in_request(k);
        let body = if batch {
            factory.batch_body(events)
        } else {
            factory.random_event().to_bytes()
        };
        let sent_at = Instant::now();
        tally.max_lag = tally
            .max_lag
            .max(sent_at.saturating_duration_since(scheduled));
        let request = client.post_request(shared.url.clone(), body, JSON).send();
        let answer = async {
            let response = request.await?;
            let status = response.status().as_u16();
            // Reading the whole body hands the connection back to the pool.
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        // On cancellation the request in flight is dropped and not counted.
        let result = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            result = answer => result,
        };
        let latency = measured_from.elapsed();
        tally.requests += 1;
        tally.events_sent += events as u64;
        shared.live.requests.fetch_add(1, Ordering::Relaxed);
        shared
            .live
            .events
            .fetch_add(events as u64, Ordering::Relaxed);
        match result {
            Ok((status, body)) => {
                tally
                    .latency
                    .saturating_record(latency.as_micros().max(1) as u64);
                *tally.statuses.entry(status).or_default() += 1;
                match (batch, status) {
                    (false, 202) => tally.events_accepted += 1,
                    (false, 200) => tally.duplicates += 1,
                    (true, 202) => {
                        let answer: BatchAnswer = serde_json::from_slice(&body).unwrap_or_default();
                        tally.events_accepted += answer.results.accepted;
                        tally.duplicates += answer.results.duplicates;
                        tally.batch_errors += answer.results.errors;
                    }
                    _ => {}
                }
                if !(200..300).contains(&status) {
                    shared.live.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                *tally.transport_errors.entry(error_kind(&e)).or_default() += 1;
                shared.live.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tally
}
