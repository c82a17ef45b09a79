//! Enqueue: the idempotency mark and the push of each event, in the writer's transaction, so
//! an event is either accepted (marked and queued) or a duplicate (nothing written). A signed
//! delivery's mark is set in the same transaction, so a rolled-back enqueue leaves none.

use rusqlite::{params, Connection};

use super::error::StoreResult;
use super::metrics::add_counters;
use super::writer::Ctx;
use crate::analytics::counters;
use crate::backend::{DeliveryMark, EnqueueOutcome, QueuedEvent};

/// Marks an id as seen unless a live mark exists; one changed row means "accepted".
const MARK_SEEN: &str = "INSERT INTO seen (event_id, expires_at) VALUES (?1, ?2)
     ON CONFLICT (event_id) DO UPDATE SET expires_at = excluded.expires_at
     WHERE seen.expires_at <= ?3";
/// Delivery marks share the `seen` table (and its expiry upkeep) under this prefix: event ids
/// never contain whitespace, so no event id can take a delivery's row.
const DELIVERY_PREFIX: &str = " delivery:";
/// Queues an accepted event, visible at once.
const PUSH: &str =
    "INSERT INTO queue (event_id, payload, failures, visible_at) VALUES (?1, ?2, 0, ?3)";

/// Marks and queues each event unless a live mark exists, and counts accepted and duplicates.
/// With a delivery `marked` that is still live, stores nothing and answers every event as a
/// duplicate delivery.
pub(super) fn enqueue(
    c: &Connection,
    ctx: &Ctx<'_>,
    events: &[QueuedEvent],
    marked: Option<&DeliveryMark>,
) -> StoreResult<Vec<EnqueueOutcome>> {
    let mut mark = c.prepare_cached(MARK_SEEN)?;
    if let Some(delivery) = marked {
        let key = format!("{DELIVERY_PREFIX}{}", delivery.id());
        let until = ctx.now.saturating_add(delivery.ttl_millis());
        if mark.execute(params![key, until, ctx.now])? == 0 {
            add_counters(c, &[(counters::DUPLICATES, events.len() as u64)])?;
            return Ok(vec![EnqueueOutcome::DuplicateDelivery; events.len()]);
        }
    }
    let mut push = c.prepare_cached(PUSH)?;
    let expires_at = ctx.now + ctx.ttl_ms;
    let mut out = Vec::with_capacity(events.len());
    let (mut accepted, mut duplicates) = (0, 0);
    for e in events {
        let id = e.event_id.as_str();
        if mark.execute(params![id, expires_at, ctx.now])? == 1 {
            push.execute(params![id, e.payload, ctx.now])?;
            accepted += 1;
            out.push(EnqueueOutcome::Accepted);
        } else {
            duplicates += 1;
            out.push(EnqueueOutcome::Duplicate);
        }
    }
    add_counters(
        c,
        &[
            (counters::ACCEPTED, accepted),
            (counters::DUPLICATES, duplicates),
        ],
    )?;
    Ok(out)
}
