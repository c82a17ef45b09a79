//! The dead-letter queue: a stream read with `XRANGE`, replayed and purged by one script
//! call each (a replay of everything in steps of [`REPLAY_STEP`]).

use ::redis::Value;

use super::error::bounded;
use super::reply::field_map;
use super::RedisBackend;
use crate::backend::{format_millis, payload_value, BackendResult, DeadLetter, DlqSelection};
use crate::event::EventId;

/// Most dead letters moved per replay script call (the whole DLQ is replayed in such steps).
const REPLAY_STEP: usize = 1000;

impl RedisBackend {
    /// Up to `limit` dead letters, oldest first, after skipping `offset`.
    pub(super) async fn list_dead_letters(
        &self,
        limit: usize,
        offset: usize,
    ) -> BackendResult<Vec<DeadLetter>> {
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

    /// Moves the chosen dead letters back to the queue; returns how many moved.
    pub(super) async fn replay_dead_letters(&self, which: DlqSelection) -> BackendResult<u64> {
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

    /// Deletes every dead letter; returns how many there were.
    pub(super) async fn purge_dead_letters(&self) -> BackendResult<u64> {
        let mut inv = self.scripts.dlq_purge.prepare_invoke();
        inv.key(&self.keys.dlq);
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("dlq purge"))
    }
}
