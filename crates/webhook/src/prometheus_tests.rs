//! Unit tests of the parent module, compiled only with `#[cfg(test)]`.

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
    let text = render(&stats, &m, 2.5, 5, &OwnSnapshot::default());
    assert!(text.contains("day15_events_accepted_total 7\n"), "{text}");
    assert!(
        text.contains("day15_queue_oldest_age_seconds 2.5\n"),
        "{text}"
    );
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
    let text = render(
        &PipelineStats::default(),
        &m,
        0.0,
        0,
        &OwnSnapshot::default(),
    );
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
fn own_figures_are_rendered_with_their_labels() {
    let own = crate::own_metrics::OwnMetrics::default();
    let ms = std::time::Duration::from_millis;
    own.record_request("/webhook/events", 202, ms(3));
    own.record_request("/webhook/events", 202, ms(30));
    own.record_request("other", 404, ms(1));
    own.record_backend_call("enqueue", ms(2), false);
    own.record_backend_call("enqueue", ms(2), true);
    let mut m = StoredMetrics::default();
    m.add(&[Increment::new(maps::EVENTS_BY_TYPE, "odd\"ty\\pe", 3.0)]);
    let text = render(&PipelineStats::default(), &m, 0.0, 0, &own.snapshot());
    for line in [
        "day15_backend_up 1",
        "day15_backend_errors_total{operation=\"enqueue\"} 1",
        "day15_backend_call_duration_seconds_bucket{operation=\"enqueue\",le=\"0.0025\"} 2",
        "day15_backend_call_duration_seconds_count{operation=\"enqueue\"} 2",
        "day15_http_requests_total{route=\"/webhook/events\",status=\"202\"} 2",
        "day15_http_requests_total{route=\"other\",status=\"404\"} 1",
        "day15_http_request_duration_seconds_bucket{route=\"/webhook/events\",le=\"0.005\"} 1",
        "day15_http_request_duration_seconds_bucket{route=\"/webhook/events\",le=\"0.05\"} 2",
        "day15_http_request_duration_seconds_count{route=\"/webhook/events\"} 2",
        "day15_events_processed_by_type_total{type=\"odd\\\"ty\\\\pe\"} 3",
        "# TYPE day15_build_info gauge",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    let empty = render(
        &PipelineStats::default(),
        &StoredMetrics::default(),
        -3.0,
        0,
        &OwnSnapshot::default(),
    );
    assert!(empty.contains("day15_backend_up 0\n"));
    assert!(
        empty.contains("day15_queue_oldest_age_seconds 0\n"),
        "never negative"
    );
    assert!(
        !empty.contains("process_open_fds"),
        "no procfs figures in a default snapshot"
    );
}

#[test]
fn consumer_figures_are_rendered_per_consumer() {
    let mut m = StoredMetrics::default();
    m.add(&[
        Increment::new("consumer_batch_size:consumer-1", "5", 2.0),
        Increment::new("consumer_batch_size:consumer-1", "+Inf", 1.0),
        Increment::latency("consumer_batch_duration_us:consumer-1", 3_000),
        Increment::new(
            "consumer_progress:consumer-1",
            LAST_PROGRESS,
            1_765_879_200.0,
        ),
    ]);
    let text = render(
        &PipelineStats::default(),
        &m,
        0.0,
        0,
        &OwnSnapshot::default(),
    );
    for line in [
        "day15_consumer_batch_size_bucket{consumer=\"consumer-1\",le=\"2\"} 0",
        "day15_consumer_batch_size_bucket{consumer=\"consumer-1\",le=\"5\"} 2",
        "day15_consumer_batch_size_bucket{consumer=\"consumer-1\",le=\"50000\"} 2",
        "day15_consumer_batch_size_bucket{consumer=\"consumer-1\",le=\"+Inf\"} 3",
        "day15_consumer_batch_size_count{consumer=\"consumer-1\"} 3",
        "day15_consumer_batch_duration_seconds_bucket{consumer=\"consumer-1\",le=\"0.005\"} 1",
        "day15_consumer_batch_duration_seconds_count{consumer=\"consumer-1\"} 1",
        "day15_consumer_last_progress_timestamp_seconds{consumer=\"consumer-1\"} 1765879200",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
}

#[test]
fn consumer_backend_calls_share_the_families_of_the_webhooks_own() {
    let own = crate::own_metrics::OwnMetrics::default();
    own.record_backend_call("enqueue", std::time::Duration::from_millis(2), true);
    let mut m = StoredMetrics::default();
    m.add(&[
        Increment::latency("consumer_call_duration_us:claim:consumer-1", 300),
        Increment::latency("consumer_call_duration_us:settle:consumer-1", 3_000),
        Increment::latency("consumer_call_duration_us:settle:consumer-1", 3_000),
        Increment::latency("consumer_call_duration_us:settle:consumer-1", 30_000),
        Increment::new("consumer_call_errors:consumer-1", "settle", 1.0),
        Increment::latency("consumer_call_duration_us:settle:odd\"name", 3_000),
        // Not an operation consumers time: never a label value.
        Increment::latency("consumer_call_duration_us:frobnicate:consumer-1", 3_000),
    ]);
    let text = render(&PipelineStats::default(), &m, 0.0, 0, &own.snapshot());
    for line in [
        // The webhook's own series keep their labels.
        "day15_backend_call_duration_seconds_count{operation=\"enqueue\"} 1",
        "day15_backend_errors_total{operation=\"enqueue\"} 0",
        "day15_backend_call_duration_seconds_bucket{operation=\"claim\",consumer=\"consumer-1\",le=\"0.0005\"} 1",
        "day15_backend_call_duration_seconds_count{operation=\"claim\",consumer=\"consumer-1\"} 1",
        "day15_backend_call_duration_seconds_bucket{operation=\"settle\",consumer=\"consumer-1\",le=\"0.005\"} 2",
        "day15_backend_call_duration_seconds_bucket{operation=\"settle\",consumer=\"consumer-1\",le=\"+Inf\"} 3",
        "day15_backend_call_duration_seconds_count{operation=\"settle\",consumer=\"consumer-1\"} 3",
        "day15_backend_errors_total{operation=\"settle\",consumer=\"consumer-1\"} 1",
        // A consumer whose calls never failed still has its counter, at 0.
        "day15_backend_errors_total{operation=\"claim\",consumer=\"consumer-1\"} 0",
        "day15_backend_call_duration_seconds_count{operation=\"settle\",consumer=\"odd\\\"name\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    assert!(!text.contains("frobnicate"), "{text}");
    assert_eq!(
        text.matches("# TYPE day15_backend_call_duration_seconds ")
            .count(),
        1
    );
    assert_eq!(
        text.matches("# TYPE day15_backend_errors_total ").count(),
        1
    );
}

/// The family a sample line belongs to: its name, without a histogram's suffix.
fn family_of<'a>(sample: &'a str, histograms: &[&str]) -> &'a str {
    let name = sample.split(['{', ' ']).next().unwrap_or_default();
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| {
            name.strip_suffix(suffix)
                .filter(|base| histograms.contains(base))
        })
        .unwrap_or(name)
}

