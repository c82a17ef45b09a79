//! `/metrics` in the Prometheus text exposition format.
//!
//! The figures are pipeline-wide and live in the backend, written by every webhook and
//! consumer process. The `metrics` + `metrics-exporter-prometheus` pair does not fit that: its
//! exporter renders what *this* process recorded through a global recorder, and its histograms
//! are built from individual observations — they cannot be fed the bucketed counts another
//! process stored. So the text is rendered here, directly from the backend's figures, which
//! also keeps the endpoint free of a process-global recorder (several servers can run in one
//! process, as the tests and the orchestrator's memory mode do).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use pipeline_core::analytics::{
    consumer_calls, consumer_process, maps, StoredMetrics, CONSUMER_BATCH_SIZE_BOUNDS,
    LAST_PROGRESS,
};
use pipeline_core::latency;
use pipeline_core::stats::PipelineStats;

use crate::own_metrics::{Histogram, OwnSnapshot, BOUNDS};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every counter, depth gauge and latency histogram: the pipeline's from the backend,
/// then this process's own (`own`). Each family is one block under its `# HELP`/`# TYPE`, as
/// the text format requires.
pub fn render(
    stats: &PipelineStats,
    metrics: &StoredMetrics,
    queue_oldest_age_seconds: f64,
    uptime_seconds: u64,
    own: &OwnSnapshot,
) -> String {
    let mut out = String::with_capacity(8192);
    header(
        &mut out,
        "day15_build_info",
        "gauge",
        "Always 1; the version label is this webhook's build",
    );
    let _ = writeln!(
        out,
        "day15_build_info{{version=\"{}\"}} 1",
        label_value(env!("CARGO_PKG_VERSION"))
    );
    let counters: [(&str, u64, &str); 9] = [
        (
            "received",
            stats.received,
            "Events received by the webhooks, valid or not",
        ),
        ("accepted", stats.accepted, "Events accepted and queued"),
        (
            "duplicates",
            stats.duplicates,
            "Events ignored as duplicates of an id seen within the TTL",
        ),
        (
            "rejected",
            stats.rejected,
            "Events refused as invalid (bad JSON, validation, size, signature)",
        ),
        (
            "processed",
            stats.processed,
            "Events applied to the analytics by consumers",
        ),
        ("failed", stats.failed, "Failed processing attempts"),
        (
            "retried",
            stats.retried,
            "Processing attempts scheduled for a retry",
        ),
        (
            "dead_lettered",
            stats.dead_lettered,
            "Events moved to the dead-letter queue",
        ),
        (
            "unhandled",
            stats.unhandled,
            "Processed events of a type no handler knows",
        ),
    ];
    for (name, value, help) in counters {
        let _ = writeln!(out, "# HELP day15_events_{name}_total {help}.");
        let _ = writeln!(out, "# TYPE day15_events_{name}_total counter");
        let _ = writeln!(out, "day15_events_{name}_total {value}");
    }
    let gauges = [
        (
            "day15_queue_depth",
            stats.queue_depth,
            "Events queued, in flight or waiting for a retry",
        ),
        (
            "day15_dlq_depth",
            stats.dlq_depth,
            "Events in the dead-letter queue",
        ),
        (
            "day15_webhook_uptime_seconds",
            uptime_seconds,
            "Seconds since this webhook started",
        ),
    ];
    for (name, value, help) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}.");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {value}");
    }
    header(
        &mut out,
        "day15_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest event not yet applied (queued, in flight or waiting for a retry), \
         from its received_at; 0 when the queue is empty",
    );
    let _ = writeln!(
        out,
        "day15_queue_oldest_age_seconds {}",
        sample_value(queue_oldest_age_seconds.max(0.0))
    );
    header(
        &mut out,
        "day15_events_processed_by_type_total",
        "counter",
        "Events applied by consumers, by event type (types beyond the dimension cap are merged)",
    );
    for (kind, n) in metrics.map(maps::EVENTS_BY_TYPE) {
        let _ = writeln!(
            out,
            "day15_events_processed_by_type_total{{type=\"{}\"}} {}",
            label_value(&kind),
            sample_value(n.max(0.0).floor())
        );
    }
    histogram(
        &mut out,
        "day15_ingest_latency_seconds",
        "Webhook request latency, received to answered",
        &metrics.map(maps::LATENCY_INGEST),
    );
    histogram(
        &mut out,
        "day15_end_to_end_latency_seconds",
        "Event latency, received_at to applied by a consumer",
        &metrics.map(maps::LATENCY_E2E),
    );
    render_consumers(&mut out, metrics);
    render_own(&mut out, own, metrics);
    out
}

