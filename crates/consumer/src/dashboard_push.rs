//! Optional push of each batch's metric deltas to an external dashboard API
//! (DAY15_DASHBOARD_UPDATE_ENABLED).
//!
//! Best effort by design: a slow or dead dashboard must never slow or fail event processing.
//! The batch loop hands its document to a bounded channel with `try_send` and moves on; one
//! background sender POSTs the documents in order with a short timeout. When the channel is
//! full the document is dropped and counted. Failures are counted, and logged only when the
//! dashboard's state changes (reachable → failing → reachable), never once per batch.
//!
//! The deltas are what this consumer decided for the batch. A redelivered event that the
//! backend had already applied is not applied twice, but it is reported again here; the
//! backend's `/analytics` remains the source of truth.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pipeline_core::analytics::{add_to_maps, counters, counts, maps, Effect, FailureCounts, Maps};
use pipeline_core::stats::json_number;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::decide::Outcome;
use crate::stats::DashboardCounts;

/// How long one POST may take.
pub const POST_TIMEOUT: Duration = Duration::from_secs(2);
/// Documents waiting to be sent before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 64;

/// One batch's changes, as POSTed to DAY15_DASHBOARD_API_URL.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BatchDeltas {
    /// The consumer that processed the batch.
    pub consumer: String,
    /// When the batch was settled, RFC 3339 UTC.
    pub timestamp: String,
    /// Events in the batch.
    pub batch_size: u64,
    /// Events acked with their analytics effect.
    pub processed: u64,
    /// Events acked without effect (dry run).
    pub dry_run: u64,
    /// Failed attempts (`failed`, `retried`, `dead_lettered`), as the backend counts them.
    #[serde(flatten)]
    pub failures: FailureCounts,
    /// Processed events of a type the consumers do not know.
    pub unhandled: u64,
    pub events_by_type: BTreeMap<String, u64>,
    pub signups: u64,
    pub signups_by_source: BTreeMap<String, u64>,
    pub signups_by_country: BTreeMap<String, u64>,
    pub subscriptions: u64,
    pub subscriptions_by_plan: BTreeMap<String, u64>,
    /// Added monthly recurring revenue (annual plans count a twelfth).
    pub mrr_delta: f64,
    pub mrr_delta_by_plan: BTreeMap<String, f64>,
    pub usage_events: u64,
    pub usage_quantity: u64,
    pub usage_events_by_feature: BTreeMap<String, u64>,
    pub usage_quantity_by_feature: BTreeMap<String, u64>,
    /// The batch's effects summed per map and field; the fields above are read from it by
    /// [`BatchDeltas::finish`].
    #[serde(skip)]
    effects: Maps,
}

impl BatchDeltas {
    pub fn new(consumer: &str) -> Self {
        BatchDeltas {
            consumer: consumer.to_string(),
            ..Default::default()
        }
    }

    /// Counts one decided event.
    pub fn record(&mut self, outcome: &Outcome, effect: Option<&Effect>) {
        self.batch_size += 1;
        if matches!(outcome, Outcome::DryRun) {
            self.dry_run += 1;
        }
        self.failures.count(outcome.counted());
        if let Some(effect) = effect {
            add_to_maps(&mut self.effects, &effect.increments);
        }
    }

    /// The document to send: the figures read from the summed effects, stamped `timestamp`.
    pub fn finish(mut self, timestamp: String) -> Self {
        let map = |name: &str| self.effects.get(name).cloned().unwrap_or_default();
        let counters = counts(map(maps::COUNTERS));
        let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
        self.timestamp = timestamp;
        self.processed = counter(counters::PROCESSED);
        self.unhandled = counter(counters::UNHANDLED);
        self.events_by_type = counts(map(maps::EVENTS_BY_TYPE));
        self.signups_by_source = counts(map(maps::SIGNUPS_BY_SOURCE));
        self.signups = self.signups_by_source.values().sum();
        self.signups_by_country = counts(map(maps::SIGNUPS_BY_COUNTRY));
        self.subscriptions_by_plan = counts(map(maps::SUBSCRIPTIONS_BY_PLAN));
        self.subscriptions = self.subscriptions_by_plan.values().sum();
        self.mrr_delta_by_plan = map(maps::MRR_BY_PLAN);
        // An empty float sum is -0.0; the document carries 0.0.
        self.mrr_delta = json_number(self.mrr_delta_by_plan.values().sum());
        self.usage_events_by_feature = counts(map(maps::USAGE_EVENTS_BY_FEATURE));
        self.usage_events = self.usage_events_by_feature.values().sum();
        self.usage_quantity_by_feature = counts(map(maps::USAGE_QUANTITY_BY_FEATURE));
        self.usage_quantity = self.usage_quantity_by_feature.values().sum();
        self
    }
}

