//! Settle: ack, retry or dead-letter each event of a batch, under the claim token of its lease.
//! An ack applies the event's effect only if its applied mark is new, in the same transaction
//! that deletes the row: this is what makes the analytics exactly-once.

use std::time::SystemTime;

use rusqlite::{params, Connection, OptionalExtension};

use super::error::StoreResult;
use super::metrics::add_metrics;
use super::writer::Ctx;
use crate::analytics::rollup::RollupSums;
use crate::analytics::{Effect, Increment, Sums};
use crate::backend::{Lease, Settlement};

/// Marks an id as applied unless a live mark exists; one changed row means "apply it".
const MARK_PROCESSED: &str = "INSERT INTO processed (event_id, expires_at) VALUES (?1, ?2)
     ON CONFLICT (event_id) DO UPDATE SET expires_at = excluded.expires_at
     WHERE processed.expires_at <= ?3";

/// Epoch milliseconds rounded up, so an instant stored as a due time is never reached early.
fn ceil_millis(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64 + i64::from(d.subsec_nanos() % 1_000_000 != 0),
        Err(_) => 0,
    }
}

/// Settles a batch; returns whether any event went back to the queue for a retry.
///
/// Every statement names the row *and* the claim token of the settlement's lease: row ids are
/// reused once the newest row is deleted, so after a lost lease the id alone may name a newer
/// event, and a row leased to someone else meanwhile must stay theirs.
pub(super) fn settle(
    c: &Connection,
    ctx: &Ctx<'_>,
    settlements: Vec<Settlement>,
) -> StoreResult<bool> {
    let applied_until = ctx.now + ctx.ttl_ms;
    // Effects and counters of the settlements that took effect, written summed at the end.
    let mut applied: Vec<Increment> = Vec::new();
    let mut effects: Vec<Effect> = Vec::new();
    let mut requeued = false;
    for s in settlements {
        let Lease::Sqlite { row, token } = s.delivery().lease else {
            continue;
        };
        let counted = s.counted();
        let took_effect = match s {
            Settlement::Ack { effect, .. } => {
                let removed = c
                    .prepare_cached("DELETE FROM queue WHERE id = ?1 AND claim_token = ?2")?
                    .execute(params![row, token])?
                    == 1;
                if let Some(effect) = effect.filter(|_| removed) {
                    let fresh = c.prepare_cached(MARK_PROCESSED)?.execute(params![
                        effect.event_id.as_str(),
                        applied_until,
                        ctx.now
                    ])? == 1;
                    if fresh {
                        effects.push(effect);
                    }
                }
                removed
            }
            Settlement::Retry {
                delivery,
                not_before,
                ..
            } => {
                let moved =
                    c.prepare_cached(
                        "UPDATE queue SET visible_at = ?1, failures = ?2, claim_token = NULL
                         WHERE id = ?3 AND claim_token = ?4",
                    )?
                    .execute(params![
                        ceil_millis(not_before),
                        delivery.attempt,
                        row,
                        token
                    ])? == 1;
                requeued |= moved;
                moved
            }
            Settlement::DeadLetter {
                delivery,
                reason,
                error,
            } => {
                let taken: Option<(String, String)> = c
                    .prepare_cached(
                        "DELETE FROM queue WHERE id = ?1 AND claim_token = ?2
                         RETURNING event_id, payload",
                    )?
                    .query_row(params![row, token], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((event_id, payload)) = &taken {
                    c.prepare_cached(
                        "INSERT INTO dlq (event_id, payload, failure_reason, error, attempts,
                         failed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        event_id,
                        payload,
                        reason.as_str(),
                        error,
                        delivery.attempt,
                        ctx.now
                    ])?;
                }
                taken.is_some()
            }
        };
        if took_effect {
            applied.extend(counted.iter().map(|name| Increment::counter(name)));
        }
    }
    let mut rollups = RollupSums::default();
    for effect in &effects {
        rollups.add(effect);
    }
    let rolled = rollups.increments();
    let mut sums = Sums::of(&applied);
    sums.extend(effects.iter().flat_map(|e| &e.increments));
    sums.extend(&rolled);
    add_metrics(c, ctx, &sums)?;
    Ok(requeued)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_times_round_up_to_the_next_millisecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_000_700);
        assert_eq!(ceil_millis(t), 1_001);
        let exact = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000);
        assert_eq!(ceil_millis(exact), 1_000);
    }
}