/// The maps of `metrics` named `<prefix><consumer>`, by consumer.
fn per_consumer<'a>(
    metrics: &'a StoredMetrics,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a str, &'a BTreeMap<String, f64>)> {
    metrics
        .maps
        .iter()
        .filter_map(move |(name, map)| Some((name.strip_prefix(prefix)?, map)))
}

/// Batch histograms, last progress and process figures of every consumer that wrote them to
/// the backend.
fn render_consumers(out: &mut String, metrics: &StoredMetrics) {
    let name = "day15_consumer_batch_size";
    header(
        out,
        name,
        "histogram",
        "Events per settled batch, by consumer",
    );
    for (consumer, stored) in per_consumer(metrics, maps::CONSUMER_BATCH_SIZE_PREFIX) {
        let labels = format!("consumer=\"{}\"", label_value(consumer));
        let (mut count, mut sum, mut cumulative) = (0u64, 0.0f64, 0u64);
        let n = |bucket: &str| stored.get(bucket).map_or(0, |n| n.max(0.0) as u64);
        for bound in CONSUMER_BATCH_SIZE_BOUNDS {
            let k = n(&bound.to_string());
            cumulative = cumulative.saturating_add(k);
            // Each batch counted at its bucket's bound: an upper estimate of the sum.
            sum += bound as f64 * k as f64;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        count = count.saturating_add(cumulative).saturating_add(n("+Inf"));
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sample_value(sum));
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
    let name = "day15_consumer_batch_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Duration of settled batches, decided to settled, by consumer",
    );
    for (consumer, stored) in per_consumer(metrics, maps::CONSUMER_BATCH_DURATION_PREFIX) {
        let labels = format!("consumer=\"{}\"", label_value(consumer));
        histogram_samples(out, name, &labels, &latency_histogram(stored));
    }
    let name = "day15_consumer_last_progress_timestamp_seconds";
    header(
        out,
        name,
        "gauge",
        "Unix time of the consumer's last settled batch",
    );
    for (consumer, stored) in per_consumer(metrics, maps::CONSUMER_PROGRESS_PREFIX) {
        let at = stored.get(LAST_PROGRESS).copied().unwrap_or(0.0).max(0.0);
        let _ = writeln!(
            out,
            "{name}{{consumer=\"{}\"}} {}",
            label_value(consumer),
            sample_value(at.round())
        );
    }
    let families = [
        (
            "day15_consumer_resident_memory_bytes",
            "gauge",
            "Resident memory of the consumer process",
            consumer_process::RESIDENT_MEMORY_BYTES,
        ),
        (
            "day15_consumer_open_fds",
            "gauge",
            "Open file descriptors of the consumer process",
            consumer_process::OPEN_FDS,
        ),
        (
            "day15_consumer_cpu_seconds_total",
            "counter",
            "User and system CPU time of the consumer process",
            consumer_process::CPU_SECONDS,
        ),
    ];
    for (name, kind, help, field) in families {
        header(out, name, kind, help);
        for (consumer, stored) in per_consumer(metrics, maps::CONSUMER_PROCESS_PREFIX) {
            if let Some(v) = stored.get(field) {
                let _ = writeln!(
                    out,
                    "{name}{{consumer=\"{}\"}} {}",
                    label_value(consumer),
                    sample_value(v.max(0.0))
                );
            }
        }
    }
}

