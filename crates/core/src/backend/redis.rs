//! Redis Streams backend (`DAY15_QUEUE_BACKEND=redis`): the way past one machine.
//!
//! Several webhooks and many consumers on many machines share one Redis. The queue is a stream
//! read through one consumer group, so each entry is leased to one consumer at a time; its
//! pending-entries list is the lease table and `XAUTOCLAIM` takes over entries whose consumer
//! crashed. Every move between structures (enqueue, claim, settle, requeue, dead-letter,
//! replay, purge) is one Lua script, so a crash never leaves an event in two places or in none.
//! The scripts live beside this file (`redis/*.lua`), each headed by its KEYS, ARGV and return
//! value.
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

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, ErrorKind, RedisError, Script, ServerErrorKind, Value};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::analytics::{
    counters, counting, maps, MapShape, MetricsSnapshot, Sums, MINUTE_WINDOW, TOP_USERS,
};
use crate::config::redact_url;

/// Longest time any backend call may take before it fails as [`BackendError::Unavailable`].
pub const CALL_DEADLINE: Duration = Duration::from_secs(1);
/// Connect timeout of each connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest single `XREADGROUP … BLOCK`: bounds how late cancellation, due retries and expired
/// leases are noticed by a waiting claimer.
const MAX_BLOCK_SLICE: Duration = Duration::from_millis(500);
/// Most due retries moved back to the stream per claim.
const PROMOTE_PER_CLAIM: usize = 1000;
/// Most dead letters moved per replay script call (the whole DLQ is replayed in such steps).
const REPLAY_STEP: usize = 1000;
/// How long a per-minute metric map outlives its last write.
const MINUTE_MAP_TTL_SECS: i64 = (MINUTE_WINDOW + 5) * 60;

/// The key layout, in one place.
///
/// Every key is `{<prefix>}:<name>`: the braces make the prefix the Redis Cluster hash tag, so
/// all keys of one pipeline live in one slot and every script may touch any of them (scripts
/// build the per-id and per-map keys from the prefixes passed in ARGV).
pub mod keys {
    /// The consumer group every consumer reads through (a group name, not a key).
    pub const GROUP: &str = "consumers";
    /// Stream of queued events: fields `id`, `payload`, `failures`.
    pub const STREAM: &str = "stream";
    /// Sorted set of retries waiting to be due: score = due ms, member = JSON
    /// `[entry id, event id, payload, failures]`.
    pub const RETRY: &str = "retry";
    /// Stream of dead letters: fields `id`, `payload`, `failure_reason`, `error`, `attempts`,
    /// `failed_at` (epoch ms).
    pub const DLQ: &str = "dlq";
    /// Set of metric map names, so metrics can be read without `SCAN`.
    pub const MAP_REGISTRY: &str = "maps";
    /// `seen:<event id>`: duplicate mark, expires after the idempotency TTL.
    pub const SEEN: &str = "seen:";
    /// `m:<map name>`: one metric map as a sorted set (field -> number).
    pub const METRIC: &str = "m:";

    /// The full key names of one prefix.
    #[derive(Debug, Clone)]
    pub struct Keys {
        /// `{<prefix>}:`, the start of every key.
        pub tag: String,
        pub stream: String,
        pub retry: String,
        pub dlq: String,
        pub registry: String,
    }

    impl Keys {
        pub fn new(prefix: &str) -> Self {
            let tag = format!("{{{prefix}}}:");
            Keys {
                stream: format!("{tag}{STREAM}"),
                retry: format!("{tag}{RETRY}"),
                dlq: format!("{tag}{DLQ}"),
                registry: format!("{tag}{MAP_REGISTRY}"),
                tag,
            }
        }

        pub fn seen_prefix(&self) -> String {
            format!("{}{SEEN}", self.tag)
        }

        pub fn metric_prefix(&self) -> String {
            format!("{}{METRIC}", self.tag)
        }

        pub fn metric(&self, map: &str) -> String {
            format!("{}{METRIC}{map}", self.tag)
        }
    }
}

use keys::Keys;