#[test]
fn every_family_is_one_block_under_one_help_and_type() {
    let own = crate::own_metrics::OwnMetrics::default();
    own.record_backend_call("enqueue", std::time::Duration::from_millis(2), false);
    own.record_request("/webhook/events", 202, std::time::Duration::from_millis(3));
    let mut m = StoredMetrics::default();
    m.add(&[
        Increment::new(maps::EVENTS_BY_TYPE, "user_signup", 1.0),
        Increment::new("consumer_batch_size:c1", "5", 1.0),
        Increment::latency("consumer_batch_duration_us:c1", 3_000),
        Increment::new("consumer_progress:c1", LAST_PROGRESS, 1.0),
        Increment::new("consumer_process:c1", consumer_process::OPEN_FDS, 9.0),
        Increment::latency("consumer_call_duration_us:claim:c1", 300),
        Increment::latency("consumer_call_duration_us:settle:c2", 300),
        Increment::new("consumer_call_errors:c2", "settle", 2.0),
    ]);
    let text = render(&PipelineStats::default(), &m, 0.0, 0, &own.snapshot());
    let histograms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    // Families in the order their lines appear, each time it starts again.
    let mut blocks: Vec<(&str, &str)> = Vec::new();
    for line in text.lines() {
        let (kind, family) = if let Some(rest) = line.strip_prefix("# HELP ") {
            ("help", rest.split(' ').next().unwrap_or_default())
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            ("type", rest.split(' ').next().unwrap_or_default())
        } else {
            ("sample", family_of(line, &histograms))
        };
        match blocks.last() {
            Some((last, _)) if *last == family => {}
            _ => blocks.push((family, kind)),
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (family, first) in &blocks {
        assert!(
            seen.insert(*family),
            "{family} split in two blocks:\n{text}"
        );
        assert_eq!(
            *first, "help",
            "{family} does not start with its HELP:\n{text}"
        );
    }
    for family in &seen {
        let helps = text
            .lines()
            .filter(|l| l.starts_with(&format!("# HELP {family} ")))
            .count();
        let types = text
            .lines()
            .filter(|l| l.starts_with(&format!("# TYPE {family} ")))
            .count();
        assert_eq!((helps, types), (1, 1), "{family}:\n{text}");
    }
    assert!(seen.contains("day15_backend_errors_total"));
}

#[test]
fn sample_values_never_print_nan_or_negative_zero() {
    assert_eq!(sample_value(f64::NAN), "0");
    assert_eq!(sample_value(-0.0), "0");
    assert_eq!(sample_value(f64::INFINITY), "+Inf");
    assert_eq!(sample_value(f64::NEG_INFINITY), "-Inf");
    assert_eq!(sample_value(0.25), "0.25");
}