/// This process's figures: backend reachability and calls, HTTP requests, process resources.
/// The backend-call families also carry the consumers' calls, from `metrics`: a family must
/// be one block, so they cannot be rendered with the other consumer figures.
fn render_own(out: &mut String, own: &OwnSnapshot, metrics: &StoredMetrics) {
    header(
        out,
        "day15_backend_up",
        "gauge",
        "1 when this webhook's last backend call succeeded, 0 otherwise",
    );
    let _ = writeln!(out, "day15_backend_up {}", u8::from(own.backend_up));
    let consumers = consumer_calls_of(metrics);
    let name = "day15_backend_call_duration_seconds";
    header(
        out,
        name,
        "histogram",
        "Duration of backend calls, by operation: this webhook's, and with a consumer label \
         that consumer's (claims that came back empty after waiting are left out)",
    );
    for (operation, (h, _)) in &own.backend_calls {
        histogram_samples(out, name, &format!("operation=\"{operation}\""), h);
    }
    for ((consumer, operation), (h, _)) in &consumers {
        let labels = format!(
            "operation=\"{operation}\",consumer=\"{}\"",
            label_value(consumer)
        );
        histogram_samples(out, name, &labels, h);
    }
    let name = "day15_backend_errors_total";
    header(
        out,
        name,
        "counter",
        "Backend calls that failed or timed out, by operation: this webhook's, and with a \
         consumer label that consumer's",
    );
    for (operation, (_, errors)) in &own.backend_calls {
        let _ = writeln!(out, "{name}{{operation=\"{operation}\"}} {errors}");
    }
    for ((consumer, operation), (_, errors)) in &consumers {
        let _ = writeln!(
            out,
            "{name}{{operation=\"{operation}\",consumer=\"{}\"}} {errors}",
            label_value(consumer)
        );
    }
    header(
        out,
        "day15_http_requests_total",
        "counter",
        "Requests answered by this webhook, by route template and status",
    );
    for ((route, status), n) in &own.http_requests {
        let _ = writeln!(
            out,
            "day15_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            label_value(route)
        );
    }
    header(
        out,
        "day15_http_request_duration_seconds",
        "histogram",
        "Duration of this webhook's requests, received to answered, by route template",
    );
    for (route, h) in &own.http_durations {
        histogram_samples(
            out,
            "day15_http_request_duration_seconds",
            &format!("route=\"{}\"", label_value(route)),
            h,
        );
    }
    if let Some(p) = own.process {
        let families = [
            (
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time of this webhook process",
                sample_value(p.cpu_seconds),
            ),
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory of this webhook process",
                p.resident_memory_bytes.to_string(),
            ),
            (
                "process_open_fds",
                "gauge",
                "Open file descriptors of this webhook process",
                p.open_fds.to_string(),
            ),
        ];
        for (name, kind, help, value) in families {
            header(out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

/// The consumers' backend calls as they wrote them: `(consumer, operation)` -> (durations,
/// errors). An operation with calls but no failure gets 0 errors, so its counter exists
/// before the first failure (a rate needs the sample before the increase).
fn consumer_calls_of(metrics: &StoredMetrics) -> BTreeMap<(&str, &'static str), (Histogram, u64)> {
    let mut calls: BTreeMap<(&str, &'static str), (Histogram, u64)> = BTreeMap::new();
    for (name, stored) in &metrics.maps {
        if let Some((operation, consumer)) = maps::consumer_call_duration_of(name) {
            calls.entry((consumer, operation)).or_default().0 = latency_histogram(stored);
        }
    }
    for (consumer, stored) in per_consumer(metrics, maps::CONSUMER_CALL_ERRORS_PREFIX) {
        for operation in consumer_calls::OPERATIONS {
            if let Some(n) = stored.get(operation) {
                calls.entry((consumer, operation)).or_default().1 = n.max(0.0) as u64;
            }
        }
    }
    calls
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}.");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value in the exposition format: backslash, double quote and newline escaped.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One histogram from a backend `bucket -> count` map. Each stored bucket is counted under the
/// first bound at or above its representative value (within ~2.5% of the true latency).
fn histogram(out: &mut String, name: &str, help: &str, stored: &BTreeMap<String, f64>) {
    header(out, name, "histogram", help);
    histogram_samples(out, name, "", &latency_histogram(stored));
}

/// A backend latency map (`bucket -> count`, microsecond buckets) over [`BOUNDS`].
fn latency_histogram(stored: &BTreeMap<String, f64>) -> Histogram {
    let mut h = Histogram::default();
    for (bucket, n) in stored {
        let (Ok(bucket), n) = (bucket.parse::<u32>(), n.max(0.0) as u64) else {
            continue;
        };
        h.observe_n(latency::bucket_value(bucket) / 1_000_000.0, n);
    }
    h
}

/// The `_bucket`/`_sum`/`_count` samples of one histogram; `labels` (already formatted, may be
/// empty) go before `le`.
fn histogram_samples(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    let braced = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let mut cumulative = 0u64;
    for (bound, n) in BOUNDS.iter().zip(h.buckets) {
        cumulative = cumulative.saturating_add(n);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{braced} {}", sample_value(h.sum));
    let _ = writeln!(out, "{name}_count{braced} {}", h.count);
}

/// A float sample value in the exposition format: `+Inf`/`-Inf` for infinities (Rust would
/// print `inf`, which Prometheus does not parse), never `NaN` or `-0`.
fn sample_value(x: f64) -> String {
    if x.is_nan() || x == 0.0 {
        "0".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        x.to_string()
    }
}

#[cfg(test)]
#[path = "prometheus_tests.rs"]
mod tests;