/// The Lua scripts, loaded once; `redis::Script` sends `EVALSHA` and reloads the script itself
/// after a Redis restart flushed the script cache.
struct Scripts {
    enqueue: Script,
    claim: Script,
    settle: Script,
    record: Script,
    metrics: Script,
    dlq_replay: Script,
    dlq_purge: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            enqueue: Script::new(include_str!("redis/enqueue.lua")),
            claim: Script::new(include_str!("redis/claim.lua")),
            settle: Script::new(concat!(
                include_str!("redis/metric_lib.lua"),
                include_str!("redis/settle.lua")
            )),
            record: Script::new(concat!(
                include_str!("redis/metric_lib.lua"),
                include_str!("redis/record.lua")
            )),
            metrics: Script::new(include_str!("redis/metrics.lua")),
            dlq_replay: Script::new(include_str!("redis/dlq_replay.lua")),
            dlq_purge: Script::new(include_str!("redis/dlq_purge.lua")),
        }
    }
}

/// The scale-out backend.
pub struct RedisBackend {
    /// Auto-reconnecting multiplexed connection shared by every non-blocking call.
    conn: ConnectionManager,
    /// Opens the dedicated connections of blocking reads.
    client: ::redis::Client,
    /// Idle dedicated connections for `XREADGROUP … BLOCK`, reused by later claims. A
    /// `std::sync::Mutex`: it is only held to push or pop, never across an `.await`.
    blocking: Mutex<Vec<MultiplexedConnection>>,
    keys: Keys,
    options: BackendOptions,
    scripts: Scripts,
    /// Progress of the search for expired leases. Never held across `.await`.
    claims: Mutex<ClaimSchedule>,
    /// The URL without its password, for messages.
    redacted_url: String,
}

/// When a claim needs the claim script, and where its `XAUTOCLAIM` walk stands.
///
/// Scanning the whole pending-entries list on every claim costs Redis time proportional to the
/// work in flight, while a lease can only expire with time passing; so a full walk starts at
/// most every [`autoclaim_interval`] and, once started, continues claim by claim until it
/// wraps around. Between walks, while no retry is known to be due and the script ran less than
/// [`CLAIM_SCRIPT_INTERVAL`] ago, a claim is a plain `XREADGROUP`: the script's only other
/// work is moving due retries back, and copying every entry through Lua costs Redis more than
/// the read itself.
struct ClaimSchedule {
    /// Where the next scan starts (`0-0`: a fresh walk).
    cursor: String,
    /// When the next fresh walk may start.
    next_scan: tokio::time::Instant,
    /// When the claim script must run again (retries scheduled by other consumers are only
    /// seen by it).
    next_script: tokio::time::Instant,
    /// Due time (epoch ms) of the next waiting retry, as the script last saw it.
    retry_due: Option<i64>,
}

impl ClaimSchedule {
    /// Whether a plain read of new entries is all this claim needs to do.
    fn plain_read_will_do(&self, now: tokio::time::Instant, now_ms: i64) -> bool {
        self.cursor == AUTOCLAIM_START
            && now < self.next_scan
            && now < self.next_script
            && self.retry_due.is_none_or(|due| due > now_ms)
    }
}

/// Longest a busy consumer goes without running the claim script (which moves due retries
/// back to the stream): bounds how late a retry scheduled by another consumer is noticed.
const CLAIM_SCRIPT_INTERVAL: Duration = Duration::from_millis(100);

const AUTOCLAIM_START: &str = "0-0";

/// How often a fresh walk for expired leases starts: a quarter of the visibility timeout, so
/// redelivery comes at most that late, within 10 ms .. 1 s.
fn autoclaim_interval(visibility_timeout: Duration) -> Duration {
    (visibility_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// A failed Redis call: the Redis error, or no answer within [`CALL_DEADLINE`].
enum CallError {
    Redis(RedisError),
    Deadline,
}

impl From<RedisError> for CallError {
    fn from(e: RedisError) -> Self {
        CallError::Redis(e)
    }
}

impl CallError {
    /// The consumer group is missing: Redis restarted without persistence or was flushed.
    fn is_nogroup(&self) -> bool {
        match self {
            CallError::Redis(e) => e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP"),
            CallError::Deadline => false,
        }
    }

    fn into_backend(self, what: &str, url: &str) -> BackendError {
        match self {
            CallError::Deadline => BackendError::Unavailable(format!(
                "{what}: no answer from redis at {url} within {CALL_DEADLINE:?}"
            )),
            CallError::Redis(e) => {
                let transient = e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::MasterDown
                        )
                    );
                if transient {
                    BackendError::Unavailable(format!("{what}: redis at {url}: {e}"))
                } else {
                    BackendError::Failed(format!("{what}: redis at {url}: {e}"))
                }
            }
        }
    }
}

