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

use pipeline_core::analytics::{maps, StoredMetrics};
use pipeline_core::latency;
use pipeline_core::stats::PipelineStats;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the exported latency histogram buckets.
const BOUNDS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Renders every counter, depth gauge and latency histogram.
pub fn render(stats: &PipelineStats, metrics: &StoredMetrics, uptime_seconds: u64) -> String {
    let mut out = String::with_capacity(4096);
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
    out
}

/// One histogram from a backend `bucket -> count` map. Each stored bucket is counted under the
/// first bound at or above its representative value (within ~2.5% of the true latency).
fn histogram(out: &mut String, name: &str, help: &str, stored: &BTreeMap<String, f64>) {
    let mut per_bound = [0u64; BOUNDS.len()];
    let (mut count, mut sum) = (0u64, 0.0f64);
    for (bucket, n) in stored {
        let (Ok(bucket), n) = (bucket.parse::<u32>(), n.max(0.0) as u64) else {
            continue;
        };
        let seconds = latency::bucket_value(bucket) / 1_000_000.0;
        if let Some(i) = BOUNDS.iter().position(|b| seconds <= *b) {
            per_bound[i] = per_bound[i].saturating_add(n);
        }
        count = count.saturating_add(n);
        sum += seconds * n as f64;
    }
    let _ = writeln!(out, "# HELP {name} {help}.");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0u64;
    for (bound, n) in BOUNDS.iter().zip(per_bound) {
        cumulative = cumulative.saturating_add(n);
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", sample_value(sum));
    let _ = writeln!(out, "{name}_count {count}");
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
mod tests {
    use super::*;
    use pipeline_core::analytics::Increment;

    #[test]
    fn counters_gauges_and_cumulative_histograms_are_rendered() {
        let mut m = StoredMetrics::default();
        m.add(&[
            Increment::latency(maps::LATENCY_INGEST, 300),
            Increment::latency(maps::LATENCY_INGEST, 300),
            Increment::latency(maps::LATENCY_INGEST, 3_000),
            Increment::latency(maps::LATENCY_INGEST, 120_000_000),
        ]);
        let stats = PipelineStats {
            accepted: 7,
            queue_depth: 3,
            ..Default::default()
        };
        let text = render(&stats, &m, 5);
        assert!(text.contains("day15_events_accepted_total 7\n"), "{text}");
        assert!(text.contains("# TYPE day15_queue_depth gauge\nday15_queue_depth 3\n"));
        assert!(text.contains("day15_ingest_latency_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text.contains("day15_ingest_latency_seconds_bucket{le=\"0.0005\"} 2\n"));
        assert!(text.contains("day15_ingest_latency_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("day15_ingest_latency_seconds_bucket{le=\"60\"} 3\n"));
        assert!(text.contains("day15_ingest_latency_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("day15_ingest_latency_seconds_count 4\n"));
        assert!(text.contains("day15_end_to_end_latency_seconds_count 0\n"));
    }

    #[test]
    fn absurd_stored_counts_saturate_and_print_plain_numbers() {
        let mut m = StoredMetrics::default();
        let histogram = [
            ("1".to_string(), f64::INFINITY),
            ("150".into(), 1e300),
            ("300".into(), f64::NAN),
            ("not_a_bucket".into(), 5.0),
        ];
        m.maps
            .insert(maps::LATENCY_INGEST.into(), histogram.into_iter().collect());
        let text = render(&PipelineStats::default(), &m, 0);
        let max = u64::MAX;
        assert!(
            text.contains(&format!("day15_ingest_latency_seconds_count {max}\n")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "day15_ingest_latency_seconds_bucket{{le=\"+Inf\"}} {max}\n"
        )));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or_default();
            assert!(
                value == "+Inf"
                    || value
                        .parse::<f64>()
                        .is_ok_and(|v| v.is_finite() && v >= 0.0),
                "{line}"
            );
            assert!(!value.contains("NaN") && !value.starts_with('-'), "{line}");
        }
    }

    #[test]
    fn sample_values_never_print_nan_or_negative_zero() {
        assert_eq!(sample_value(f64::NAN), "0");
        assert_eq!(sample_value(-0.0), "0");
        assert_eq!(sample_value(f64::INFINITY), "+Inf");
        assert_eq!(sample_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(sample_value(0.25), "0.25");
    }
}
