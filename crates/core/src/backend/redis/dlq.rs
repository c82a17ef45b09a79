//! The dead-letter queue: a stream per partition read with `XRANGE` and merged in order,
//! replayed and purged by one script call per partition (a replay of everything in steps of
//! [`REPLAY_STEP`]).

use std::collections::HashMap;

use ::redis::Value;
use futures_util::future::try_join_all;

use super::error::bounded;
use super::reply::{field_map, text};
use super::settle::stream_position;
use super::{Partition, RedisBackend};
use crate::backend::{format_millis, payload_value, BackendResult, DeadLetter, DlqSelection};
use crate::event::EventId;

/// Most dead letters moved per replay script call (the whole DLQ is replayed in such steps).
const REPLAY_STEP: usize = 1000;

impl RedisBackend {
    /// Up to `limit` dead letters, oldest first across partitions, after skipping `offset`.
    ///
    /// The order is `failed_at` (the settle that dead-lettered it; one batch shares one), ties
    /// broken by event id, then by partition and place in it, so pages are stable while the
    /// DLQ only grows.
    pub(super) async fn list_dead_letters(
        &self,
        limit: usize,
        offset: usize,
    ) -> BackendResult<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let wanted = offset.saturating_add(limit);
        let pages = try_join_all(self.partitions.iter().map(|p| async move {
            let mut conn = self.conn.get();
            let reply: Value = bounded(
                ::redis::cmd("XRANGE")
                    .arg(&p.keys.dlq)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(wanted)
                    .query_async(&mut conn),
            )
            .await
            .map_err(self.fail("dlq list"))?;
            Ok::<_, crate::backend::BackendError>((p.keys.partition, reply))
        }))
        .await?;
        // Every entry read, with its place in the merged order: (failed_at, event id,
        // partition, place in the partition's stream).
        type Place = (i64, String, u16, (u64, u64));
        let mut entries: Vec<(Place, HashMap<String, String>)> = Vec::new();
        for (partition, reply) in &pages {
            let Value::Array(list) = reply else { continue };
            for entry in list {
                let Value::Array(parts) = entry else { continue };
                let (Some(id), Some(fields)) = (parts.first().and_then(text), parts.get(1)) else {
                    continue;
                };
                let f = field_map(fields);
                let failed_at = f.get("failed_at").and_then(|t| t.parse().ok()).unwrap_or(0);
                let event_id = f.get("id").cloned().unwrap_or_default();
                let at = stream_position(&id).unwrap_or((u64::MAX, u64::MAX));
                entries.push(((failed_at, event_id, *partition, at), f));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (_, f) in entries.into_iter().skip(offset).take(limit) {
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

    /// Moves the chosen dead letters back to their partitions' queues; returns how many moved.
    pub(super) async fn replay_dead_letters(&self, which: DlqSelection) -> BackendResult<u64> {
        let moved = match &which {
            DlqSelection::All => {
                try_join_all(self.partitions.iter().map(|p| self.replay_in(p, &[]))).await?
            }
            DlqSelection::Ids(ids) => {
                let by_partition = self.by_partition(ids.iter().map(EventId::as_str), |id| {
                    Some(self.partition_number(id))
                });
                try_join_all(by_partition.iter().map(|(p, ids)| self.replay_in(p, ids))).await?
            }
        };
        Ok(moved.into_iter().sum())
    }

    /// Replays `ids` of partition `p` (empty: all of its dead letters, in steps).
    async fn replay_in(&self, p: &Partition, ids: &[&str]) -> BackendResult<u64> {
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
            inv.key(&p.keys.dlq)
                .key(&p.keys.stream)
                .arg(step.min(i64::MAX as usize))
                .arg(ids);
            let mut conn = self.conn.get();
            let moved: u64 = bounded(inv.invoke_async(&mut conn))
                .await
                .map_err(self.fail("dlq replay"))?;
            total += moved;
            if (moved as usize) < step || !ids.is_empty() {
                return Ok(total);
            }
        }
    }

    /// Deletes every dead letter of every partition; returns how many there were.
    pub(super) async fn purge_dead_letters(&self) -> BackendResult<u64> {
        let purged = try_join_all(self.partitions.iter().map(|p| async move {
            let mut inv = self.scripts.dlq_purge.prepare_invoke();
            inv.key(&p.keys.dlq);
            let mut conn = self.conn.get();
            bounded(inv.invoke_async::<u64>(&mut conn))
                .await
                .map_err(self.fail("dlq purge"))
        }))
        .await?;
        Ok(purged.into_iter().sum())
    }
}