/// Counters shared between the batch loop and the background sender.
#[derive(Debug, Default)]
struct Counters {
    posted: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DashboardCounts {
        DashboardCounts {
            posted: self.posted.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Hands batch documents to the background sender.
pub struct DashboardPublisher {
    queue: mpsc::Sender<BatchDeltas>,
    counters: Arc<Counters>,
    sender: JoinHandle<()>,
    /// Whether the last `publish` found the queue full, so drops are logged once per episode.
    dropping: bool,
}

impl DashboardPublisher {
    /// Starts the background sender for `url`.
    pub fn start(url: &str) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(url)
            .with_context(|| format!("DAY15_DASHBOARD_API_URL is not a valid URL: {url}"))?;
        let client = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .connect_timeout(POST_TIMEOUT)
            .build()
            .context("cannot build the dashboard HTTP client")?;
        let (queue, documents) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let sender = tokio::spawn(send_all(client, url, documents, counters.clone()));
        Ok(DashboardPublisher {
            queue,
            counters,
            sender,
            dropping: false,
        })
    }

    /// Queues one document without waiting; drops and counts it when the queue is full.
    pub fn publish(&mut self, deltas: BatchDeltas) {
        match self.queue.try_send(deltas) {
            Ok(()) => {
                if self.dropping {
                    tracing::info!("Dashboard update queue has room again");
                    self.dropping = false;
                }
            }
            Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if !self.dropping {
                    tracing::warn!(
                        "Dashboard update queue is full: dropping updates until it drains"
                    );
                    self.dropping = true;
                }
            }
        }
    }

    pub fn counts(&self) -> DashboardCounts {
        self.counters.snapshot()
    }

    /// Stops accepting documents and gives the sender up to `grace` to deliver what is
    /// queued; whatever is left after that is abandoned.
    pub async fn close(self, grace: Duration) -> DashboardCounts {
        let DashboardPublisher {
            queue,
            counters,
            mut sender,
            ..
        } = self;
        drop(queue);
        if tokio::time::timeout(grace, &mut sender).await.is_err() {
            sender.abort();
            tracing::warn!("Dashboard updates still queued at shutdown were abandoned");
        }
        counters.snapshot()
    }
}

async fn send_all(
    client: reqwest::Client,
    url: reqwest::Url,
    mut documents: mpsc::Receiver<BatchDeltas>,
    counters: Arc<Counters>,
) {
    let mut failing = false;
    while let Some(deltas) = documents.recv().await {
        let result = client
            .post(url.clone())
            .json(&deltas)
            .send()
            .await
            .and_then(|r| r.error_for_status());
        match result {
            Ok(_) => {
                counters.posted.fetch_add(1, Ordering::Relaxed);
                if failing {
                    tracing::info!("Dashboard API at {url} is accepting updates again");
                    failing = false;
                }
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::warn!(
                        "Dashboard update to {url} failed: {e} (further failures are counted, not logged, until it recovers)"
                    );
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use pipeline_core::analytics::effect_of;
    use pipeline_core::event::Event;
    use serde_json::json;

    #[test]
    fn deltas_sum_the_effects_of_a_batch() {
        let now = Utc::now();
        let mut d = BatchDeltas::new("c");
        for v in [
            json!({"event_id":"a","event_type":"user_signup","user_id":"u1","timestamp":"2025-12-16T10:00:00Z","metadata":{"source":"ads","country":"FR"}}),
            json!({"event_id":"b","event_type":"subscription_created","user_id":"u1","timestamp":"2025-12-16T10:00:00Z","metadata":{"plan":"pro","amount":120.0,"billing_cycle":"annual"}}),
            json!({"event_id":"c","event_type":"usage_tracked","user_id":"u2","timestamp":"2025-12-16T10:00:00Z","metadata":{"feature":"export","quantity":7}}),
            json!({"event_id":"d","event_type":"page_view","timestamp":"2025-12-16T10:00:00Z"}),
        ] {
            let effect = effect_of(&Event::from_value(v).unwrap(), now);
            d.record(&Outcome::Processed { latency: None }, Some(&effect));
        }
        d.record(
            &Outcome::Retrying {
                delay: Duration::from_secs(1),
            },
            None,
        );
        let d = d.finish(String::new());
        assert_eq!(
            (
                d.batch_size,
                d.processed,
                d.failures.failed,
                d.failures.retried
            ),
            (5, 4, 1, 1)
        );
        assert_eq!(d.signups, 1);
        assert_eq!(d.signups_by_country["FR"], 1);
        assert_eq!(d.subscriptions, 1);
        assert!((d.mrr_delta - 10.0).abs() < 1e-9);
        assert_eq!((d.usage_events, d.usage_quantity), (1, 7));
        assert_eq!(d.unhandled, 1);
        assert_eq!(d.events_by_type["page_view"], 1);
    }

    #[test]
    fn a_batch_without_subscriptions_adds_zero_mrr_not_negative_zero() {
        let mut d = BatchDeltas::new("c");
        let v =
            json!({"event_id":"a","event_type":"user_signup","timestamp":"2025-12-16T10:00:00Z"});
        let effect = effect_of(&Event::from_value(v).unwrap(), Utc::now());
        d.record(&Outcome::Processed { latency: None }, Some(&effect));
        let text = serde_json::to_string(&d.finish(String::new())).unwrap();
        assert!(text.contains(r#""mrr_delta":0.0"#), "{text}");
    }
}
