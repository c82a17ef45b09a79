//! The `/stats` document: pipeline-wide figures read from the backend, so they include every
//! webhook and consumer process. The event generator reads the same type back.

use serde::{Deserialize, Serialize};

use crate::analytics::{counters, maps, StoredMetrics};
use crate::backend::Depths;
use crate::latency::{self, Percentiles};

/// A figure as it may appear in a JSON document: non-finite becomes `0.0` and `-0.0` becomes
/// `0.0`. serde_json writes NaN and infinities as `null` and keeps the sign of zero, which a
/// client reading a number (the dashboard) would show as a missing or negative amount.
pub fn json_number(x: f64) -> f64 {
    if x.is_finite() && x != 0.0 {
        x
    } else {
        0.0
    }
}

/// Percentiles whose every figure is a [`json_number`].
pub fn json_percentiles(p: Percentiles) -> Percentiles {
    Percentiles {
        count: p.count,
        p50_ms: json_number(p.p50_ms),
        p95_ms: json_number(p.p95_ms),
        p99_ms: json_number(p.p99_ms),
        mean_ms: json_number(p.mean_ms),
    }
}

/// Ingest and end-to-end latency percentiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LatencyStats {
    /// Request received → 202 sent, per request.
    pub ingest: Percentiles,
    /// `received_at` → analytics applied, per event.
    pub end_to_end: Percentiles,
}

/// Counters, depths and latency of the whole pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PipelineStats {
    pub backend: String,
    pub received: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub processed: u64,
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub unhandled: u64,
    pub queue_depth: u64,
    pub dlq_depth: u64,
    pub latency: LatencyStats,
}

impl PipelineStats {
    /// The document of `m`; counters read back saturated, every figure a JSON number.
    pub fn from_metrics(backend: &str, m: &StoredMetrics, depths: Depths) -> Self {
        PipelineStats {
            backend: backend.to_string(),
            received: m.counter(counters::RECEIVED),
            accepted: m.counter(counters::ACCEPTED),
            duplicates: m.counter(counters::DUPLICATES),
            rejected: m.counter(counters::REJECTED),
            processed: m.counter(counters::PROCESSED),
            failed: m.counter(counters::FAILED),
            retried: m.counter(counters::RETRIED),
            dead_lettered: m.counter(counters::DEAD_LETTERED),
            unhandled: m.counter(counters::UNHANDLED),
            queue_depth: depths.queue,
            dlq_depth: depths.dlq,
            latency: LatencyStats {
                ingest: json_percentiles(latency::percentiles(&m.map(maps::LATENCY_INGEST))),
                end_to_end: json_percentiles(latency::percentiles(&m.map(maps::LATENCY_E2E))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_are_never_null_or_negative_zero() {
        for (x, want) in [
            (f64::NAN, "0.0"),
            (f64::INFINITY, "0.0"),
            (f64::NEG_INFINITY, "0.0"),
            (-0.0, "0.0"),
            (0.0, "0.0"),
            (12.5, "12.5"),
            (-3.0, "-3.0"),
        ] {
            let text = serde_json::to_string(&json_number(x)).unwrap();
            assert_eq!(text, want, "{x}");
        }
    }

    #[test]
    fn a_poisoned_histogram_gives_plain_numbers() {
        let mut m = StoredMetrics::default();
        let histogram = [("1".to_string(), f64::INFINITY), ("400".into(), f64::NAN)];
        m.maps
            .insert(maps::LATENCY_E2E.into(), histogram.into_iter().collect());
        let stats = PipelineStats::from_metrics("memory", &m, Depths::default());
        let text = serde_json::to_string(&stats).unwrap();
        assert!(!text.contains("null") && !text.contains("-0.0"), "{text}");
    }
}
