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

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use pipeline_core::latency::Percentiles;
use pipeline_core::runtime::exit;
use pipeline_core::stats::PipelineStats;

use crate::cli::LoadArgs;
use crate::client::{error_kind, WebhookClient, BATCH_PATH, EVENTS_PATH, JSON};
use crate::events::EventFactory;

/// Sending time when neither `--duration` nor `--events` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Highest latency the histograms hold (longer ones are clamped), in microseconds.
const HISTOGRAM_MAX_MICROS: u64 = 3_600_000_000;
/// How often `/stats` is read while `--verify` waits.
const VERIFY_POLL: Duration = Duration::from_millis(100);

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

/// Counters the progress display reads while workers run.
#[derive(Default)]
struct LiveCounters {
    requests: AtomicU64,
    events: AtomicU64,
    errors: AtomicU64,
}

/// What all workers share.
struct Shared {
    plan: LoadPlan,
    url: Url,
    started: Instant,
    /// No request is scheduled at or after this instant.
    end: Option<Instant>,
    /// Index of the next request to send.
    next_request: AtomicU64,
    live: LiveCounters,
    /// Fires on Ctrl+C: workers stop taking work and drop requests in flight.
    cancel: CancellationToken,
}

/// The `results` of a `/webhook/batch` answer.
#[derive(Debug, Default, Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    results: BatchResults,
}

#[derive(Debug, Default, Deserialize)]
struct BatchResults {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default)]
    errors: u64,
}

/// One worker's figures, merged at the end.
struct Tally {
    /// Latency of every answered request, in microseconds.
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    transport_errors: BTreeMap<&'static str, u64>,
    requests: u64,
    events_sent: u64,
    events_accepted: u64,
    duplicates: u64,
    /// Events a batch answer reported as invalid.
    batch_errors: u64,
    /// Worst delay between a request's scheduled and actual send time (open loop).
    max_lag: Duration,
}

impl Tally {
    fn new() -> Tally {
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

    fn merge(&mut self, other: Tally) {
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

async fn worker(shared: Arc<Shared>, client: WebhookClient, mut factory: EventFactory) -> Tally {
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

/// Latency percentiles of the requests, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl LatencySummary {
    fn of(h: &Histogram<u64>) -> LatencySummary {
        let ms = |micros: u64| (micros as f64 / 1000.0 * 1000.0).round() / 1000.0;
        LatencySummary {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
        }
    }
}

/// What `--verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Events the webhook accepted during the run.
    pub expected: u64,
    /// Growth of the pipeline's `processed` counter since the run started.
    pub processed: u64,
    /// Whether `processed` reached `expected` before the timeout.
    pub complete: bool,
    /// From the last answer until `processed` reached `expected` (or the timeout).
    pub drain_s: f64,
    pub queue_depth: u64,
    pub dlq_depth: u64,
    /// The pipeline's own end-to-end latency (received_at → applied) from `/stats`, over
    /// everything it has processed, not only this run.
    pub pipeline_end_to_end_ms: Percentiles,
    /// Ingest latency as the webhook measures it, from `/stats`.
    pub pipeline_ingest_ms: Percentiles,
}

/// The result of a `load` run; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub url: String,
    /// `open_loop` or `closed_loop`.
    pub mode: &'static str,
    /// The requested events per second (open loop).
    pub target_events_per_s: Option<f64>,
    pub concurrency: usize,
    pub batch_size: usize,
    /// Where each latency starts: the scheduled send time (open loop, free of coordinated
    /// omission; the actual send when the worker had been idle) or the actual send time
    /// (closed loop).
    pub latency_measured_from: &'static str,
    /// Ctrl+C stopped the run early.
    pub interrupted: bool,
    pub elapsed_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub events_sent: u64,
    pub events_per_s: f64,
    pub events_accepted: u64,
    pub duplicates: u64,
    pub batch_event_errors: u64,
    /// Requests answered with a non-2xx status or not answered at all.
    pub errors: u64,
    pub statuses: BTreeMap<String, u64>,
    pub errors_by_status: BTreeMap<String, u64>,
    pub transport_errors: BTreeMap<String, u64>,
    pub latency_ms: LatencySummary,
    /// Worst delay between a request's scheduled and actual send (open loop): large values
    /// mean the workers could not keep up — raise `--concurrency`.
    pub max_schedule_lag_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyReport>,
}

impl LoadReport {
    /// 0 when every request succeeded (and, with `--verify`, every accepted event was
    /// processed); 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        let verified = self.verify.as_ref().is_none_or(|v| v.complete);
        if self.errors == 0 && verified {
            exit::OK
        } else {
            exit::FAILURE
        }
    }
}