/// Bounds a Redis call by [`CALL_DEADLINE`].
async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(CALL_DEADLINE, fut).await {
        Ok(r) => r.map_err(CallError::Redis),
        Err(_) => Err(CallError::Deadline),
    }
}

impl RedisBackend {
    /// Connects to `url` (the password never appears in errors or logs), and creates the
    /// consumer group if it does not exist yet. Fails with [`BackendError::Unavailable`] when
    /// Redis does not answer within about a second.
    pub async fn connect(url: &str, prefix: &str, options: BackendOptions) -> BackendResult<Self> {
        let redacted_url = redact_url(url);
        if url.starts_with("rediss://") {
            return Err(BackendError::Failed(format!(
                "{redacted_url}: TLS (rediss://) is not supported by this build; \
                 use redis:// (for example through a TLS-terminating proxy)"
            )));
        }
        let client = ::redis::Client::open(url)
            .map_err(|e| BackendError::Failed(format!("invalid redis URL {redacted_url}: {e}")))?;
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
                return Err(CallError::Redis(e).into_backend("connect", &redacted_url));
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
            claims: Mutex::new(ClaimSchedule {
                cursor: AUTOCLAIM_START.into(),
                next_scan: tokio::time::Instant::now(),
                next_script: tokio::time::Instant::now(),
                retry_due: None,
            }),
            redacted_url,
        };
        backend
            .ensure_group()
            .await
            .map_err(|e| e.into_backend("create consumer group", &backend.redacted_url))?;
        tracing::debug!(url = %backend.redacted_url, prefix, "redis backend connected");
        Ok(backend)
    }

    fn fail(&self, what: &str) -> impl FnOnce(CallError) -> BackendError + '_ {
        let what = what.to_string();
        move |e| e.into_backend(&what, &self.redacted_url)
    }

    /// Creates the consumer group (and the stream) unless it exists.
    ///
    /// The group starts at `0`, not `$`: entries added before the group exists (a webhook
    /// enqueuing after Redis lost its data, before any claim re-created the group) must still
    /// be delivered. Settled entries are deleted, so reading from `0` never replays work that
    /// was done.
    async fn ensure_group(&self) -> Result<(), CallError> {
        let mut conn = self.conn.clone();
        let created = bounded(
            ::redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&self.keys.stream)
                .arg(keys::GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut conn),
        )
        .await;
        match created {
            Err(CallError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// One claim script run: due retries moved back, expired leases taken over, new entries
    /// read. Returns the deliveries and when the next waiting retry is due (epoch ms).
    async fn claim_now(
        &self,
        consumer: &str,
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<i64>), CallError> {
        let now_instant = tokio::time::Instant::now();
        let (scan, cursor) = {
            let st = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            let scan = st.cursor != AUTOCLAIM_START || now_instant >= st.next_scan;
            (scan, st.cursor.clone())
        };
        let now = epoch_millis(SystemTime::now());
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.key(&self.keys.stream)
            .key(&self.keys.retry)
            .arg(keys::GROUP)
            .arg(consumer)
            .arg(max)
            .arg(self.options.visibility_timeout.as_millis() as u64)
            .arg(now)
            .arg(&cursor)
            .arg(PROMOTE_PER_CLAIM)
            .arg(if scan { "1" } else { "0" });
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = bounded(inv.invoke_async(&mut conn)).await?;
        let mut items = reply.into_iter();
        let next_cursor = items.next().and_then(|v| text(&v));
        let next_due = items.next().and_then(|v| integer(&v)).filter(|d| *d >= 0);
        {
            let mut st = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            if let (true, Some(next_cursor)) = (scan, next_cursor) {
                if next_cursor == AUTOCLAIM_START {
                    st.next_scan =
                        now_instant + autoclaim_interval(self.options.visibility_timeout);
                }
                st.cursor = next_cursor;
            }
            st.next_script = now_instant + CLAIM_SCRIPT_INTERVAL;
            st.retry_due = next_due;
        }
        let rest: Vec<Value> = items.collect();
        let mut out = Vec::with_capacity(rest.len() / 5);
        for d in rest.chunks_exact(5) {
            let (Some(entry), Some(count)) = (text(&d[0]), integer(&d[1])) else {
                continue;
            };
            if let Some(delivery) = delivery(
                &entry,
                count,
                consumer,
                text(&d[2]).as_deref(),
                text(&d[3]),
                text(&d[4]).as_deref(),
            ) {
                out.push(delivery);
            }
        }
        Ok((out, next_due))
    }

    async fn blocking_connection(&self) -> Result<MultiplexedConnection, CallError> {
        let idle = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        if let Some(conn) = idle {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(MAX_BLOCK_SLICE + CALL_DEADLINE));
        bounded(
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
    }

    /// Waits up to `block` for new entries on a dedicated connection. The read is never
    /// abandoned midway (that could strand delivered entries until the visibility timeout);
    /// `block` is kept short instead.
    /// New entries for `consumer`, without waiting: a plain `XREADGROUP … >` on the shared
    /// connection (no `BLOCK`, so it never stalls it).
    async fn read_new(&self, consumer: &str, max: usize) -> Result<Vec<Delivery>, CallError> {
        let mut conn = self.conn.clone();
        let reply = bounded(
            ::redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(keys::GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(max)
                .arg("STREAMS")
                .arg(&self.keys.stream)
                .arg(">")
                .query_async::<Value>(&mut conn),
        )
        .await?;
        Ok(stream_read_deliveries(&reply, consumer))
    }

    async fn blocking_read(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, CallError> {
        let mut conn = self.blocking_connection().await?;
        let block_ms = (block.as_millis() as u64).max(1);
        let reply = ::redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(keys::GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.keys.stream)
            .arg(">")
            .query_async::<Value>(&mut conn)
            .await?;
        // Only a connection that just answered goes back to the pool; a failed one is dropped.
        self.blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
        Ok(stream_read_deliveries(&reply, consumer))
    }

    /// Runs the settle script once. Returns the acked entries whose lease was not current
    /// (another consumer claimed or settled them after this lease ran out); then nothing was
    /// written. Settlements holding another backend's lease are left out: they settle nothing.
    async fn settle_once(&self, settlements: &[Settlement]) -> Result<Vec<String>, CallError> {
        // Acks grouped by the consumer that holds them (one group in practice), each group
        // with its lowest and highest entry id, for the script's one XPENDING range per group.
        let mut groups: Vec<AckGroup<'_>> = Vec::new();
        let mut sums = Sums::default();
        for s in settlements {
            let (
                Settlement::Ack { effect, .. },
                Lease::Redis {
                    entry,
                    consumer,
                    deliveries,
                },
            ) = (s, &s.delivery().lease)
            else {
                continue;
            };
            let at = match groups.iter().position(|g| g.consumer == consumer) {
                Some(at) => at,
                None => {
                    groups.push(AckGroup::new(consumer));
                    groups.len() - 1
                }
            };
            groups[at].add(entry, *deliveries);
            sums.extend(effect.iter().flat_map(|e| &e.increments));
        }
        let now = epoch_millis(SystemTime::now());
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(&self.keys.stream)
            .key(&self.keys.retry)
            .key(&self.keys.dlq)
            .key(&self.keys.registry)
            .arg(keys::GROUP)
            .arg(self.keys.metric_prefix())
            .arg(maps::PER_MINUTE_PREFIX)
            .arg(MINUTE_MAP_TTL_SECS)
            .arg(now)
            .arg(maps::COUNTERS)
            .arg(counting::RETRY.join(" "))
            .arg(counting::DEAD_LETTER.join(" "))
            .arg(groups.len());
        for g in &groups {
            inv.arg(g.consumer)
                .arg(g.lowest.map_or("-", |(_, e)| e))
                .arg(g.highest.map_or("+", |(_, e)| e))
                .arg(g.entries.len());
            for (entry, deliveries) in &g.entries {
                inv.arg(*entry).arg(*deliveries);
            }
        }
        inv.arg(sums.len());
        for (map, field, by) in sums.iter() {
            inv.arg(map).arg(field).arg(by);
        }
        for s in settlements {
            let Lease::Redis {
                entry,
                consumer,
                deliveries,
            } = &s.delivery().lease
            else {
                continue;
            };
            match s {
                Settlement::Ack { .. } => {}
                Settlement::Retry {
                    delivery,
                    not_before,
                    ..
                } => {
                    inv.arg("R")
                        .arg(entry)
                        .arg(consumer)
                        .arg(deliveries)
                        .arg(delivery.attempt)
                        .arg(epoch_millis(*not_before));
                }
                Settlement::DeadLetter {
                    delivery,
                    reason,
                    error,
                } => {
                    inv.arg("D")
                        .arg(entry)
                        .arg(consumer)
                        .arg(deliveries)
                        .arg(delivery.attempt)
                        .arg(reason.as_str())
                        .arg(error);
                }
            }
        }
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async::<Vec<String>>(&mut conn)).await
    }

    /// Runs `call`, and once more after re-creating the consumer group if Redis lost it (a
    /// restart without persistence).
    async fn with_group<T, Fut>(&self, call: impl Fn() -> Fut) -> Result<T, CallError>
    where
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        match call().await {
            Err(e) if e.is_nogroup() => {
                tracing::warn!(url = %self.redacted_url, "consumer group missing; re-creating it");
                self.ensure_group().await?;
                call().await
            }
            other => other,
        }
    }
}

/// The acks of one batch held by one consumer, as the settle script checks them.
struct AckGroup<'a> {
    consumer: &'a str,
    /// `(entry id, lease delivery count)`.
    entries: Vec<(&'a str, u64)>,
    /// The lowest and highest entry id, by stream order.
    lowest: Option<((u64, u64), &'a str)>,
    highest: Option<((u64, u64), &'a str)>,
}

impl<'a> AckGroup<'a> {
    fn new(consumer: &'a str) -> Self {
        AckGroup {
            consumer,
            entries: Vec::new(),
            lowest: None,
            highest: None,
        }
    }

    fn add(&mut self, entry: &'a str, deliveries: u64) {
        self.entries.push((entry, deliveries));
        // An id Redis did not make cannot be ordered: then the range is the whole stream.
        let Some(at) = stream_position(entry) else {
            self.lowest = Some(((0, 0), "-"));
            self.highest = Some(((u64::MAX, u64::MAX), "+"));
            return;
        };
        if self.lowest.is_none_or(|(low, _)| at < low) {
            self.lowest = Some((at, entry));
        }
        if self.highest.is_none_or(|(high, _)| at > high) {
            self.highest = Some((at, entry));
        }
    }
}

/// A stream entry id `<ms>-<seq>` as a sortable pair.
fn stream_position(entry: &str) -> Option<(u64, u64)> {
    let (ms, seq) = entry.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn delivery(
    entry: &str,
    deliveries: i64,
    consumer: &str,
    event_id: Option<&str>,
    payload: Option<String>,
    failures: Option<&str>,
) -> Option<Delivery> {
    let event_id = EventId::parse(event_id?).ok()?;
    let failures: u32 = failures.and_then(|f| f.parse().ok()).unwrap_or(0);
    Some(Delivery {
        lease: Lease::Redis {
            entry: entry.to_string(),
            consumer: consumer.to_string(),
            deliveries: deliveries.max(0) as u64,
        },
        event_id,
        payload: payload.unwrap_or_default(),
        attempt: failures.saturating_add(1),
    })
}

/// Deliveries of an `XREADGROUP … >` reply: first deliveries, so their delivery count is 1.
fn stream_read_deliveries(reply: &Value, consumer: &str) -> Vec<Delivery> {
    let mut out = Vec::new();
    let streams: Vec<&Value> = match reply {
        Value::Array(streams) => streams.iter().collect(),
        Value::Map(streams) => streams.iter().map(|(_, v)| v).collect(),
        _ => return out,
    };
    for stream in streams {
        // RESP2: [name, entries]; RESP3 map values are the entries themselves.
        let entries = match stream {
            Value::Array(pair) if pair.len() == 2 && matches!(pair[1], Value::Array(_)) => &pair[1],
            other => other,
        };
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let (Some(id), Some(fields)) = (parts.first().and_then(text), parts.get(1)) else {
                continue;
            };
            let f = field_map(fields);
            if let Some(d) = delivery(
                &id,
                1,
                consumer,
                f.get("id").map(String::as_str),
                f.get("payload").cloned(),
                f.get("failures").map(String::as_str),
            ) {
                out.push(d);
            }
        }
    }
    out
}

/// A stream entry's fields (`[k, v, k, v, …]` or a map) as strings.
fn field_map(fields: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    match fields {
        Value::Array(kv) => {
            for pair in kv.chunks_exact(2) {
                if let (Some(k), Some(v)) = (text(&pair[0]), text(&pair[1])) {
                    out.insert(k, v);
                }
            }
        }
        Value::Map(kv) => {
            for (k, v) in kv {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        Value::Int(i) => Some(*i as f64),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// `[field, score, field, score, …]` as pairs.
fn scored_pairs(v: &Value) -> Vec<(String, f64)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .chunks_exact(2)
        .filter_map(|p| Some((text(&p[0])?, number(&p[1])?)))
        .collect()
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

    async fn enqueue(&self, events: Vec<QueuedEvent>) -> BackendResult<Vec<EnqueueOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.enqueue.prepare_invoke();
        inv.key(&self.keys.stream)
            .key(self.keys.metric(maps::COUNTERS))
            .key(&self.keys.registry)
            .arg(self.keys.seen_prefix())
            .arg(self.options.idempotency_ttl.as_millis().max(1) as u64)
            .arg(maps::COUNTERS)
            .arg(counters::ACCEPTED)
            .arg(counters::DUPLICATES);
        for e in &events {
            inv.arg(e.event_id.as_str()).arg(&e.payload);
        }
        let mut conn = self.conn.clone();
        let flags: Vec<i64> = bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("enqueue"))?;
        if flags.len() != events.len() {
            return Err(BackendError::Failed(format!(
                "enqueue: redis answered {} outcomes for {} events",
                flags.len(),
                events.len()
            )));
        }
        Ok(flags
            .into_iter()
            .map(|f| {
                if f == 1 {
                    EnqueueOutcome::Accepted
                } else {
                    EnqueueOutcome::Duplicate
                }
            })
            .collect())
    }

    async fn claim_batch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        let plain = self
            .claims
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .plain_read_will_do(tokio::time::Instant::now(), epoch_millis(SystemTime::now()));
        if plain {
            // An empty read, or a lost group (the script re-creates it), goes on below.
            match self.read_new(consumer, max).await {
                Ok(got) if !got.is_empty() => return Ok(got),
                Ok(_) => {}
                Err(e) if e.is_nogroup() => {}
                Err(e) => return Err(self.fail("claim")(e)),
            }
        }
        loop {
            let (got, next_due) = self
                .with_group(|| self.claim_now(consumer, max))
                .await
                .map_err(self.fail("claim"))?;
            if !got.is_empty() {
                return Ok(got);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || cancel.is_cancelled() {
                return Ok(Vec::new());
            }
            let mut slice = (deadline - now).min(MAX_BLOCK_SLICE);
            if let Some(due) = next_due {
                let in_ms = (due - epoch_millis(SystemTime::now())).max(1) as u64;
                slice = slice.min(Duration::from_millis(in_ms));
            }
            // Deliberately not raced against `cancel`: dropping a read in flight could strand
            // entries Redis already delivered until their lease runs out. A slice is short.
            let got = self
                .with_group(|| self.blocking_read(consumer, max, slice))
                .await
                .map_err(self.fail("claim (blocking read)"))?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> BackendResult<()> {
        let mut settlements = settlements;
        // Each pass drops at least one ack (the stale ones are among them), so this ends.
        while !settlements.is_empty() {
            let stale: HashSet<String> = self
                .with_group(|| self.settle_once(&settlements))
                .await
                .map_err(self.fail("settle"))?
                .into_iter()
                .collect();
            if stale.is_empty() {
                return Ok(());
            }
            tracing::debug!(
                count = stale.len(),
                "acks for entries settled by another consumer dropped"
            );
            settlements.retain(|s| match (s, &s.delivery().lease) {
                (Settlement::Ack { .. }, Lease::Redis { entry, .. }) => !stale.contains(entry),
                _ => true,
            });
        }
        Ok(())
    }

    /// Queue depth = `XLEN` of the stream (unread + in flight: settled entries are deleted)
    /// + `ZCARD` of the retry set; DLQ depth = `XLEN` of the DLQ stream. Read atomically.
    async fn depths(&self) -> BackendResult<Depths> {
        let mut conn = self.conn.clone();
        let (stream, retry, dlq): (u64, u64, u64) = bounded(
            ::redis::pipe()
                .atomic()
                .cmd("XLEN")
                .arg(&self.keys.stream)
                .cmd("ZCARD")
                .arg(&self.keys.retry)
                .cmd("XLEN")
                .arg(&self.keys.dlq)
                .query_async(&mut conn),
        )
        .await
        .map_err(self.fail("depths"))?;
        Ok(Depths {
            queue: stream + retry,
            dlq,
        })
    }

    async fn dlq_list(&self, limit: usize, offset: usize) -> BackendResult<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let reply: Value = bounded(
            ::redis::cmd("XRANGE")
                .arg(&self.keys.dlq)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(offset.saturating_add(limit))
                .query_async(&mut conn),
        )
        .await
        .map_err(self.fail("dlq list"))?;
        let Value::Array(entries) = reply else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in entries.iter().skip(offset).take(limit) {
            let Value::Array(parts) = entry else { continue };
            let Some(fields) = parts.get(1) else { continue };
            let f = field_map(fields);
            let get = |k: &str| f.get(k).cloned().unwrap_or_default();
            let Ok(event_id) = EventId::parse(&get("id")) else {
                continue;
            };
            out.push(DeadLetter {
                event_id,
                event: payload_value(&get("payload")),
                failure_reason: get("failure_reason"),
                error: get("error"),
                attempts: get("attempts").parse().unwrap_or(0),
                failed_at: format_millis(get("failed_at").parse().unwrap_or(0)),
            });
        }
        Ok(out)
    }

    async fn dlq_replay(&self, which: DlqSelection) -> BackendResult<u64> {
        let ids: Vec<&str> = match &which {
            DlqSelection::All => Vec::new(),
            DlqSelection::Ids(ids) if ids.is_empty() => return Ok(0),
            DlqSelection::Ids(ids) => ids.iter().map(EventId::as_str).collect(),
        };
        // Chosen ids are all moved by one call; "all" moves in steps so no single script
        // blocks Redis for long.
        let step = if ids.is_empty() {
            REPLAY_STEP
        } else {
            usize::MAX
        };
        let mut total = 0u64;
        loop {
            let mut inv = self.scripts.dlq_replay.prepare_invoke();
            inv.key(&self.keys.dlq)
                .key(&self.keys.stream)
                .arg(step.min(i64::MAX as usize))
                .arg(&ids);
            let mut conn = self.conn.clone();
            let moved: u64 = bounded(inv.invoke_async(&mut conn))
                .await
                .map_err(self.fail("dlq replay"))?;
            total += moved;
            if (moved as usize) < step || !ids.is_empty() {
                return Ok(total);
            }
        }
    }

    async fn dlq_purge(&self) -> BackendResult<u64> {
        let mut inv = self.scripts.dlq_purge.prepare_invoke();
        inv.key(&self.keys.dlq);
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("dlq purge"))
    }

    async fn record(&self, increments: Vec<Increment>) -> BackendResult<()> {
        if increments.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.record.prepare_invoke();
        inv.key(&self.keys.registry)
            .arg(self.keys.metric_prefix())
            .arg(maps::PER_MINUTE_PREFIX)
            .arg(MINUTE_MAP_TTL_SECS);
        for i in &increments {
            inv.arg(&i.map).arg(&i.field).arg(i.by);
        }
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async::<i64>(&mut conn))
            .await
            .map_err(self.fail("record"))?;
        Ok(())
    }

    async fn metrics(&self) -> BackendResult<MetricsSnapshot> {
        let mut inv = self.scripts.metrics.prepare_invoke();
        inv.key(&self.keys.registry)
            .arg(self.keys.metric_prefix())
            .arg(maps::USERS)
            .arg(maps::USAGE_BY_USER)
            .arg(TOP_USERS);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("metrics"))?;
        let mut snapshot = MetricsSnapshot::default();
        for pair in reply.chunks_exact(2) {
            let Some(name) = text(&pair[0]) else { continue };
            match MapShape::of(&name) {
                MapShape::Distinct => {
                    snapshot.distinct_users = integer(&pair[1]).unwrap_or(0) as u64
                }
                MapShape::Ranked => snapshot.top_users = scored_pairs(&pair[1]),
                MapShape::Summed => {
                    snapshot
                        .maps
                        .insert(name, scored_pairs(&pair[1]).into_iter().collect());
                }
            }
        }
        Ok(snapshot)
    }
}
