//! The analytics model (docs/api.md, `GET /analytics`) as counter increments.
//!
//! Every aggregate is a named map of `field -> number`, and applying an event is a list of
//! [`Increment`]s. That shape is what every backend can apply atomically in one step (a SQLite
//! transaction, one Lua script) together with the processed-id mark and the ack, which is how
//! analytics stay exactly-once under redelivery. Reading turns the maps back into the typed
//! [`AnalyticsSnapshot`] served at `/analytics`.
//!
//! - [`effect`]: what applying one event changes ([`effect_of`]) and the handlers' log lines.
//! - [`counting`]: what settling a failed attempt counts, the one home of those rules.
//! - [`stored`]: increments summed and stored, and how each map is read back.
//! - [`snapshot`]: the `/analytics` document shaped from the stored maps.
//! - [`rollup`]: the same maps per minute, hour and day of event time, with their retention.
//! - [`timeseries`]: a range of rollup buckets in a time zone, for `/analytics/timeseries`.
//! - [`bounds`], [`hll`]: the caps that keep the stored maps bounded.

use crate::event::EventId;
use crate::latency;

pub mod bounds;
pub mod counting;
pub mod effect;
pub mod hll;
pub mod rollup;
pub mod snapshot;
pub mod stored;
pub mod timeseries;

pub use bounds::Bounds;

/// Names of the metric maps every backend stores.
pub mod maps {
    /// Pipeline-wide counters; fields are the names in [`super::counters`].
    pub const COUNTERS: &str = "counters";
    pub const EVENTS_BY_TYPE: &str = "events_by_type";
    pub const SIGNUPS_BY_SOURCE: &str = "signups_by_source";
    pub const SIGNUPS_BY_COUNTRY: &str = "signups_by_country";
    pub const SUBSCRIPTIONS_BY_PLAN: &str = "subscriptions_by_plan";
    pub const MRR_BY_PLAN: &str = "mrr_by_plan";
    pub const USAGE_EVENTS_BY_FEATURE: &str = "usage_events_by_feature";
    pub const USAGE_QUANTITY_BY_FEATURE: &str = "usage_quantity_by_feature";
    /// Ranked map: backends return only its top entries ([`super::TOP_USERS`]).
    pub const USAGE_BY_USER: &str = "usage_by_user";
    /// Distinct-count map: backends return only its size.
    pub const USERS: &str = "users";
    pub const LATENCY_INGEST: &str = "latency_ingest_us";
    pub const LATENCY_E2E: &str = "latency_e2e_us";
    /// Prefix of the per-minute maps (`epm:<unix minute>`, field = event type). Backends may
    /// forget them after [`super::MINUTE_WINDOW`] minutes.
    pub const PER_MINUTE_PREFIX: &str = "epm:";
    /// Per-consumer maps, `<prefix><consumer name>`, each written only by that consumer
    /// (names are bounded by DAY15_CONSUMERS). Batch sizes: field = the upper bound in
    /// [`super::CONSUMER_BATCH_SIZE_BOUNDS`] of the batch's size (`+Inf` above the last).
    pub const CONSUMER_BATCH_SIZE_PREFIX: &str = "consumer_batch_size:";
    /// Batch durations, claimed to settled; fields are latency buckets as in the latency maps.
    pub const CONSUMER_BATCH_DURATION_PREFIX: &str = "consumer_batch_duration_us:";
    /// Field [`super::LAST_PROGRESS`]: unix second of the consumer's last settled batch (kept
    /// by adding the difference to what is stored: the maps only sum).
    pub const CONSUMER_PROGRESS_PREFIX: &str = "consumer_progress:";
    /// The consumer process's resources, fields in [`super::consumer_process`] (gauges kept
    /// like the progress: by adding the difference to what is stored).
    pub const CONSUMER_PROCESS_PREFIX: &str = "consumer_process:";
    /// Durations of the consumer's own backend calls, one map per operation:
    /// `<prefix><operation>:<consumer name>` ([`consumer_call_duration`]), operation one of
    /// [`super::consumer_calls::OPERATIONS`]; fields are latency buckets as in the latency
    /// maps.
    pub const CONSUMER_CALL_DURATION_PREFIX: &str = "consumer_call_duration_us:";
    /// The consumer's failed backend calls (timeouts included); field = the operation.
    pub const CONSUMER_CALL_ERRORS_PREFIX: &str = "consumer_call_errors:";

    /// The per-minute map of a unix minute; fixed width so names sort by time.
    pub fn per_minute(minute: i64) -> String {
        format!("{PER_MINUTE_PREFIX}{minute:010}")
    }

