//! Redis Streams backend (`DAY15_QUEUE_BACKEND=redis`): the way past one machine.
//!
//! Several webhooks and many consumers on many machines share one Redis. The queue is a stream
//! read through one consumer group, so each entry is leased to one consumer at a time; its
//! pending-entries list is the lease table and `XAUTOCLAIM` takes over entries whose consumer
//! crashed. Every move between structures (enqueue, claim, settle, requeue, dead-letter,
//! replay, purge) is one Lua script, so a crash never leaves an event in two places or in none.
//! The scripts live in `redis/lua/`, each headed by its KEYS, ARGV and return value.
//!
//! Trade-offs chosen:
//! - Settled entries are `XACK`ed *and* `XDEL`eted, so the stream only ever holds unread and
//!   in-flight entries: `XLEN` is exactly that part of the queue depth, no counter has to be
//!   kept in step, and no `XTRIM` is needed.
//! - A [`Lease::Redis`] is the entry id, the consumer and the delivery count (from the
//!   pending-entries list) of the claim: a consumer may take over its own stalled entry, so the
//!   consumer name alone could not tell a stale settlement from a current one. Every
//!   settlement checks both against the pending-entries list inside its script.
//! - Exactly-once analytics needs no applied mark per event: an entry's effect is applied by
//!   the script that acks it, and only while the entry is still pending, so the pending list
//!   itself records what was applied. The consumer sums a batch's effects per field, so Redis
//!   does one write per distinct field per batch, not one per event.
//! - Claiming (due retries back to the stream, `XAUTOCLAIM`, `XREADGROUP`) is one script, so a
//!   claim costs one round trip; between its runs (see [`ClaimSchedule`]) a busy consumer
//!   claims with a plain `XREADGROUP`. The wait for new entries runs as `XREADGROUP … BLOCK` on
//!   a dedicated connection (a blocking call would stall the shared multiplexed one), in
//!   slices so cancellation, due retries and expired leases are noticed.
//! - Every call is bounded by [`CALL_DEADLINE`]: when Redis is down, callers get
//!   [`BackendError::Unavailable`] within a second (the webhook answers 503) and the
//!   connection manager reconnects by itself once Redis is back.
//!
//! Layout, one file per concern: [`keys`] (the key layout), `scripts.rs` (loading the Lua
//! files), `enqueue.rs`, `claim.rs` (the claim schedule and the blocking wait), `settle.rs`,
//! `dlq.rs`, `metrics.rs`, `group.rs` (creating and re-creating the consumer group),
//! `error.rs` (the call deadline and the mapping to [`BackendError`]) and `reply.rs` (decoding
//! replies); this file connects and implements [`Backend`] on top of them.

mod claim;
mod dlq;
mod enqueue;
mod error;
mod group;
pub mod keys;
mod metrics;
mod reply;
mod scripts;
mod settle;
mod tls;

use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::analytics::StoredMetrics;
use crate::config::{redact_url, RedisTlsFiles};
use claim::ClaimSchedule;
pub use error::CALL_DEADLINE;
use error::{bounded, CallError};
use keys::Keys;
use scripts::Scripts;

/// Connect timeout of each connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The scale-out backend.
pub struct RedisBackend {
    /// Auto-reconnecting multiplexed connection shared by every non-blocking call.
    conn: ConnectionManager,
    /// Opens the dedicated connections of blocking reads.
    client: ::redis::Client,
    /// Idle dedicated connections for `XREADGROUP … BLOCK`, reused by later claims. A
    /// `std::sync::Mutex`: it is only held to push or pop, never across an `.await`.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    /// Every key name under this pipeline's prefix.
    keys: Keys,
    /// Visibility timeout (passed to the claim script) and idempotency TTL.
    options: BackendOptions,
    /// The Lua scripts, loaded once.
    scripts: Scripts,
    /// Progress of the search for expired leases. Never held across `.await`.
    claims: Mutex<ClaimSchedule>,
    /// The URL without its password, for messages.
    redacted_url: String,
}

