//! The queue and store every process shares, behind one trait.
//!
//! A [`Backend`] is the only thing the webhook and the consumers have in common. Each method is
//! one atomic step in the backend (one SQLite transaction, one Lua script, one lock) so that no
//! crash can leave an event in two places or in none:
//!
//! - [`Backend::enqueue`]: idempotency mark + enqueue + accepted/duplicate counters (and, for
//!   a signed delivery, its [`DeliveryMark`]).
//! - [`Backend::claim_batch`]: take up to N ready events under a lease (the visibility timeout);
//!   an event whose lease runs out without being settled is delivered again.
//! - [`Backend::settle`]: for a whole batch at once, ack (applying the analytics effect only if
//!   the event id was never applied before), schedule a retry, or dead-letter.
//!
//! Delivery is at-least-once; the processed-id check inside `settle` makes analytics
//! exactly-once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::analytics::rollup::{Buckets, Granularity};
use crate::analytics::{Bounds, Effect, Increment, StoredMetrics};
use crate::config::{BackendKind, Config};
use crate::event::EventId;

pub mod memory;
pub mod redis;
pub mod sqlite;

/// Settings every backend needs, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// How long a claimed event stays invisible to other consumers before it is redelivered.
    pub visibility_timeout: Duration,
    /// How long an event id is remembered, for both the duplicate check and the applied check.
    pub idempotency_ttl: Duration,
    /// How much analytics state senders can make the backend keep (dimension values,
    /// distinct users counted exactly, users ranked); see [`crate::analytics::bounds`].
    pub bounds: Bounds,
}

impl BackendOptions {
    pub fn from_config(config: &Config) -> Self {
        BackendOptions {
            visibility_timeout: config.visibility_timeout,
            idempotency_ttl: config.idempotency_ttl,
            bounds: Bounds {
                max_dimension_values: config.max_dimension_values,
                rollup_retention: config.rollup_retention,
                ..Bounds::default()
            },
        }
    }
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            visibility_timeout: Duration::from_secs(30),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            bounds: Bounds::default(),
        }
    }
}

/// Why a backend call failed. `Unavailable` is worth retrying later (the webhook answers 503).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// The store cannot be reached or is locked/busy; nothing was changed.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else (corrupt data, disk full, script error), with context.
    #[error("backend error: {0}")]
    Failed(String),
    /// The store was set up by a differently configured pipeline (another partition count):
    /// serving it would split or orphan its data. A configuration problem (exit status 2).
    #[error("{0}")]
    Misconfigured(String),
}

impl BackendError {
    /// The exit status of a process that cannot open its backend for this reason: 2 (bad
    /// configuration) when the configuration disagrees with the stored data, else 1.
    pub fn exit_status(&self) -> i32 {
        match self {
            BackendError::Misconfigured(_) => crate::runtime::exit::USAGE,
            _ => crate::runtime::exit::FAILURE,
        }
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// A validated event as it is stored: its id and its JSON (with `received_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub event_id: EventId,
    pub payload: String,
}

impl QueuedEvent {
    /// The stored form of a validated event (stamp `received_at` first).
    pub fn of(event: &crate::event::Event) -> Self {
        QueuedEvent {
            event_id: event.id.clone(),
            payload: event.to_json(),
        }
    }

    /// The stored form of an event as the webhook received it, stamped `received_at`.
    pub fn received(event: &crate::event::ReceivedEvent<'_>, received_at: &str) -> Self {
        QueuedEvent {
            event_id: event.id.clone(),
            payload: event.stored(received_at),
        }
    }
}

/// The answer of [`Backend::enqueue`] for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnqueueOutcome {
    /// Stored; it will be delivered.
    Accepted,
    /// Its id was seen within the idempotency TTL; nothing was stored.
    Duplicate,
    /// The request's [`DeliveryMark`] was seen within its TTL (a replayed or retried signed
    /// delivery); nothing of the request was stored. Counted as a duplicate.
    DuplicateDelivery,
}

/// A signed delivery's id (`webhook-id`), remembered for `ttl` by the enqueue that stores the
/// delivery's events, so that the same delivery is stored at most once while its signature can
/// still be valid.
///
/// The mark is written in the same atomic step as the events: an enqueue that fails leaves no
/// mark, so the sender's retry is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryMark {
    id: String,
    ttl: Duration,
}

impl DeliveryMark {
    /// Longest accepted delivery id, in bytes: bounds what one mark costs to keep.
    pub const MAX_LEN: usize = 256;

    /// A mark for delivery `id`: 1 to [`Self::MAX_LEN`] printable ASCII characters (spaces
    /// allowed), kept for `ttl` (at least one millisecond). The error says which rule failed.
    pub fn new(id: &str, ttl: Duration) -> Result<DeliveryMark, &'static str> {
        if id.is_empty() {
            return Err("must not be empty");
        }
        if id.len() > Self::MAX_LEN {
            return Err("must be at most 256 characters");
        }
        if !id.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err("must be printable ASCII");
        }
        Ok(DeliveryMark {
            id: id.to_string(),
            ttl: ttl.max(Duration::from_millis(1)),
        })
    }

    /// The delivery id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long the mark is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The TTL in whole milliseconds, at least 1.
    pub fn ttl_millis(&self) -> i64 {
        self.ttl.as_millis().clamp(1, i64::MAX as u128) as i64
    }
}

