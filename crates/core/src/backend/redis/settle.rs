//! Settling a batch: acks, retries and dead letters of one batch in one settle script run per
//! partition, each checked against the pending-entries list. Acks whose lease is no longer current are
//! dropped and the rest is settled again.

use std::collections::HashSet;
use std::time::SystemTime;

use futures_util::future::try_join_all;

use super::error::{bounded, CallError};
use super::metrics::{bounds_arg, push_increments, script_increments, MINUTE_MAP_TTL_SECS};
use super::{keys, Partition, RedisBackend};
use crate::analytics::rollup::RollupSums;
use crate::analytics::{counting, maps, Sums};
use crate::backend::{epoch_millis, BackendResult, Lease, Settlement};

impl RedisBackend {
    /// Settles the whole batch: one settle script run per partition the batch touches, the
    /// partitions concurrently (each atomic on its own). An ack whose entry another consumer
    /// claimed or settled after this lease ran out is dropped (logged at debug), and so
    /// settles nothing. Settlements holding another backend's lease settle nothing.
    pub(super) async fn settle_batch(&self, settlements: Vec<Settlement>) -> BackendResult<()> {
        // Settlements holding another backend's lease name no partition of ours.
        let by_partition = self.by_partition(settlements, |s| match &s.delivery().lease {
            Lease::Redis { partition, .. } => Some(*partition),
            _ => None,
        });
        // One time for the whole batch: its dead letters share one `failed_at`.
        let now = epoch_millis(SystemTime::now());
        try_join_all(
            by_partition
                .into_iter()
                .map(|(p, list)| self.settle_partition(p, list, now)),
        )
        .await?;
        Ok(())
    }

    /// Settles the settlements of partition `p`, dropping stale acks until the rest settles.
    async fn settle_partition(
        &self,
        p: &Partition,
        mut settlements: Vec<Settlement>,
        now: i64,
    ) -> BackendResult<()> {
        // Each pass drops at least one ack (the stale ones are among them), so this ends.
        while !settlements.is_empty() {
            let stale: HashSet<String> = self
                .with_group(&p.keys, || self.settle_once(p, &settlements, now))
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

    /// Runs the settle script once on partition `p`. Returns the acked entries whose lease was
    /// not current (another consumer claimed or settled them after this lease ran out); then
    /// nothing was written.
    async fn settle_once(
        &self,
        p: &Partition,
        settlements: &[Settlement],
        now: i64,
    ) -> Result<Vec<String>, CallError> {
        let keys = &p.keys;
        // Acks grouped by the consumer that holds them (one group in practice), each group
        // with its lowest and highest entry id, for the script's one XPENDING range per group.
        let mut groups: Vec<AckGroup<'_>> = Vec::new();
        let mut sums = Sums::default();
        let mut rollups = RollupSums::default();
        for s in settlements {
            let (
                Settlement::Ack { effect, .. },
                Lease::Redis {
                    entry,
                    consumer,
                    deliveries,
                    ..
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
            if let Some(e) = effect {
                sums.extend(&e.increments);
                rollups.add(e);
            }
        }
        let rolled = rollups.increments();
        sums.extend(&rolled);
        let mut inv = self.scripts.settle.prepare_invoke();
        inv.key(&keys.stream)
            .key(&keys.retry)
            .key(&keys.dlq)
            .key(&keys.registry)
            .arg(keys::GROUP)
            .arg(keys.metric_prefix())
            .arg(maps::PER_MINUTE_PREFIX)
            .arg(MINUTE_MAP_TTL_SECS)
            .arg(now)
            .arg(maps::COUNTERS)
            .arg(counting::RETRY.join(" "))
            .arg(counting::DEAD_LETTER.join(" "))
            .arg(bounds_arg(&self.options.bounds))
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
        let mut increments = script_increments(&sums);
        lock(&p.written_registers).skip_written(&mut increments);
        // In decision order: the script decides new dimension values in the order it reads.
        push_increments(&mut inv, &increments);
        for s in settlements {
            let Lease::Redis {
                entry,
                consumer,
                deliveries,
                ..
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
        let mut conn = self.conn.get();
        let stale = bounded(inv.invoke_async::<Vec<String>>(&mut conn)).await?;
        if stale.is_empty() {
            lock(&p.written_registers).wrote(&increments);
        }
        Ok(stale)
    }
}

/// A lock held for a few instructions: a poisoned one still holds consistent registers
/// (each update is a plain insert).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
pub(super) fn stream_position(entry: &str) -> Option<(u64, u64)> {
    let (ms, seq) = entry.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}
