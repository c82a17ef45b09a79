//! Claiming a batch across partitions: a walk over the partitions (starting one further each
//! claim, so none is starved; all at once while the queue keeps up, one by one under a
//! backlog) that runs each one's claim script (due retries moved back to the stream, expired
//! leases taken over with `XAUTOCLAIM`) when due and reads new entries with a plain
//! `XREADGROUP`; and, when every partition came up empty, the wait for new
//! entries: `XREADGROUP … BLOCK` over every stream on one server, the sharded Pub/Sub bell on
//! a cluster.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Value};
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::conn::CONNECT_TIMEOUT;
use super::error::{bounded, CallError, CALL_DEADLINE};
use super::reply::{delivery, integer, stream_read_deliveries, text};
use super::{keys, Partition, RedisBackend, Waiter};
use crate::backend::{epoch_millis, BackendResult, Delivery};

/// Longest single wait for new entries: bounds how late cancellation, due retries and expired
/// leases are noticed by a waiting claimer (and, on a cluster, an entry whose bell was missed).
const MAX_BLOCK_SLICE: Duration = Duration::from_millis(500);
/// Most due retries moved back to the stream per claim.
const PROMOTE_PER_CLAIM: usize = 1000;

/// When a partition's claim needs the claim script, and where its `XAUTOCLAIM` walk stands.
///
/// Scanning the whole pending-entries list on every claim costs Redis time proportional to the
/// work in flight, while a lease can only expire with time passing; so a full walk starts at
/// most every [`autoclaim_interval`] and, once started, continues claim by claim until it
/// wraps around. Between walks, while no retry is known to be due and the script ran less than
/// [`CLAIM_SCRIPT_INTERVAL`] ago, a claim is a plain `XREADGROUP`: the script's only other
/// work is moving due retries back, and copying every entry through Lua costs Redis more than
/// the read itself.
pub(super) struct ClaimSchedule {
    /// Where the next scan starts (`0-0`: a fresh walk).
    cursor: String,
    /// When the next fresh walk may start.
    next_scan: tokio::time::Instant,
    /// When the claim script must run again (retries scheduled by other consumers are only
    /// seen by it).
    next_script: tokio::time::Instant,
    /// Due time (epoch ms) of the next waiting retry, as the script last saw it.
    retry_due: Option<i64>,
    /// Whether the last claim on this partition failed (logged once per outage).
    failing: bool,
}

impl ClaimSchedule {
    /// A schedule whose first claim runs the script and starts a fresh walk.
    pub(super) fn new() -> Self {
        ClaimSchedule {
            cursor: AUTOCLAIM_START.into(),
            next_scan: tokio::time::Instant::now(),
            next_script: tokio::time::Instant::now(),
            retry_due: None,
            failing: false,
        }
    }

    /// Whether a plain read of new entries is all this claim needs to do.
    fn plain_read_will_do(&self, now: tokio::time::Instant, now_ms: i64) -> bool {
        self.cursor == AUTOCLAIM_START
            && now < self.next_scan
            && now < self.next_script
            && self.retry_due.is_none_or(|due| due > now_ms)
    }
}

/// Longest a busy consumer goes without running a partition's claim script (which moves due
/// retries back to the stream): bounds how late a retry scheduled by another consumer is
/// noticed.
const CLAIM_SCRIPT_INTERVAL: Duration = Duration::from_millis(100);

const AUTOCLAIM_START: &str = "0-0";

