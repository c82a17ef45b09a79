//! Enqueueing: the duplicate check, the enqueue and the accepted/duplicate counters of a whole
//! batch in one enqueue script call, with the delivery mark of a signed request.

use super::error::bounded;
use super::RedisBackend;
use crate::analytics::{counters, maps};
use crate::backend::{BackendError, BackendResult, DeliveryMark, EnqueueOutcome, QueuedEvent};

impl RedisBackend {
    /// Enqueues every event whose id was not seen within the idempotency TTL, unless `mark`
    /// is still live; one outcome per event, in order.
    pub(super) async fn enqueue_batch(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.scripts.enqueue.prepare_invoke();
        inv.key(&self.keys.stream)
            .key(self.keys.metric(maps::COUNTERS))
            .key(&self.keys.registry);
        if let Some(mark) = &mark {
            inv.key(self.keys.delivery(mark.id()));
        }
        inv.arg(self.keys.seen_prefix())
            .arg(self.options.idempotency_ttl.as_millis().max(1) as u64)
            .arg(maps::COUNTERS)
            .arg(counters::ACCEPTED)
            .arg(counters::DUPLICATES)
            .arg(mark.as_ref().map_or(0, DeliveryMark::ttl_millis));
        for e in &events {
            inv.arg(e.event_id.as_str()).arg(&e.payload);
        }
        let mut conn = self.conn.clone();
        let flags: Vec<i64> = bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("enqueue"))?;
        if flags.len() != events.len() {
            return Err(BackendError::Failed(format!(
                "enqueue: redis answered {} outcomes for {} events",
                flags.len(),
                events.len()
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
}