    /// The [`CONSUMER_CALL_DURATION_PREFIX`] map of one operation of one consumer.
    pub fn consumer_call_duration(operation: &str, consumer: &str) -> String {
        format!("{CONSUMER_CALL_DURATION_PREFIX}{operation}:{consumer}")
    }

    /// `(operation, consumer)` of a [`consumer_call_duration`] map name; `None` for any other
    /// name, an unknown operation included. The operation is matched against the known ones
    /// rather than split at a `:`, so a consumer name may hold any character.
    pub fn consumer_call_duration_of(name: &str) -> Option<(&'static str, &str)> {
        let rest = name.strip_prefix(CONSUMER_CALL_DURATION_PREFIX)?;
        super::consumer_calls::OPERATIONS
            .iter()
            .find_map(|operation| {
                let consumer = rest.strip_prefix(operation)?.strip_prefix(':')?;
                Some((*operation, consumer))
            })
    }
}

/// Upper bounds of the consumer batch-size histogram buckets.
pub const CONSUMER_BATCH_SIZE_BOUNDS: [u64; 14] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 50_000,
];

/// Field of the [`maps::CONSUMER_PROGRESS_PREFIX`] maps.
pub const LAST_PROGRESS: &str = "last_unix_seconds";

/// Field names of the [`maps::CONSUMER_PROCESS_PREFIX`] maps.
pub mod consumer_process {
    pub const RESIDENT_MEMORY_BYTES: &str = "resident_memory_bytes";
    pub const OPEN_FDS: &str = "open_fds";
    /// User plus system CPU seconds since the consumer process started.
    pub const CPU_SECONDS: &str = "cpu_seconds";
}

/// Operations of the consumers' own backend calls, as the [`maps::CONSUMER_CALL_DURATION_PREFIX`]
/// and [`maps::CONSUMER_CALL_ERRORS_PREFIX`] maps name them.
pub mod consumer_calls {
    /// `Backend::claim_batch`.
    pub const CLAIM: &str = "claim";
    /// `Backend::settle`.
    pub const SETTLE: &str = "settle";
    pub const OPERATIONS: [&str; 2] = [CLAIM, SETTLE];
}

/// Field names of the [`maps::COUNTERS`] map.
pub mod counters {
    pub const RECEIVED: &str = "received";
    pub const ACCEPTED: &str = "accepted";
    pub const DUPLICATES: &str = "duplicates";
    pub const REJECTED: &str = "rejected";
    pub const PROCESSED: &str = "processed";
    pub const FAILED: &str = "failed";
    pub const RETRIED: &str = "retried";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const UNHANDLED: &str = "unhandled";
    pub const ALL: [&str; 9] = [
        RECEIVED,
        ACCEPTED,
        DUPLICATES,
        REJECTED,
        PROCESSED,
        FAILED,
        RETRIED,
        DEAD_LETTERED,
        UNHANDLED,
    ];
}

/// How many users `/analytics` lists by usage.
pub const TOP_USERS: usize = 10;
/// How many minutes of per-minute counts are kept and shown.
pub const MINUTE_WINDOW: i64 = 60;

/// Add `by` to `map[field]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Increment {
    pub map: String,
    pub field: String,
    pub by: f64,
}

impl Increment {
    pub fn new(map: &str, field: impl Into<String>, by: f64) -> Self {
        Increment {
            map: map.to_string(),
            field: field.into(),
            by,
        }
    }

    /// `+1` on a pipeline counter.
    pub fn counter(name: &str) -> Self {
        Increment::new(maps::COUNTERS, name, 1.0)
    }

    /// One latency sample into a histogram map.
    pub fn latency(map: &str, micros: u64) -> Self {
        Increment::new(map, latency::bucket_of(micros).to_string(), 1.0)
    }
}

/// What applying one event changes; applied at most once per event id.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    pub event_id: EventId,
    /// The totals.
    pub increments: Vec<Increment>,
    /// Unix second of the event's `timestamp`: the rolled-up increments (and the user) also
    /// count in that instant's minute, hour and day buckets, summed per batch by
    /// [`rollup::RollupSums`] in the same atomic step. `None`: no rollups.
    pub event_time: Option<i64>,
}

impl Effect {
    /// The totals and every rollup increment, one event on its own (where a batch is not
    /// folded first).
    pub fn all_increments(&self) -> Vec<Increment> {
        let mut rollups = rollup::RollupSums::default();
        rollups.add(self);
        let mut all = self.increments.clone();
        all.extend(rollups.increments());
        all
    }
}

pub use counting::FailureCounts;
pub use effect::{describe, effect_of, monthly_amount};
pub use snapshot::*;
pub use stored::{add_to_maps, MapShape, Maps, StoredMetrics, Sums};

#[cfg(test)]
mod tests;
