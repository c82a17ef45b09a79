//! The `/stats` document: pipeline-wide figures read from the backend, so they include every
//! webhook and consumer process. The event generator reads the same type back.

use serde::{Deserialize, Serialize};

use crate::analytics::{counters, maps, StoredMetrics};
use crate::backend::Depths;
use crate::latency::{self, Percentiles};

/// Ingest and end-to-end latency percentiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Request received → 202 sent, per request.
    pub ingest: Percentiles,
    /// `received_at` → analytics applied, per event.
    pub end_to_end: Percentiles,
}

/// Counters, depths and latency of the whole pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
                ingest: latency::percentiles(&m.map(maps::LATENCY_INGEST)),
                end_to_end: latency::percentiles(&m.map(maps::LATENCY_E2E)),
            },
        }
    }
}
