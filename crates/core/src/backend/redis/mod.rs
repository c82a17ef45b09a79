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
//!   itself records what was applied. The consumer sums a batch's effects per field and sends
//!   them grouped per map, and the settle script writes each map with a few variadic commands
//!   (one `ZMSCORE` of the stored scores and one `ZADD` of the sums; users already counted cost
//!   the `ZMSCORE` alone), not one command per field: a command called from Lua costs Redis
//!   more than the work it does on a small sorted set.
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
mod conn;
mod dlq;
mod enqueue;
mod error;
mod group;
mod health;
pub mod keys;
mod merge;
mod metrics;
mod reply;
mod scripts;
mod settle;
mod tls;
mod written_registers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::analytics::StoredMetrics;
use crate::config::{redact_url, RedisConfig, RedisMode, RedisTlsFiles};
use claim::ClaimSchedule;
use conn::Conn;
use error::bounded;
pub use error::CALL_DEADLINE;
use keys::Keys;
use scripts::Scripts;

/// The scale-out backend.
pub struct RedisBackend {
    /// The shared multiplexed connection of every non-blocking call: one server's
    /// auto-reconnecting connection, or the cluster client's.
    conn: std::sync::Arc<conn::SharedConn>,
    /// How a claimer with nothing to claim waits for new entries.
    waiter: Waiter,
    /// Every partition's keys and claim schedule, indexed by partition number.
    partitions: Vec<Partition>,
    /// Where the next claim starts its walk over the partitions, so none is starved.
    rotation: AtomicUsize,
    /// Whether the last claim walk found more work than it took (some partition gave all it
    /// was asked for): then the next walk goes partition by partition, filling its batch from
    /// as few partitions as it can; otherwise it asks every partition at once.
    backlog: AtomicBool,
    /// Deliveries read past a claim's `max` (a blocking read over several streams returns up to
    /// its count from each), per consumer: handed out first by that consumer's next claim.
    /// Never held across `.await`.
    spill: Mutex<HashMap<String, Vec<Delivery>>>,
    /// Replicas an enqueue must reach before it counts as stored (`WAIT`), and how long to wait.
    replicas: Option<(u32, Duration)>,
    /// Visibility timeout (passed to the claim script) and idempotency TTL.
    options: BackendOptions,
    /// The Lua scripts, loaded once.
    scripts: Scripts,
    /// The URL without its password, for messages.
    redacted_url: String,
}

/// One partition: its keys and the progress of its search for expired leases.
struct Partition {
    keys: Keys,
    /// Never held across `.await`.
    claims: Mutex<ClaimSchedule>,
    /// Rollup registers this process wrote here, so settles skip those that cannot rise.
    /// Never held across `.await`.
    written_registers: Mutex<written_registers::WrittenRegisters>,
}

/// How a claimer waits for new entries when every partition came up empty.
enum Waiter {
    /// One server: `XREADGROUP … BLOCK` over every partition's stream at once, on dedicated
    /// connections (a blocking call would stall the shared one). The idle ones are kept for
    /// later claims; a `std::sync::Mutex`, only held to push or pop.
    Blocking {
        client: ::redis::Client,
        idle: Mutex<Vec<MultiplexedConnection>>,
    },
    /// A cluster, where one read cannot span slots: an enqueue that finds its partition's
    /// stream empty publishes to the partition's sharded channel; a subscribed connection
    /// (opened by the first claim, re-subscribed by the client after failovers) bumps
    /// `rung`, and a waiting claimer walks the partitions again.
    Bell {
        client: Box<::redis::cluster::ClusterClient>,
        subscribed: tokio::sync::OnceCell<::redis::cluster_async::ClusterConnection>,
        rung: tokio::sync::watch::Sender<u64>,
    },
}

impl RedisBackend {
    /// Connects to one server at `url` with a single partition under `prefix` (see
    /// [`RedisBackend::open`]).
    pub async fn connect(
        url: &str,
        prefix: &str,
        tls: &RedisTlsFiles,
        options: BackendOptions,
    ) -> BackendResult<Self> {
        let config = RedisConfig {
            url: url.to_string(),
            mode: RedisMode::Standalone,
            key_prefix: prefix.to_string(),
            partitions: 1,
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
            tls: tls.clone(),
        };
        RedisBackend::open(&config, options).await
    }

