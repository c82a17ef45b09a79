//! Enqueueing: per partition, the duplicate check, the enqueue and the accepted/duplicate
//! counters in one enqueue script call; a request's partitions are written concurrently.
//!
//! A signed delivery's mark is written by the same script as its events while the queue has
//! one partition; with several, its events may span slots, and the mark is taken before and
//! confirmed after them (see [`RedisBackend::enqueue_marked`]).

use futures_util::future::try_join_all;

use super::error::{bounded, CallError};
use super::{Partition, RedisBackend, Waiter};
use crate::analytics::Increment;
use crate::analytics::{counters, maps};
use crate::backend::{BackendError, BackendResult, DeliveryMark, EnqueueOutcome, QueuedEvent};
use crate::config::RedisMode;

/// A partitioned queue's delivery mark while its events are being stored.
const MARK_PENDING: &str = "pending";
/// A partitioned queue's delivery mark once its events are stored.
const MARK_DONE: &str = "done";
/// Lifetime of a pending mark: longer than storing a delivery can take (its calls are
/// bounded by the call deadline), short enough that a mark left by a crash soon goes.
const PENDING_MARK_TTL_MS: u64 = 10_000;
/// How often a delivery waiting for a concurrent copy of itself looks at the mark again.
const MARK_POLL: std::time::Duration = std::time::Duration::from_millis(5);

impl RedisBackend {
    /// Enqueues every event whose id was not seen within the idempotency TTL, unless `mark`
    /// is still live; one outcome per event, in order. With replicas to wait for, succeeds
    /// only once they confirmed every write (else [`BackendError::Unavailable`], saying a
    /// resend is safe).
    pub(super) async fn enqueue_batch(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // Events of each partition, by their positions in the request.
        let parts = self.by_partition(0..events.len(), |i| {
            Some(self.partition_number(events[*i].event_id.as_str()))
        });
        if let (Some(mark), true) = (&mark, self.partitions.len() > 1) {
            return self.enqueue_marked(&events, &parts, mark).await;
        }
        let written = try_join_all(
            parts
                .iter()
                .map(|(p, at)| self.enqueue_partition(p, &events, at, mark.as_ref())),
        )
        .await?;
        let outcomes = in_request_order(events.len(), &parts, written);
        if outcomes.contains(&EnqueueOutcome::Accepted) {
            self.wait_for_replicas(parts.iter().map(|(p, _)| *p))
                .await?;
        }
        Ok(outcomes)
    }

    /// A signed delivery on a partitioned queue: its events may span partitions, so the mark
    /// (in the partition of the delivery id) cannot be written by the events' scripts.
    ///
    /// The mark is taken first, `SET NX` as *pending* with a short lifetime; the events are
    /// stored; then the mark becomes *done* for its full TTL. A delivery that finds the mark
    /// done is refused whole (every event a duplicate delivery, counted as duplicates); one
    /// that finds it pending waits for it to settle (a concurrent copy of the same delivery).
    /// When storing fails the mark is deleted again, so the sender's retry is accepted; should
    /// the delete fail too, the pending mark only lives [`PENDING_MARK_TTL_MS`], and a resend
    /// meanwhile is answered 503 (never "duplicate"), so nothing is lost.
    async fn enqueue_marked(
        &self,
        events: &[QueuedEvent],
        parts: &[(&Partition, Vec<usize>)],
        mark: &DeliveryMark,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        let home = self.partition_of(mark.id());
        let key = home.keys.delivery(mark.id());
        let settle_by = tokio::time::Instant::now() + super::CALL_DEADLINE * 2;
        loop {
            let mut conn = self.conn.get();
            let taken: Option<String> = bounded(
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(MARK_PENDING)
                    .arg("NX")
                    .arg("PX")
                    .arg(PENDING_MARK_TTL_MS)
                    .query_async(&mut conn),
            )
            .await
            .map_err(self.fail("enqueue (delivery mark)"))?;
            if taken.is_some() {
                break;
            }
            let state: Option<String> =
                bounded(::redis::cmd("GET").arg(&key).query_async(&mut conn))
                    .await
                    .map_err(self.fail("enqueue (delivery mark)"))?;
            match state.as_deref() {
                Some(MARK_DONE) => {
                    let n = events.len() as f64;
                    self.add_increments(vec![Increment::new(
                        maps::COUNTERS,
                        counters::DUPLICATES,
                        n,
                    )])
                    .await?;
                    return Ok(vec![EnqueueOutcome::DuplicateDelivery; events.len()]);
                }
                Some(_) if tokio::time::Instant::now() >= settle_by => {
                    return Err(BackendError::Unavailable(format!(
                        "delivery {} is being stored by another request; resending is safe",
                        mark.id()
                    )));
                }
                // Pending: a concurrent copy of this delivery is being stored.
                Some(_) => tokio::time::sleep(MARK_POLL).await,
                // Gone between the two calls (expired or released): try to take it again.
                None => {}
            }
        }
        let stored = async {
            let written = try_join_all(
                parts
                    .iter()
                    .map(|(p, at)| self.enqueue_partition(p, events, at, None)),
            )
            .await?;
            self.wait_for_replicas(parts.iter().map(|(p, _)| *p))
                .await?;
            let mut conn = self.conn.get();
            bounded(
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(MARK_DONE)
                    .arg("PX")
                    .arg(mark.ttl_millis())
                    .query_async::<()>(&mut conn),
            )
            .await
            .map_err(self.fail("enqueue (delivery mark)"))?;
            Ok::<_, BackendError>(written)
        };
        match stored.await {
            Ok(written) => Ok(in_request_order(events.len(), parts, written)),
            Err(e) => {
                let mut conn = self.conn.get();
                let released =
                    bounded(::redis::cmd("DEL").arg(&key).query_async::<()>(&mut conn)).await;
                if released.is_err() {
                    tracing::warn!(
                        "delivery mark of a failed enqueue not released; it expires in {PENDING_MARK_TTL_MS} ms"
                    );
                }
                Err(e)
            }
        }
    }