/// Proof of one claim on one stored event, made by the backend that granted it.
///
/// Every backend settles an event only while the lease a settlement carries is still the
/// event's current one: once a lease has run out and the event was claimed again, the old
/// lease can no longer ack, retry or dead-letter it (such a settlement is ignored, and the
/// current holder settles the event). A lease of another backend is never current.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lease {
    /// A queue row and the random token its claim wrote on it (row ids are reused, tokens not).
    Sqlite { row: i64, token: i64 },
    /// A stream entry of one partition, the consumer it is pending for and its delivery count
    /// at the claim (a consumer may take over its own stalled entry, so the consumer alone is
    /// not enough).
    Redis {
        partition: u16,
        entry: String,
        consumer: String,
        deliveries: u64,
    },
    /// An in-memory entry and its claim token.
    Memory { key: u64, token: u64 },
}

/// One claimed event, leased to the claiming consumer until settled or the lease runs out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Which claim this delivery is: what settling it checks.
    pub lease: Lease,
    pub event_id: EventId,
    pub payload: String,
    /// 1 on the first attempt; 1 + failed attempts so far after retries. Redeliveries after a
    /// lost lease (a crash) do not count: they were not handler failures.
    pub attempt: u32,
}

/// Why an event went to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// It can never succeed (undecodable, invalid): no retries.
    Permanent,
    /// It failed `1 + DAY15_MAX_RETRIES` times.
    MaxRetriesExceeded,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Permanent => "permanent_failure",
            FailureReason::MaxRetriesExceeded => "max_retries_exceeded",
        }
    }
}

/// What a consumer decided for one delivery; a batch of these is settled at once.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Done: remove it and apply `effect`, both only while the lease is current. An ack whose
    /// lease is stale (it ran out and the event was claimed again, or this settle is repeated
    /// after a lost answer) changes nothing: the effect is applied by whoever settles the
    /// current lease. SQLite and memory also keep a processed mark per event id, so an effect
    /// is never applied twice for one id within the idempotency TTL; Redis applies an entry
    /// only while it is pending for this lease (the idempotent enqueue keeps one entry per
    /// event id).
    Ack {
        delivery: Delivery,
        effect: Option<Effect>,
    },
    /// Failed, try again no earlier than `not_before` with `attempt + 1`. Counts
    /// [`Settlement::counted`]. Ignored when the lease is stale.
    Retry {
        delivery: Delivery,
        not_before: SystemTime,
        error: String,
    },
    /// Park it in the DLQ with `attempts = delivery.attempt`. Counts [`Settlement::counted`].
    /// Ignored when the lease is stale.
    DeadLetter {
        delivery: Delivery,
        reason: FailureReason,
        error: String,
    },
}

impl Settlement {
    /// The delivery this settles.
    pub fn delivery(&self) -> &Delivery {
        match self {
            Settlement::Ack { delivery, .. }
            | Settlement::Retry { delivery, .. }
            | Settlement::DeadLetter { delivery, .. } => delivery,
        }
    }

    /// The pipeline counters this settlement adds one to when it takes effect (see
    /// [`crate::analytics::counting`]); an ack's counts are in its effect.
    pub fn counted(&self) -> &'static [&'static str] {
        match self {
            Settlement::Ack { .. } => &[],
            Settlement::Retry { .. } => crate::analytics::counting::RETRY,
            Settlement::DeadLetter { .. } => crate::analytics::counting::DEAD_LETTER,
        }
    }
}

/// A dead-lettered event as listed by `/dlq` and `consumer dlq list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub event_id: EventId,
    /// The stored event (the payload parsed back; a string if it was not JSON).
    pub event: serde_json::Value,
    pub failure_reason: String,
    pub error: String,
    pub attempts: u32,
    /// RFC 3339 UTC.
    pub failed_at: String,
}

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqSelection {
    All,
    Ids(Vec<EventId>),
}

/// Work not yet done and work parked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Depths {
    /// Ready + in flight + waiting for a retry.
    pub queue: u64,
    pub dlq: u64,
    /// `received_at` (epoch ms) of the oldest queued event (ready, in flight or waiting for a
    /// retry), read in the same step as `queue`; `None` when the queue is empty or that
    /// event's payload carries no parseable `received_at`. Feeds the queue-age gauge.
    #[serde(skip)]
    pub oldest_at: Option<i64>,
}

/// `received_at` (epoch ms) of a stored payload, when present and parseable: the one
/// timestamp every backend keeps for a queued event, wherever it sits in the queue.
pub(crate) fn payload_received_at_ms(payload: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Stamp<'a> {
        #[serde(borrow)]
        received_at: Option<std::borrow::Cow<'a, str>>,
    }
    let stamp: Stamp<'_> = serde_json::from_str(payload).ok()?;
    let at = chrono::DateTime::parse_from_rfc3339(stamp.received_at?.as_ref()).ok()?;
    Some(at.timestamp_millis())
}

