//! `load`: sustained traffic with honest latency figures.
//!
//! Open loop (`--rate R`): request `k` is scheduled at `start + k × B/R` whatever happened to
//! the requests before it, and its latency is measured from that *scheduled* time. When the
//! webhook stalls, requests queue up behind the `C` workers and their waiting counts as latency;
//! measuring from the actual send time instead would hide the stall (coordinated omission).
//! A request whose worker was idle and waiting for its slot is measured from its actual send
//! instead, so the timer's millisecond granularity is not billed to the webhook.
//! Closed loop (`--rate 0`): each worker sends its next request as soon as the last one was
//! answered, which finds the maximum throughput; latency is then measured from the send.
//!
//! The load path keeps per-worker state (event factory, histogram, tallies) and touches shared
//! memory only through a few relaxed atomics, so one core drives tens of thousands of
//! requests per second; the shared `reqwest` client pools one keep-alive connection per worker.

mod progress;
mod report;
mod verify;
mod worker;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use pipeline_core::runtime::exit;

use crate::cli::LoadArgs;
use crate::client::{WebhookClient, BATCH_PATH, EVENTS_PATH};
use crate::events::EventFactory;

pub use report::{LatencySummary, LoadReport, VerifyReport};

use progress::show_progress;
use report::{build_report, print_plan, print_report};
use verify::verify;
use worker::{worker, LiveCounters, Shared, Tally};

/// Sending time when neither `--duration` nor `--events` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// A `load` run as decided from the flags.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Events per second; `None` for the closed loop.
    pub rate: Option<f64>,
    /// When to stop sending; `None` = only `events` stops the run.
    pub duration: Option<Duration>,
    pub concurrency: usize,
    pub batch_size: usize,
    /// Stop after this many events.
    pub events: Option<u64>,
    pub verify: bool,
    /// How long `--verify` waits for the pipeline to drain.
    pub verify_timeout: Duration,
}

impl LoadPlan {
    pub fn new(args: &LoadArgs, verify_timeout: Duration) -> LoadPlan {
        LoadPlan {
            rate: (args.rate > 0.0).then_some(args.rate),
            duration: args
                .duration
                .or(args.events.is_none().then_some(DEFAULT_DURATION)),
            concurrency: usize::from(args.concurrency),
            batch_size: args.batch_size as usize,
            events: args.events,
            verify: args.verify,
            verify_timeout,
        }
    }

    fn path(&self) -> &'static str {
        if self.batch_size > 1 {
            BATCH_PATH
        } else {
            EVENTS_PATH
        }
    }

    /// Seconds between two scheduled requests in the open loop.
    fn request_interval(&self) -> Option<f64> {
        self.rate.map(|r| self.batch_size as f64 / r)
    }

    fn max_requests(&self) -> Option<u64> {
        self.events.map(|n| n.div_ceil(self.batch_size as u64))
    }

    /// Events carried by request `k`: a full batch, or what is left of `--events`.
    fn events_in_request(&self, k: u64) -> usize {
        let full = self.batch_size as u64;
        match self.events {
            Some(n) => n.saturating_sub(k * full).min(full) as usize,
            None => full as usize,
        }
    }
}

/// Runs the load, prints the report (text or JSON) and returns the exit status.
pub async fn run(
    client: WebhookClient,
    plan: LoadPlan,
    seed: u64,
    run_nonce: u64,
    json: bool,
    cancel: CancellationToken,
) -> i32 {
    let url = client.endpoint(plan.path());
    let stats_before = if plan.verify {
        match client.stats().await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("--verify needs GET /stats: {e:#}");
                return exit::FAILURE;
            }
        }
    } else {
        None
    };
    if !json {
        print_plan(&plan, &url);
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        end: plan.duration.map(|d| started + d),
        plan: plan.clone(),
        url: url.clone(),
        started,
        next_request: AtomicU64::new(0),
        live: LiveCounters::default(),
        cancel: cancel.clone(),
    });
    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(show_progress(shared.clone(), progress_done.clone(), json));
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..plan.concurrency {
        let factory = EventFactory::new(seed, run_nonce, index as u16);
        workers.spawn(worker(shared.clone(), client.clone(), factory));
    }
    let mut tally = Tally::new();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(t) => tally.merge(t),
            Err(e) => eprintln!("a load worker stopped unexpectedly: {e}"),
        }
    }
    let elapsed = started.elapsed();
    let finished = Instant::now();
    progress_done.cancel();
    let _ = progress.await;

    let verify = match stats_before {
        Some(before) => {
            Some(verify(&client, &before, tally.events_accepted, finished, &plan).await)
        }
        None => None,
    };
    let report = build_report(&plan, &url, &tally, elapsed, cancel.is_cancelled(), verify);
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cannot print the report: {e}"),
        }
    } else {
        print_report(&report);
    }
    report.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn args(
        rate: f64,
        batch: u32,
        events: Option<u64>,
        duration: Option<Duration>,
    ) -> LoadArgs {
        LoadArgs {
            rate,
            duration,
            concurrency: 4,
            batch_size: batch,
            events,
            verify: false,
        }
    }

    #[test]
    fn rate_counts_events_so_batches_are_scheduled_less_often() {
        let plan = LoadPlan::new(&args(1000.0, 10, None, None), Duration::ZERO);
        assert_eq!(plan.request_interval(), Some(0.01));
        assert_eq!(plan.path(), BATCH_PATH);
        assert_eq!(plan.duration, Some(DEFAULT_DURATION));
        let closed = LoadPlan::new(&args(0.0, 1, None, None), Duration::ZERO);
        assert_eq!(closed.request_interval(), None);
        assert_eq!(closed.path(), EVENTS_PATH);
    }

    #[test]
    fn events_limit_ends_with_a_partial_batch_and_no_default_duration() {
        let plan = LoadPlan::new(&args(0.0, 10, Some(25), None), Duration::ZERO);
        assert_eq!(plan.duration, None);
        assert_eq!(plan.max_requests(), Some(3));
        let sizes: Vec<usize> = (0..3).map(|k| plan.events_in_request(k)).collect();
        assert_eq!(sizes, [10, 10, 5]);
    }
}