    /// Connects as `config` says (the password never appears in errors or logs), checks that
    /// the data under the prefix is laid out for the configured partition count (recording it
    /// on first use), and creates each partition's consumer group if it does not exist yet.
    /// A `rediss://` URL connects over TLS with the configured certificates.
    ///
    /// Fails with [`BackendError::Unavailable`] when Redis does not answer within a few
    /// seconds, at once with what to check when a TLS file cannot be read or the handshake is
    /// refused, and with [`BackendError::Misconfigured`] naming both counts when the recorded
    /// partition count differs.
    pub async fn open(config: &RedisConfig, options: BackendOptions) -> BackendResult<Self> {
        let redacted_url = redact_url(&config.url);
        let (conn, waiter) = match config.mode {
            RedisMode::Standalone => {
                let (conn, client) = conn::single(&config.url, &redacted_url, &config.tls).await?;
                let waiter = Waiter::Blocking {
                    client,
                    idle: Mutex::new(Vec::new()),
                };
                (conn, waiter)
            }
            RedisMode::Cluster => {
                let conn = conn::cluster(&config.url, &redacted_url, &config.tls).await?;
                let (rung, _) = tokio::sync::watch::channel(0u64);
                let ring = rung.clone();
                let push = Box::new(move |_: ::redis::PushInfo| -> Result<(), ()> {
                    ring.send_modify(|n| *n = n.wrapping_add(1));
                    Ok(())
                });
                let client =
                    conn::cluster_client(&config.url, &redacted_url, &config.tls, Some(push))?;
                let waiter = Waiter::Bell {
                    client: Box::new(client),
                    subscribed: tokio::sync::OnceCell::new(),
                    rung,
                };
                (conn, waiter)
            }
        };
        let count = config.partitions.max(1);
        let conn = std::sync::Arc::new(conn::SharedConn::new(
            conn,
            &config.url,
            &redacted_url,
            &config.tls,
        ));
        let backend = RedisBackend {
            conn,
            waiter,
            partitions: (0..count)
                .map(|n| Partition {
                    keys: Keys::partition(&config.key_prefix, n, count),
                    claims: Mutex::new(ClaimSchedule::new()),
                    written_registers: Mutex::default(),
                })
                .collect(),
            rotation: AtomicUsize::new(0),
            backlog: AtomicBool::new(false),
            spill: Mutex::new(HashMap::new()),
            replicas: (config.wait_replicas > 0)
                .then_some((config.wait_replicas, config.wait_timeout)),
            options,
            scripts: Scripts::new(),
            redacted_url,
        };
        backend.check_partition_count(&config.key_prefix).await?;
        for p in &backend.partitions {
            backend
                .ensure_group(&p.keys)
                .await
                .map_err(|e| e.into_backend("create consumer group", &backend.redacted_url))?;
        }
        tracing::debug!(
            url = %backend.redacted_url,
            prefix = %config.key_prefix,
            mode = config.mode.as_str(),
            partitions = count,
            "redis backend connected"
        );
        Ok(backend)
    }

    /// Records the partition count under the prefix on first use; refuses another one.
    ///
    /// Data written before partitions were recorded is the one-partition layout: a pipeline
    /// that finds such a queue and no record counts it as one partition.
    async fn check_partition_count(&self, prefix: &str) -> BackendResult<()> {
        let wanted = self.partitions.len();
        let key = keys::partitions_key(prefix);
        let legacy = Keys::new(prefix);
        let mut conn = self.conn.get();
        let recorded: Option<usize> = bounded(
            ::redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<usize>>(&mut conn),
        )
        .await
        .map_err(self.fail("read the partition count"))?;
        let recorded = match recorded {
            Some(n) => n,
            None => {
                let old_queue: bool = bounded(
                    ::redis::cmd("EXISTS")
                        .arg(&legacy.stream)
                        .query_async::<bool>(&mut conn),
                )
                .await
                .map_err(self.fail("read the partition count"))?;
                let first = if old_queue { 1 } else { wanted };
                let set: Option<String> = bounded(
                    ::redis::cmd("SET")
                        .arg(&key)
                        .arg(first)
                        .arg("NX")
                        .query_async(&mut conn),
                )
                .await
                .map_err(self.fail("record the partition count"))?;
                if set.is_some() {
                    first
                } else {
                    // Another process recorded it first: its count is the one.
                    bounded(
                        ::redis::cmd("GET")
                            .arg(&key)
                            .query_async::<usize>(&mut conn),
                    )
                    .await
                    .map_err(self.fail("read the partition count"))?
                }
            }
        };
        if recorded != wanted {
            return Err(BackendError::Misconfigured(format!(
                "Redis at {} holds the queue of prefix '{prefix}' in {recorded} partition(s), but DAY15_REDIS_PARTITIONS is {wanted}: set DAY15_REDIS_PARTITIONS={recorded} (or use another DAY15_KEY_PREFIX)",
                self.redacted_url
            )));
        }
        Ok(())
    }