/// How often a fresh walk for expired leases starts: a quarter of the visibility timeout, so
/// redelivery comes at most that late, within 10 ms .. 1 s.
fn autoclaim_interval(visibility_timeout: Duration) -> Duration {
    (visibility_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// What one walk over the partitions found so far.
#[derive(Default)]
struct Walked {
    out: Vec<Delivery>,
    /// Earliest due time (epoch ms) of a waiting retry seen.
    next_due: Option<i64>,
    /// Whether some partition answered (a walk fails only when none did).
    answered: bool,
    /// The last partition error, reported when no partition answered.
    failed: Option<crate::backend::BackendError>,
    /// Whether some partition gave all it was asked for (it may hold more).
    backlog: bool,
}

impl RedisBackend {
    /// Up to `max` deliveries for `consumer`, waiting up to `wait` (in short slices) while
    /// there are none; returns early, possibly empty, once `cancel` fires.
    pub(super) async fn claim(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let spilled = self.take_spill(consumer, max);
        if !spilled.is_empty() {
            return Ok(spilled);
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Listening before the walk: an entry enqueued while it runs still rings.
        let mut bell = self.bell().await;
        loop {
            let (got, next_due) = self.walk(consumer, max).await?;
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
            match (&self.waiter, bell.as_mut()) {
                (Waiter::Blocking { .. }, _) => {
                    // Deliberately not raced against `cancel`: dropping a read in flight could
                    // strand entries Redis already delivered until their lease runs out.
                    let got = self
                        .blocking_read(consumer, max, slice)
                        .await
                        .map_err(self.fail("claim (blocking read)"))?;
                    if !got.is_empty() {
                        return Ok(got);
                    }
                }
                (Waiter::Bell { .. }, Some(rung)) => {
                    tokio::select! {
                        _ = rung.changed() => {}
                        _ = tokio::time::sleep(slice) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
                (Waiter::Bell { .. }, None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(slice) => {}
                        _ = cancel.cancelled() => {}
                    }
                }
            }
        }
    }

    /// One walk over every partition, from the next starting point on, for up to `max`
    /// deliveries. After a walk that left work behind it goes partition by partition until
    /// `max` are in hand, so a batch comes from as few partitions as possible (each costs its
    /// own settle call). Otherwise (the queue keeps up with its input) it asks every partition
    /// at once for its share of `max`: one round trip instead of one per partition, which is
    /// what an event's latency would otherwise pay. A partition that fails is skipped (its
    /// primary may be failing over); the claim fails only when every partition did. Returns
    /// the deliveries and the earliest due time of a waiting retry.
    async fn walk(
        &self,
        consumer: &str,
        max: usize,
    ) -> BackendResult<(Vec<Delivery>, Option<i64>)> {
        let n = self.partitions.len();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed) % n;
        let order = (0..n).map(|i| &self.partitions[(start + i) % n]);
        let mut walked = Walked::default();
        if n > 1 && !self.backlog.load(Ordering::Relaxed) {
            let share = (max / n).max(1);
            let claims =
                order.map(|p| async move { (p, self.claim_partition(p, consumer, share).await) });
            for (p, result) in join_all(claims).await {
                self.note_claim(&mut walked, p, share, result);
            }
        } else {
            for p in order {
                let asked = max - walked.out.len();
                let result = self.claim_partition(p, consumer, asked).await;
                self.note_claim(&mut walked, p, asked, result);
                if walked.out.len() >= max {
                    break;
                }
            }
        }
        self.backlog.store(walked.backlog, Ordering::Relaxed);
        let mut out = walked.out;
        if out.len() > max {
            // n shares of at least one each can exceed a `max` below n.
            let extra = out.split_off(max);
            self.keep_for_next_claim(consumer, extra);
        }
        match walked.failed {
            Some(e) if !walked.answered => Err(e),
            _ => Ok((out, walked.next_due)),
        }
    }

    /// Adds one partition's claim (`asked` deliveries at most) to a walk.
    fn note_claim(
        &self,
        walked: &mut Walked,
        p: &Partition,
        asked: usize,
        result: Result<(Vec<Delivery>, Option<i64>), CallError>,
    ) {
        match result {
            Ok((got, due)) => {
                walked.answered = true;
                walked.backlog |= got.len() >= asked;
                walked.out.extend(got);
                walked.next_due = match (walked.next_due, due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                self.note_partition(p, None);
            }
            Err(e) => {
                let e = self.fail("claim")(e);
                self.note_partition(p, Some(&e));
                walked.failed = Some(e);
            }
        }
    }

    /// Logs a partition's claims starting or ceasing to fail, once each.
    fn note_partition(&self, p: &Partition, error: Option<&crate::backend::BackendError>) {
        let mut st = p.claims.lock().unwrap_or_else(|e| e.into_inner());
        match (st.failing, error) {
            (false, Some(e)) => {
                tracing::warn!(
                    partition = p.keys.partition,
                    "claims failing on a partition: {e}"
                );
                st.failing = true;
            }
            (true, None) => {
                tracing::info!(
                    partition = p.keys.partition,
                    "claims on the partition work again"
                );
                st.failing = false;
            }
            _ => {}
        }
    }

    /// Up to `max` deliveries from one partition: a plain read when the schedule allows it,
    /// else the claim script.
    async fn claim_partition(
        &self,
        p: &Partition,
        consumer: &str,
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<i64>), CallError> {
        let (plain, due) = {
            let st = p.claims.lock().unwrap_or_else(|e| e.into_inner());
            let plain =
                st.plain_read_will_do(tokio::time::Instant::now(), epoch_millis(SystemTime::now()));
            (plain, st.retry_due)
        };
        if plain {
            // A lost group goes on to the script, which runs under `with_group`.
            match self.read_new(p, consumer, max).await {
                Ok(got) => return Ok((got, due)),
                Err(e) if e.is_nogroup() => {}
                Err(e) => return Err(e),
            }
        }
        self.with_group(&p.keys, || async {
            let (mut got, due) = self.claim_now(p, consumer, max).await?;
            if got.len() < max {
                match self.read_new(p, consumer, max - got.len()).await {
                    Ok(new) => got.extend(new),
                    // What the script took over is this consumer's now: hand it out; the
                    // next claim meets the error again if it lasts.
                    Err(e) if got.is_empty() => return Err(e),
                    Err(_) => {}
                }
            }
            Ok((got, due))
        })
        .await
    }

    /// One claim script run on partition `p`: due retries moved back to the stream (the plain
    /// read that follows delivers them), expired leases taken over. Returns those deliveries
    /// and when the next waiting retry is due (epoch ms).
    async fn claim_now(
        &self,
        p: &Partition,
        consumer: &str,
        max: usize,
    ) -> Result<(Vec<Delivery>, Option<i64>), CallError> {
        let now_instant = tokio::time::Instant::now();
        let (scan, cursor) = {
            let st = p.claims.lock().unwrap_or_else(|e| e.into_inner());
            let scan = st.cursor != AUTOCLAIM_START || now_instant >= st.next_scan;
            (scan, st.cursor.clone())
        };
        let now = epoch_millis(SystemTime::now());
        let mut inv = self.scripts.claim.prepare_invoke();
        inv.key(&p.keys.stream)
            .key(&p.keys.retry)
            .arg(keys::GROUP)
            .arg(consumer)
            .arg(max)
            .arg(self.options.visibility_timeout.as_millis() as u64)
            .arg(now)
            .arg(&cursor)
            .arg(PROMOTE_PER_CLAIM)
            .arg(if scan { "1" } else { "0" });
        let mut conn = self.conn.get();
        let reply: Vec<Value> = bounded(inv.invoke_async(&mut conn)).await?;
        let mut items = reply.into_iter();
        let next_cursor = items.next().and_then(|v| text(&v));
        let next_due = items.next().and_then(|v| integer(&v)).filter(|d| *d >= 0);
        {
            let mut st = p.claims.lock().unwrap_or_else(|e| e.into_inner());
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
                p.keys.partition,
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

    /// New entries of partition `p` for `consumer`, without waiting: a plain `XREADGROUP … >`
    /// on the shared connection (no `BLOCK`, so it never stalls it).
    async fn read_new(
        &self,
        p: &Partition,
        consumer: &str,
        max: usize,
    ) -> Result<Vec<Delivery>, CallError> {
        let mut conn = self.conn.get();
        let reply = bounded(
            ::redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(keys::GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(max)
                .arg("STREAMS")
                .arg(&p.keys.stream)
                .arg(">")
                .query_async::<Value>(&mut conn),
        )
        .await?;
        Ok(stream_read_deliveries(&reply, consumer, |_| {
            Some(p.keys.partition)
        }))
    }

    /// The cluster bell's receiver, subscribing on first use; `None` on one server (which
    /// blocks on the streams instead) or when subscribing failed (then waits are plain slices).
    async fn bell(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let Waiter::Bell {
            client,
            subscribed,
            rung,
        } = &self.waiter
        else {
            return None;
        };
        let receiver = rung.subscribe();
        let subscribe = || async {
            let mut conn = bounded(client.get_async_connection()).await?;
            // One channel per call: the partitions' channels live in different slots.
            for p in &self.partitions {
                bounded(conn.ssubscribe(&p.keys.ready)).await?;
            }
            Ok::<_, CallError>(conn)
        };
        match subscribed.get_or_try_init(subscribe).await {
            Ok(_) => Some(receiver),
            Err(e) => {
                tracing::warn!(
                    "cannot subscribe to the partitions' wake-up channels (waits fall back to {MAX_BLOCK_SLICE:?} slices): {}",
                    self.fail("subscribe")(e)
                );
                None
            }
        }
    }

    /// Deliveries read past an earlier claim's `max`, up to `max` of them.
    fn take_spill(&self, consumer: &str, max: usize) -> Vec<Delivery> {
        let mut spill = self.spill.lock().unwrap_or_else(|e| e.into_inner());
        let Some(held) = spill.get_mut(consumer) else {
            return Vec::new();
        };
        let rest = held.split_off(max.min(held.len()));
        let taken = std::mem::replace(held, rest);
        if held.is_empty() {
            spill.remove(consumer);
        }
        taken
    }

    /// An idle dedicated connection from the pool, or a new one.
    async fn blocking_connection(
        &self,
        client: &::redis::Client,
        idle: &std::sync::Mutex<Vec<MultiplexedConnection>>,
    ) -> Result<MultiplexedConnection, CallError> {
        let reused = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(conn) = reused {
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(MAX_BLOCK_SLICE + CALL_DEADLINE));
        bounded(client.get_multiplexed_async_connection_with_config(&config)).await
    }

    /// Waits up to `block` for new entries in any partition (one server only), on a dedicated
    /// connection. The read is never abandoned midway (that could strand delivered entries
    /// until the visibility timeout); `block` is kept short instead. Entries past `max` (the
    /// read takes up to `max / partitions`, at least one, from each stream) are kept for the
    /// consumer's next claim.
    async fn blocking_read(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, CallError> {
        let Waiter::Blocking { client, idle } = &self.waiter else {
            return Ok(Vec::new());
        };
        let read = || async {
            let mut conn = self.blocking_connection(client, idle).await?;
            let per_stream = (max / self.partitions.len()).max(1);
            let mut cmd = ::redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(keys::GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(per_stream)
                .arg("BLOCK")
                .arg((block.as_millis() as u64).max(1))
                .arg("STREAMS");
            for p in &self.partitions {
                cmd.arg(&p.keys.stream);
            }
            for _ in &self.partitions {
                cmd.arg(">");
            }
            let reply = cmd.query_async::<Value>(&mut conn).await?;
            // Only a connection that just answered goes back to the pool.
            idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            Ok::<_, CallError>(reply)
        };
        let reply = match read().await {
            Err(e) if e.is_nogroup() => {
                tracing::warn!(url = %self.redacted_url, "consumer group missing; re-creating it");
                for p in &self.partitions {
                    self.ensure_group(&p.keys).await?;
                }
                read().await?
            }
            other => other?,
        };
        let mut got = stream_read_deliveries(&reply, consumer, |stream| {
            self.partitions
                .iter()
                .find(|p| p.keys.stream == stream)
                .map(|p| p.keys.partition)
        });
        if got.len() > max {
            let extra = got.split_off(max);
            self.keep_for_next_claim(consumer, extra);
        }
        Ok(got)
    }

    /// Deliveries leased past a claim's `max`: handed out first by `consumer`'s next claim.
    fn keep_for_next_claim(&self, consumer: &str, extra: Vec<Delivery>) {
        self.spill
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(consumer.to_string())
            .or_default()
            .extend(extra);
    }
}