impl RedisBackend {
    /// Connects to `url` (the password never appears in errors or logs), and creates the
    /// consumer group if it does not exist yet. A `rediss://` URL connects over TLS with the
    /// certificates of `tls` (ignored for `redis://`). Fails with [`BackendError::Unavailable`]
    /// when Redis does not answer within about a second, and at once, saying what to check,
    /// when a TLS file cannot be read or the handshake is refused.
    pub async fn connect(
        url: &str,
        prefix: &str,
        tls: &RedisTlsFiles,
        options: BackendOptions,
    ) -> BackendResult<Self> {
        let redacted_url = redact_url(url);
        let client = tls::client(url, &redacted_url, tls)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_DEADLINE))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = match tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let hint = tls::hint(url, &e);
                let error = CallError::Redis(e).into_backend("connect", &redacted_url);
                return Err(tls::with_hint(error, hint));
            }
            Err(_) => return Err(CallError::Deadline.into_backend("connect", &redacted_url)),
        };
        let backend = RedisBackend {
            conn,
            client,
            blocking: Mutex::new(Vec::new()),
            keys: Keys::new(prefix),
            options,
            scripts: Scripts::new(),
            claims: Mutex::new(ClaimSchedule::new()),
            redacted_url,
        };
        backend
            .ensure_group()
            .await
            .map_err(|e| e.into_backend("create consumer group", &backend.redacted_url))?;
        tracing::debug!(url = %backend.redacted_url, prefix, "redis backend connected");
        Ok(backend)
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> BackendResult<()> {
        let mut conn = self.conn.clone();
        bounded(::redis::cmd("PING").query_async::<()>(&mut conn))
            .await
            .map_err(self.fail("ping"))
    }

    async fn enqueue_delivery(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        self.enqueue_batch(events, mark).await
    }

    async fn claim_batch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        self.claim(consumer, max, wait, cancel).await
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> BackendResult<()> {
        self.settle_batch(settlements).await
    }

    /// Queue depth = `XLEN` of the stream (unread + in flight: settled entries are deleted)
    /// + `ZCARD` of the retry set; DLQ depth = `XLEN` of the DLQ stream. The oldest queued
    /// event is the older `received_at` of the stream's first entry and of the retry due
    /// first (a retry set ordered by due time, so an older retry due later is not seen: an
    /// under-estimate by at most the retry delays). Read atomically.
    async fn depths(&self) -> BackendResult<Depths> {
        type FirstEntries = Vec<(String, std::collections::HashMap<String, String>)>;
        let mut conn = self.conn.clone();
        let (stream, retry, dlq, first, first_retry): (u64, u64, u64, FirstEntries, Vec<String>) =
            bounded(
                ::redis::pipe()
                    .atomic()
                    .cmd("XLEN")
                    .arg(&self.keys.stream)
                    .cmd("ZCARD")
                    .arg(&self.keys.retry)
                    .cmd("XLEN")
                    .arg(&self.keys.dlq)
                    .cmd("XRANGE")
                    .arg(&self.keys.stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("ZRANGE")
                    .arg(&self.keys.retry)
                    .arg(0)
                    .arg(0)
                    .query_async(&mut conn),
            )
            .await
            .map_err(self.fail("depths"))?;
        let from_stream = first
            .first()
            .and_then(|(_, fields)| payload_received_at_ms(fields.get("payload")?));
        // A retry member is the JSON array [entry id, event id, payload, failures].
        let from_retry = first_retry.first().and_then(|member| {
            let fields: Vec<serde_json::Value> = serde_json::from_str(member).ok()?;
            payload_received_at_ms(fields.get(2)?.as_str()?)
        });
        Ok(Depths {
            queue: stream + retry,
            dlq,
            oldest_at: from_stream.into_iter().chain(from_retry).min(),
        })
    }

    async fn dlq_list(&self, limit: usize, offset: usize) -> BackendResult<Vec<DeadLetter>> {
        self.list_dead_letters(limit, offset).await
    }

    async fn dlq_replay(&self, which: DlqSelection) -> BackendResult<u64> {
        self.replay_dead_letters(which).await
    }

    async fn dlq_purge(&self) -> BackendResult<u64> {
        self.purge_dead_letters().await
    }

    async fn record(&self, increments: Vec<Increment>) -> BackendResult<()> {
        self.add_increments(increments).await
    }

    async fn metrics(&self) -> BackendResult<StoredMetrics> {
        self.read_metrics().await
    }
}