    /// One enqueue script call for the events at positions `at`, all of partition `p`.
    async fn enqueue_partition(
        &self,
        p: &Partition,
        events: &[QueuedEvent],
        at: &[usize],
        mark: Option<&DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        let keys = &p.keys;
        let mut inv = self.scripts.enqueue.prepare_invoke();
        inv.key(&keys.stream)
            .key(keys.metric(maps::COUNTERS))
            .key(&keys.registry);
        if let Some(mark) = mark {
            inv.key(keys.delivery(mark.id()));
        }
        let bell = match self.waiter {
            Waiter::Bell { .. } => keys.ready.as_str(),
            Waiter::Blocking { .. } => "",
        };
        inv.arg(keys.seen_prefix())
            .arg(self.options.idempotency_ttl.as_millis().max(1) as u64)
            .arg(maps::COUNTERS)
            .arg(counters::ACCEPTED)
            .arg(counters::DUPLICATES)
            .arg(mark.map_or(0, DeliveryMark::ttl_millis))
            .arg(bell);
        for i in at {
            inv.arg(events[*i].event_id.as_str())
                .arg(&events[*i].payload);
        }
        let mut conn = self.conn.get();
        let flags: Vec<i64> = bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("enqueue"))?;
        if flags.len() != at.len() {
            return Err(BackendError::Failed(format!(
                "enqueue: redis answered {} outcomes for {} events",
                flags.len(),
                at.len()
            )));
        }
        Ok(flags
            .into_iter()
            .map(|f| match f {
                1 => EnqueueOutcome::Accepted,
                2 => EnqueueOutcome::DuplicateDelivery,
                _ => EnqueueOutcome::Duplicate,
            })
            .collect())
    }

    /// `WAIT`s until the configured number of replicas hold the writes to `written`'s
    /// primaries: once on one server; on a cluster once per written partition, concurrently,
    /// on the primary of its slot (the client does not say which partitions share a primary;
    /// a second `WAIT` to the same primary returns as soon as the first does).
    async fn wait_for_replicas<'a>(
        &self,
        written: impl Iterator<Item = &'a Partition>,
    ) -> BackendResult<()> {
        let Some((replicas, timeout)) = self.replicas else {
            return Ok(());
        };
        let mut keys: Vec<&str> = written.map(|p| p.keys.stream.as_str()).collect();
        if self.mode() == RedisMode::Standalone {
            keys.truncate(1);
        }
        let timeout_ms = timeout.as_millis().max(1) as u64;
        let waits = keys.iter().map(|key| async move {
            let mut conn = self.conn.get();
            let mut cmd = ::redis::cmd("WAIT");
            cmd.arg(replicas).arg(timeout_ms);
            // WAIT itself may take up to its timeout: bounded by it plus the call deadline.
            let reply = tokio::time::timeout(
                timeout + super::CALL_DEADLINE,
                conn.on_node_of(key, cmd),
            )
            .await
            .map_err(|_| CallError::Deadline)
            .and_then(|r| r.map_err(CallError::Redis))
            .map_err(self.fail("wait for replicas"))?;
            let confirmed = super::reply::integer(&reply).unwrap_or(0);
            if confirmed < i64::from(replicas) {
                return Err(BackendError::Unavailable(format!(
                    "only {confirmed} of {replicas} Redis replicas confirmed the write within {timeout_ms} ms; resending is safe (an event that was stored is answered as a duplicate)"
                )));
            }
            Ok(())
        });
        try_join_all(waits).await?;
        Ok(())
    }
}

/// The outcomes of a request's `n` events, put back in request order from each partition's
/// answers (`written`, in the order of `parts`).
fn in_request_order(
    n: usize,
    parts: &[(&Partition, Vec<usize>)],
    written: Vec<Vec<EnqueueOutcome>>,
) -> Vec<EnqueueOutcome> {
    let mut outcomes = vec![EnqueueOutcome::Duplicate; n];
    for ((_, at), flags) in parts.iter().zip(written) {
        for (i, f) in at.iter().zip(flags) {
            outcomes[*i] = f;
        }
    }
    outcomes
}