    /// One server or a cluster, as the connection is.
    fn mode(&self) -> RedisMode {
        match self.conn.get() {
            Conn::Single(_) => RedisMode::Standalone,
            Conn::Cluster(_) => RedisMode::Cluster,
        }
    }

    /// The number of the partition an event id belongs to.
    fn partition_number(&self, event_id: &str) -> u16 {
        keys::partition_of(event_id, self.partitions.len() as u16)
    }

    /// The partition an event id belongs to.
    fn partition_of(&self, event_id: &str) -> &Partition {
        &self.partitions[usize::from(self.partition_number(event_id))]
    }

    /// `items` grouped by the partition `number_of` names (an item naming none of ours is
    /// left out): partitions in the order they first appear, each with its items in order.
    fn by_partition<T>(
        &self,
        items: impl IntoIterator<Item = T>,
        number_of: impl Fn(&T) -> Option<u16>,
    ) -> Vec<(&Partition, Vec<T>)> {
        let mut groups: Vec<(&Partition, Vec<T>)> = Vec::new();
        for item in items {
            let Some(p) = number_of(&item).and_then(|n| self.partitions.get(usize::from(n))) else {
                continue;
            };
            match groups
                .iter_mut()
                .find(|(q, _)| q.keys.partition == p.keys.partition)
            {
                Some((_, list)) => list.push(item),
                None => groups.push((p, vec![item])),
            }
        }
        groups
    }

    /// The depths of one partition, read atomically.
    async fn partition_depths(&self, keys: &Keys) -> BackendResult<Depths> {
        type FirstEntries = Vec<(String, HashMap<String, String>)>;
        let mut conn = self.conn.get();
        let (stream, retry, dlq, first, first_retry): (u64, u64, u64, FirstEntries, Vec<String>) =
            bounded(
                ::redis::pipe()
                    .atomic()
                    .cmd("XLEN")
                    .arg(&keys.stream)
                    .cmd("ZCARD")
                    .arg(&keys.retry)
                    .cmd("XLEN")
                    .arg(&keys.dlq)
                    .cmd("XRANGE")
                    .arg(&keys.stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .cmd("ZRANGE")
                    .arg(&keys.retry)
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
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> BackendResult<()> {
        let watch = self.conn.watch();
        let mut conn = self.conn.get();
        let result = bounded(::redis::cmd("PING").query_async::<()>(&mut conn))
            .await
            .map_err(self.fail("ping"));
        watch.finish(result)
    }

    async fn topology(&self) -> BackendResult<Option<Topology>> {
        self.check_topology().await.map(Some)
    }

    async fn enqueue_delivery(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        let watch = self.conn.watch();
        watch.finish(self.enqueue_batch(events, mark).await)
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

    /// Queue depth = `XLEN` of the streams (unread + in flight: settled entries are deleted)
    /// + `ZCARD` of the retry sets; DLQ depth = `XLEN` of the DLQ streams. The oldest queued
    /// event is the oldest `received_at` of each stream's first entry and of each retry due
    /// first (a retry set ordered by due time, so an older retry due later is not seen: an
    /// under-estimate by at most the retry delays). Each partition is read atomically; the
    /// partitions concurrently.
    async fn depths(&self) -> BackendResult<Depths> {
        let watch = self.conn.watch();
        let parts = watch.finish(
            futures_util::future::try_join_all(
                self.partitions
                    .iter()
                    .map(|p| self.partition_depths(&p.keys)),
            )
            .await,
        )?;
        Ok(parts.into_iter().fold(Depths::default(), |sum, d| Depths {
            queue: sum.queue + d.queue,
            dlq: sum.dlq + d.dlq,
            oldest_at: sum.oldest_at.into_iter().chain(d.oldest_at).min(),
        }))
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

    async fn rollups(
        &self,
        aggregate: &str,
        granularity: crate::analytics::rollup::Granularity,
        from: i64,
        to: i64,
    ) -> BackendResult<crate::analytics::rollup::Buckets> {
        self.read_rollups(aggregate, granularity, from, to).await
    }
}
