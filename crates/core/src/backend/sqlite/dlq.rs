//! The dead-letter queue: listing (on the reader thread), replay and purge (on the writer).

use rusqlite::{params, Connection};

use super::error::{stored_id, StoreResult};
use super::writer::Ctx;
use crate::backend::{format_millis, payload_value, DeadLetter, DlqSelection};

/// Puts the selected dead letters back in the queue as fresh events (no failures, visible at
/// once) and removes them from the DLQ; returns how many went back.
pub(super) fn dlq_replay(c: &Connection, ctx: &Ctx<'_>, which: &DlqSelection) -> StoreResult<u64> {
    match which {
        DlqSelection::All => {
            let n = c
                .prepare_cached(
                    "INSERT INTO queue (event_id, payload, failures, visible_at)
                     SELECT event_id, payload, 0, ?1 FROM dlq ORDER BY id",
                )?
                .execute([ctx.now])?;
            c.prepare_cached("DELETE FROM dlq")?.execute([])?;
            Ok(n as u64)
        }
        DlqSelection::Ids(ids) => {
            let mut back = c.prepare_cached(
                "INSERT INTO queue (event_id, payload, failures, visible_at)
                 SELECT event_id, payload, 0, ?1 FROM dlq WHERE event_id = ?2 ORDER BY id",
            )?;
            let mut remove = c.prepare_cached("DELETE FROM dlq WHERE event_id = ?1")?;
            let mut n = 0;
            for id in ids {
                n += back.execute(params![ctx.now, id.as_str()])? as u64;
                remove.execute([id.as_str()])?;
            }
            Ok(n)
        }
    }
}

/// Deletes every dead letter; returns how many.
pub(super) fn dlq_purge(c: &Connection) -> StoreResult<u64> {
    Ok(c.prepare_cached("DELETE FROM dlq")?.execute([])? as u64)
}

/// One page of dead letters, oldest first.
pub(super) fn dlq_list(
    c: &Connection,
    limit: usize,
    offset: usize,
) -> StoreResult<Vec<DeadLetter>> {
    let mut stmt = c.prepare_cached(
        "SELECT event_id, payload, failure_reason, error, attempts, failed_at
         FROM dlq ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    let rows = stmt.query_map(
        params![
            i64::try_from(limit).unwrap_or(i64::MAX),
            i64::try_from(offset).unwrap_or(i64::MAX)
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (event_id, payload, failure_reason, error, attempts, failed_at) = row?;
        out.push(DeadLetter {
            event_id: stored_id(&event_id)?,
            event: payload_value(&payload),
            failure_reason,
            error,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            failed_at: format_millis(failed_at),
        });
    }
    Ok(out)
}
