//! Claim: how a batch is leased on SQLite. One `UPDATE … RETURNING` over the indexed
//! `visible_at` moves the rows' visibility to the end of the lease and stamps a fresh random
//! claim token, which every settlement of the batch must name.

use rusqlite::{params, Connection};

use super::error::{stored_id, StoreResult};
use super::writer::Ctx;
use crate::backend::{Delivery, Lease};

/// Leases the oldest visible rows in one statement, so two claimers can never share a row.
const CLAIM: &str = "UPDATE queue SET visible_at = ?1, claim_token = ?2
     WHERE id IN (SELECT id FROM queue WHERE visible_at <= ?3 ORDER BY visible_at, id LIMIT ?4)
     RETURNING id, event_id, payload, failures";

/// Leases up to `max` visible events, oldest first, and returns them in queue order.
pub(super) fn claim(c: &Connection, ctx: &Ctx<'_>, max: usize) -> StoreResult<Vec<Delivery>> {
    // Random per claim, so a handle from an earlier lease of the same row never matches.
    let token = rand::random::<i64>() & i64::MAX;
    let mut stmt = c.prepare_cached(CLAIM)?;
    let rows = stmt.query_map(
        params![ctx.now + ctx.lease_ms, token, ctx.now, max as i64],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        },
    )?;
    let mut claimed = rows.collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|row| row.0);
    claimed
        .into_iter()
        .map(|(id, event_id, payload, failures)| {
            Ok(Delivery {
                lease: Lease::Sqlite { row: id, token },
                event_id: stored_id(&event_id)?,
                payload,
                attempt: u32::try_from(failures).unwrap_or(u32::MAX - 1) + 1,
            })
        })
        .collect()
}
