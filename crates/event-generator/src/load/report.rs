//! What a `load` run reports: the figures as `--json` prints them, and their text form.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use reqwest::Url;
use serde::Serialize;

use pipeline_core::latency::Percentiles;
use pipeline_core::runtime::exit;

use super::worker::Tally;
use super::LoadPlan;

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

pub(super) fn build_report(
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

pub(super) fn print_plan(plan: &LoadPlan, url: &Url) {
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

pub(super) fn print_report(r: &LoadReport) {
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
    use crate::load::tests::args;

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