/// The queue, idempotency window, DLQ and metric store shared by every process.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `sqlite`, `redis` or `memory`.
    fn name(&self) -> &'static str;

    /// Cheap reachability check for `/health` and the orchestrator's start-up check.
    async fn ping(&self) -> BackendResult<()>;

    /// Stores each event whose id was not seen within the TTL, in one atomic step for the
    /// whole slice; ids repeated inside the slice are duplicates after their first occurrence.
    /// Also counts `accepted` and `duplicates`. Returns one outcome per input, in order.
    async fn enqueue(&self, events: Vec<QueuedEvent>) -> BackendResult<Vec<EnqueueOutcome>> {
        self.enqueue_delivery(events, None).await
    }

    /// [`Backend::enqueue`] for one delivery. With a `mark` whose id is still remembered,
    /// nothing is stored and every event is [`EnqueueOutcome::DuplicateDelivery`] (counted as
    /// duplicates); otherwise the mark is set for its TTL in the same atomic step as the
    /// events, so a failed call leaves no mark. An empty `events` stores and marks nothing.
    async fn enqueue_delivery(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>>;

    /// Leases up to `max` ready events to `consumer`. Returns as soon as at least one is ready;
    /// when none is, waits up to `wait` (woken early by an enqueue) and returns empty on
    /// timeout or when `cancel` fires. Cancellation never loses a claimed event.
    async fn claim_batch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>>;

    /// Settles a batch atomically (see [`Settlement`]).
    async fn settle(&self, settlements: Vec<Settlement>) -> BackendResult<()>;

    async fn depths(&self) -> BackendResult<Depths>;

    /// Dead letters, oldest first.
    async fn dlq_list(&self, limit: usize, offset: usize) -> BackendResult<Vec<DeadLetter>>;

    /// Moves dead letters back to the queue with attempts reset; returns how many moved.
    async fn dlq_replay(&self, which: DlqSelection) -> BackendResult<u64>;

    /// Deletes every dead letter; returns how many.
    async fn dlq_purge(&self) -> BackendResult<u64>;

    /// Adds to metric maps outside any delivery (webhook counters and ingest latencies).
    async fn record(&self, increments: Vec<Increment>) -> BackendResult<()>;

    /// Every metric map, shaped as [`StoredMetrics`] documents. Rollup buckets are not listed,
    /// except the minute buckets of events by type of the last
    /// [`crate::analytics::MINUTE_WINDOW`] minutes (`/analytics`' per-minute section).
    async fn metrics(&self) -> BackendResult<StoredMetrics>;

    /// The rollup buckets of `aggregate` (see [`crate::analytics::rollup`]) at `granularity`
    /// whose start (unix seconds) is in `from..to`, as stored, merged across partitions
    /// (fields summed, registers by maximum, dimension caps applied once more). Buckets past
    /// their retention are never returned, even before the backend has deleted them.
    async fn rollups(
        &self,
        aggregate: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> BackendResult<Buckets>;

    /// How a backend spread over servers is laid out and how much of it answers (`/health`);
    /// `None` for a backend that lives in one place.
    async fn topology(&self) -> BackendResult<Option<Topology>> {
        Ok(None)
    }
}

/// The layout of a backend spread over servers, as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Topology {
    /// `standalone` or `cluster`.
    pub mode: &'static str,
    /// Streams the queue is split into.
    pub partitions: u16,
    /// Primaries serving the data (1 for one server).
    pub primaries: usize,
    /// Primaries that answered a ping just now; below `primaries`, part of the queue cannot
    /// be reached (until the cluster promotes a replica).
    pub primaries_reachable: usize,
}

/// Opens the backend the configuration names, for a process that serves it: a SQLite store
/// deleted or replaced while in use makes the process exit with status 1 (see [`sqlite`]).
pub async fn connect(config: &Config) -> BackendResult<Arc<dyn Backend>> {
    let options = BackendOptions::from_config(config);
    Ok(match config.queue_backend {
        BackendKind::Memory => Arc::new(memory::MemoryBackend::new(options)),
        BackendKind::Sqlite => Arc::new(
            sqlite::SqliteBackend::open(&config.sqlite.path, config.sqlite.synchronous, options)
                .await?
                .exit_process_when_lost(),
        ),
        BackendKind::Redis => Arc::new(redis::RedisBackend::open(&config.redis, options).await?),
    })
}

/// Milliseconds since the epoch: the clock every backend stores, shared across processes.
pub fn epoch_millis(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(_) => 0,
    }
}

/// `failed_at` and other stored instants, as RFC 3339 UTC.
pub fn format_millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// Parses a stored payload back for display; a payload that is not JSON is shown as a string.
pub fn payload_value(payload: &str) -> serde_json::Value {
    serde_json::from_str(payload).unwrap_or_else(|_| serde_json::Value::String(payload.into()))
}
