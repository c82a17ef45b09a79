//! Claiming a batch: the claim script (due retries moved back to the stream, expired leases
//! taken over with `XAUTOCLAIM`, new entries read), a plain `XREADGROUP` between its runs, and
//! the wait for new entries as `XREADGROUP … BLOCK` on dedicated connections.

use std::time::{Duration, SystemTime};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Value};
use tokio_util::sync::CancellationToken;

use super::error::{bounded, CallError, CALL_DEADLINE};
use super::reply::{delivery, integer, stream_read_deliveries, text};
use super::{keys, RedisBackend, CONNECT_TIMEOUT};
use crate::backend::{epoch_millis, BackendResult, Delivery};

/// Longest single `XREADGROUP … BLOCK`: bounds how late cancellation, due retries and expired
/// leases are noticed by a waiting claimer.
const MAX_BLOCK_SLICE: Duration = Duration::from_millis(500);
/// Most due retries moved back to the stream per claim.
const PROMOTE_PER_CLAIM: usize = 1000;

/// When a claim needs the claim script, and where its `XAUTOCLAIM` walk stands.
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
}

impl ClaimSchedule {
    /// A schedule whose first claim runs the script and starts a fresh walk.
    pub(super) fn new() -> Self {
        ClaimSchedule {
            cursor: AUTOCLAIM_START.into(),
            next_scan: tokio::time::Instant::now(),
            next_script: tokio::time::Instant::now(),
            retry_due: None,
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

/// Longest a busy consumer goes without running the claim script (which moves due retries
/// back to the stream): bounds how late a retry scheduled by another consumer is noticed.
const CLAIM_SCRIPT_INTERVAL: Duration = Duration::from_millis(100);

const AUTOCLAIM_START: &str = "0-0";

/// How often a fresh walk for expired leases starts: a quarter of the visibility timeout, so
/// redelivery comes at most that late, within 10 ms .. 1 s.
fn autoclaim_interval(visibility_timeout: Duration) -> Duration {
    (visibility_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

impl RedisBackend {
    /// Up to `max` deliveries for `consumer`, waiting up to `wait` (in short blocking slices)
    /// while there are none; returns early, possibly empty, once `cancel` fires.
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

    /// An idle dedicated connection from the pool, or a new one.
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

    /// Waits up to `block` for new entries on a dedicated connection. The read is never
    /// abandoned midway (that could strand delivered entries until the visibility timeout);
    /// `block` is kept short instead.
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
}