/// Shows progress on stderr while the run lasts: a bar on a terminal, a line a second
/// otherwise (none with `--json` off a terminal, to keep logs quiet).
async fn show_progress(shared: Arc<Shared>, done: CancellationToken, json: bool) {
    let terminal = std::io::stderr().is_terminal();
    if json && !terminal {
        return;
    }
    let plan = &shared.plan;
    let (length, by_time) = match (plan.duration, plan.events) {
        (Some(d), _) => (d.as_millis() as u64, true),
        (None, Some(n)) => (n, false),
        (None, None) => (0, true),
    };
    let bar = if terminal {
        let bar = ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}",
        ) {
            bar.set_style(style);
        }
        Some(bar)
    } else {
        None
    };
    let tick = if terminal {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.tick().await;
    let mut last = (Instant::now(), 0u64);
    loop {
        // When the run is done the pending tick is abandoned and the bar is cleared.
        tokio::select! {
            _ = done.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let elapsed = shared.started.elapsed();
        let requests = shared.live.requests.load(Ordering::Relaxed);
        let events = shared.live.events.load(Ordering::Relaxed);
        let errors = shared.live.errors.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (requests - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, requests);
        let text =
            format!("{requests} requests, {events} events, {errors} errors, {rate:.0} req/s");
        match &bar {
            Some(bar) => {
                bar.set_position(if by_time {
                    elapsed.as_millis() as u64
                } else {
                    events
                });
                bar.set_message(text);
            }
            None => eprintln!("  {:>6.1} s  {text}", elapsed.as_secs_f64()),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
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

async fn verify(
    client: &WebhookClient,
    before: &PipelineStats,
    expected: u64,
    finished: Instant,
    plan: &LoadPlan,
) -> VerifyReport {
    let deadline = finished + plan.verify_timeout;
    let mut last: Option<PipelineStats> = None;
    loop {
        if let Ok(now) = client.stats().await {
            let processed = now.processed.saturating_sub(before.processed);
            let complete = processed >= expected;
            last = Some(now);
            if complete {
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(VERIFY_POLL).await;
    }
    let drain_s = finished.elapsed().as_secs_f64();
    let after = last.unwrap_or_else(|| before.clone());
    let processed = after.processed.saturating_sub(before.processed);
    VerifyReport {
        expected,
        processed,
        complete: processed >= expected,
        drain_s: (drain_s * 1000.0).round() / 1000.0,
        queue_depth: after.queue_depth,
        dlq_depth: after.dlq_depth,
        pipeline_end_to_end_ms: after.latency.end_to_end,
        pipeline_ingest_ms: after.latency.ingest,
    }
}

fn build_report(
    plan: &LoadPlan,
    url: &Url,
    tally: &Tally,
    elapsed: Duration,
    interrupted: bool,
    verify: Option<VerifyReport>,
) -> LoadReport {
    let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
    let per_s = |n: u64| (n as f64 / seconds * 10.0).round() / 10.0;
    let errors_by_status: BTreeMap<String, u64> = tally
        .statuses
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(s, n)| (s.to_string(), *n))
        .collect();
    let transport_errors: BTreeMap<String, u64> = tally
        .transport_errors
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    let errors = errors_by_status.values().sum::<u64>() + transport_errors.values().sum::<u64>();
    LoadReport {
        url: url.to_string(),
        mode: if plan.rate.is_some() {
            "open_loop"
        } else {
            "closed_loop"
        },
        target_events_per_s: plan.rate,
        concurrency: plan.concurrency,
        batch_size: plan.batch_size,
        latency_measured_from: if plan.rate.is_some() {
            "scheduled send time (actual send time when the worker was idle)"
        } else {
            "actual send time"
        },
        interrupted,
        elapsed_s: (seconds * 1000.0).round() / 1000.0,
        requests: tally.requests,
        requests_per_s: per_s(tally.requests),
        events_sent: tally.events_sent,
        events_per_s: per_s(tally.events_sent),
        events_accepted: tally.events_accepted,
        duplicates: tally.duplicates,
        batch_event_errors: tally.batch_errors,
        errors,
        statuses: tally
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect(),
        errors_by_status,
        transport_errors,
        latency_ms: LatencySummary::of(&tally.latency),
        max_schedule_lag_ms: plan
            .rate
            .map(|_| (tally.max_lag.as_secs_f64() * 1_000_000.0).round() / 1000.0),
        verify,
    }
}

fn print_plan(plan: &LoadPlan, url: &Url) {
    let mode = match plan.rate {
        Some(r) => format!("open loop at {r} events/s"),
        None => "closed loop, flat out".to_string(),
    };
    let stop = match (plan.duration, plan.events) {
        (Some(d), Some(n)) => format!("for {:.1} s or {n} events", d.as_secs_f64()),
        (Some(d), None) => format!("for {:.1} s", d.as_secs_f64()),
        (None, Some(n)) => format!("until {n} events"),
        (None, None) => String::new(),
    };
    println!(
        "Load: {mode} {stop}, {} workers, {} event(s) per request → POST {url}",
        plan.concurrency, plan.batch_size
    );
}

fn print_report(r: &LoadReport) {
    if r.interrupted {
        println!("Interrupted: figures cover the requests answered before Ctrl+C.");
    }
    println!(
        "requests   {} in {:.2} s = {:.1} req/s",
        r.requests, r.elapsed_s, r.requests_per_s
    );
    println!(
        "events     {} sent = {:.1} events/s; {} accepted, {} duplicates, {} refused in batches",
        r.events_sent, r.events_per_s, r.events_accepted, r.duplicates, r.batch_event_errors
    );
    let l = &r.latency_ms;
    println!(
        "latency ms p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3}, {} samples)",
        l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean, l.count
    );
    if r.mode == "open_loop" {
        println!(
            "           measured from each request's scheduled send time (its actual send when a \
             worker was idle), so a stall counts for every request it delayed: no coordinated \
             omission"
        );
    } else {
        println!(
            "           measured from each request's actual send (closed loop: the rate adapts to \
             the server)"
        );
    }
    if let Some(lag) = r.max_schedule_lag_ms {
        if lag > 100.0 {
            println!(
                "           the workers fell up to {lag:.1} ms behind schedule: raise --concurrency \
                 if the webhook is not the limit"
            );
        }
    }
    if r.errors == 0 {
        println!("errors     none");
    } else {
        let mut parts: Vec<String> = r
            .errors_by_status
            .iter()
            .map(|(s, n)| format!("{n}× HTTP {s}"))
            .collect();
        parts.extend(r.transport_errors.iter().map(|(k, n)| format!("{n}× {k}")));
        println!("errors     {} ({})", r.errors, parts.join(", "));
    }
    if let Some(v) = &r.verify {
        let e = &v.pipeline_end_to_end_ms;
        println!(
            "verify     processed +{} of {} accepted: {} after {:.3} s (queue depth {}, DLQ depth {})",
            v.processed,
            v.expected,
            if v.complete { "complete" } else { "INCOMPLETE" },
            v.drain_s,
            v.queue_depth,
            v.dlq_depth
        );
        println!(
            "pipeline   end-to-end latency ms p50 {:.3}  p95 {:.3}  p99 {:.3} over {} events (from /stats, all time)",
            e.p50_ms, e.p95_ms, e.p99_ms, e.count
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(rate: f64, batch: u32, events: Option<u64>, duration: Option<Duration>) -> LoadArgs {
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

    #[test]
    fn report_fails_on_errors_or_an_incomplete_drain() {
        let plan = LoadPlan::new(&args(100.0, 1, None, None), Duration::ZERO);
        let url = Url::parse("http://127.0.0.1:1/webhook/events").unwrap();
        let mut tally = Tally::new();
        tally.statuses.insert(202, 5);
        let report = build_report(&plan, &url, &tally, Duration::from_secs(1), false, None);
        assert_eq!(report.errors, 0);
        assert_eq!(report.exit_code(), 0);
        tally.statuses.insert(503, 2);
        tally.transport_errors.insert("connect", 1);
        let report = build_report(&plan, &url, &tally, Duration::from_secs(1), false, None);
        assert_eq!(report.errors, 3);
        assert_eq!(report.errors_by_status.get("503"), Some(&2));
        assert_eq!(report.exit_code(), 1);
    }
}
