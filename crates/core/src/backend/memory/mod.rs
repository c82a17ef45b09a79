//! In-process backend: for tests and single-process runs (`DAY15_QUEUE_BACKEND=memory`).
//!
//! One `std::sync::Mutex` guards all state; no `.await` happens while it is held, so each
//! trait method is atomic exactly like one SQLite transaction or one Lua script. Nothing
//! survives the process.
//!
//! The state and its lock-held steps are in `state.rs`, the bounded distinct and top users in
//! `users.rs`.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::analytics::rollup::{self, Granularity};
use crate::analytics::{counters, maps, TOP_USERS};

mod state;
mod users;

use state::State;

/// The in-process backend.
pub struct MemoryBackend {
    options: BackendOptions,
    state: Mutex<State>,
    /// Wakes claimers waiting on an empty queue.
    arrivals: Notify,
}

impl MemoryBackend {
    pub fn new(options: BackendOptions) -> Self {
        MemoryBackend {
            options,
            state: Mutex::new(State::default()),
            arrivals: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave partial state that matters more than
        // refusing all further work would; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now() -> i64 {
        epoch_millis(SystemTime::now())
    }

    fn try_claim(&self, max: usize) -> Vec<Delivery> {
        let now = Self::now();
        let lease_until = now + self.options.visibility_timeout.as_millis() as i64;
        let mut st = self.lock();
        st.promote(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(key) = st.ready.pop_front() else {
                break;
            };
            st.next_token += 1;
            let token = st.next_token;
            let Some(e) = st.entries.get_mut(&key) else {
                continue;
            };
            e.lease = Some((token, lease_until));
            out.push(Delivery {
                lease: Lease::Memory { key, token },
                event_id: e.event_id.clone(),
                payload: e.payload.clone(),
                attempt: e.failures + 1,
            });
            st.leased.insert((lease_until, key));
        }
        out
    }

    /// When the next lease expires or retry falls due, so a waiting claimer wakes for it.
    fn next_due(&self) -> Option<i64> {
        let st = self.lock();
        let a = st.leased.first().map(|x| x.0);
        let b = st.delayed.first().map(|x| x.0);
        a.into_iter().chain(b).min()
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> BackendResult<()> {
        Ok(())
    }

    async fn enqueue_delivery(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let now = Self::now();
        let expiry = now + self.options.idempotency_ttl.as_millis() as i64;
        let mut st = self.lock();
        if let Some(mark) = mark {
            if st.deliveries.get(mark.id()).is_some_and(|&exp| exp > now) {
                let n = events.len();
                st.add(
                    &[Increment::new(
                        maps::COUNTERS,
                        counters::DUPLICATES,
                        n as f64,
                    )],
                    &self.options.bounds,
                );
                return Ok(vec![EnqueueOutcome::DuplicateDelivery; n]);
            }
            let until = now.saturating_add(mark.ttl_millis());
            st.deliveries.insert(mark.id().to_string(), until);
        }
        let mut out = Vec::with_capacity(events.len());
        let (mut accepted, mut duplicates) = (0.0, 0.0);
        for e in events {
            let fresh = st.seen.get(&e.event_id).is_none_or(|&exp| exp <= now);
            if fresh {
                st.seen.insert(e.event_id.clone(), expiry);
                st.push(e.event_id, e.payload, 0);
                accepted += 1.0;
                out.push(EnqueueOutcome::Accepted);
            } else {
                duplicates += 1.0;
                out.push(EnqueueOutcome::Duplicate);
            }
        }
        st.add(
            &[
                Increment::new(maps::COUNTERS, counters::ACCEPTED, accepted),
                Increment::new(maps::COUNTERS, counters::DUPLICATES, duplicates),
            ],
            &self.options.bounds,
        );
        if now >= st.next_prune {
            st.seen.retain(|_, exp| *exp > now);
            st.processed.retain(|_, exp| *exp > now);
            st.deliveries.retain(|_, exp| *exp > now);
            st.next_prune = now + 10_000;
        }
        drop(st);
        if accepted > 0.0 {
            self.arrivals.notify_waiters();
        }
        Ok(out)
    }

    async fn claim_batch(
        &self,
        _consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so an enqueue between the look and the wait
            // still wakes us.
            let arrived = self.arrivals.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got = self.try_claim(max);
            if !got.is_empty() {
                return Ok(got);
            }
            let mut until = deadline;
            if let Some(due) = self.next_due() {
                let in_ms = (due - Self::now()).max(1) as u64;
                until = until.min(tokio::time::Instant::now() + Duration::from_millis(in_ms));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Vec::new());
            }
            // Whichever branch loses is dropped; none holds a claimed event.
            tokio::select! {
                _ = &mut arrived => {}
                _ = tokio::time::sleep_until(until) => {}
                _ = cancel.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> BackendResult<()> {
        let now = Self::now();
        let applied_until = now + self.options.idempotency_ttl.as_millis() as i64;
        let mut st = self.lock();
        let mut requeued = false;
        for s in settlements {
            let Some(key) = st.leased_entry(&s.delivery().lease) else {
                continue;
            };
            st.count(s.counted());
            match s {
                Settlement::Ack { effect, .. } => {
                    st.release(key);
                    if let Some(effect) = effect {
                        let done = st
                            .processed
                            .get(&effect.event_id)
                            .is_some_and(|&exp| exp > now);
                        if !done {
                            st.processed.insert(effect.event_id.clone(), applied_until);
                            st.add(&effect.all_increments(), &self.options.bounds);
                        }
                    }
                }
                Settlement::Retry {
                    delivery,
                    not_before,
                    ..
                } => {
                    st.unlease(key);
                    if let Some(e) = st.entries.get_mut(&key) {
                        e.failures = delivery.attempt;
                    }
                    st.delayed.insert((epoch_millis(not_before), key));
                    requeued = true;
                }
                Settlement::DeadLetter {
                    delivery,
                    reason,
                    error,
                } => {
                    if let Some(e) = st.release(key) {
                        st.dlq.push(DeadLetter {
                            event_id: e.event_id,
                            event: payload_value(&e.payload),
                            failure_reason: reason.as_str().into(),
                            error,
                            attempts: delivery.attempt,
                            failed_at: format_millis(now),
                        });
                    }
                }
            }
        }
        drop(st);
        if requeued {
            // A waiting claimer recomputes its wake-up time from the new retry.
            self.arrivals.notify_waiters();
        }
        Ok(())
    }

    async fn depths(&self) -> BackendResult<Depths> {
        let st = self.lock();
        Ok(Depths {
            queue: st.entries.len() as u64,
            dlq: st.dlq.len() as u64,
            oldest_at: st
                .entries
                .first_key_value()
                .and_then(|(_, e)| e.received_at),
        })
    }

    async fn dlq_list(&self, limit: usize, offset: usize) -> BackendResult<Vec<DeadLetter>> {
        let st = self.lock();
        Ok(st.dlq.iter().skip(offset).take(limit).cloned().collect())
    }

    async fn dlq_replay(&self, which: DlqSelection) -> BackendResult<u64> {
        let mut st = self.lock();
        let (back, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut st.dlq)
                .into_iter()
                .partition(|d| match &which {
                    DlqSelection::All => true,
                    DlqSelection::Ids(ids) => ids.contains(&d.event_id),
                });
        st.dlq = keep;
        let n = back.len() as u64;
        for d in back {
            let payload = match d.event {
                serde_json::Value::String(s) => s,
                v => v.to_string(),
            };
            st.push(d.event_id, payload, 0);
        }
        drop(st);
        if n > 0 {
            self.arrivals.notify_waiters();
        }
        Ok(n)
    }

    async fn dlq_purge(&self) -> BackendResult<u64> {
        let mut st = self.lock();
        let n = st.dlq.len() as u64;
        st.dlq.clear();
        Ok(n)
    }

    async fn record(&self, increments: Vec<Increment>) -> BackendResult<()> {
        self.lock().add(&increments, &self.options.bounds);
        Ok(())
    }

    async fn metrics(&self) -> BackendResult<StoredMetrics> {
        let now = Self::now() / 1_000;
        let st = self.lock();
        let mut snapshot = StoredMetrics::from_maps(&st.metrics);
        snapshot.distinct_users = st.users.count(&self.options.bounds);
        snapshot.top_users = st.top_users.top(TOP_USERS);
        let minutes = st.rollups(
            maps::EVENTS_BY_TYPE,
            Granularity::Minute,
            rollup::minute_window(now),
            &self.options.bounds.rollup_retention,
            now,
        );
        rollup::add_minutes(&mut snapshot, minutes);
        Ok(snapshot)
    }

    async fn rollups(
        &self,
        aggregate: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> BackendResult<rollup::Buckets> {
        let now = Self::now() / 1_000;
        let st = self.lock();
        Ok(st.rollups(
            aggregate,
            granularity,
            (from, to),
            &self.options.bounds.rollup_retention,
            now,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_state_stays_within_the_bounds_however_many_users_arrive() {
        let b = MemoryBackend::new(BackendOptions {
            bounds: Bounds {
                max_dimension_values: 3,
                exact_distinct_users: 100,
                top_users_tracked: 50,
                ..Bounds::default()
            },
            ..BackendOptions::default()
        });
        for batch in 0..10 {
            let mut incs = Vec::new();
            for u in batch * 500..(batch + 1) * 500 {
                incs.push(Increment::new(maps::USERS, format!("user_{u}"), 1.0));
                incs.push(Increment::new(
                    maps::USAGE_BY_USER,
                    format!("user_{u}"),
                    1.0,
                ));
                incs.push(Increment::new(
                    maps::SIGNUPS_BY_SOURCE,
                    format!("s{u}"),
                    1.0,
                ));
            }
            b.record(incs).await.unwrap();
        }
        let st = b.lock();
        assert_eq!(st.users.exact.len(), 100);
        assert_eq!(st.top_users.usage.len(), 50);
        assert_eq!(st.top_users.order.len(), 50);
        assert_eq!(st.metrics[maps::SIGNUPS_BY_SOURCE].len(), 4);
        let usage: f64 = st.top_users.usage.values().sum();
        assert_eq!(usage, 5_000.0, "inherited counts keep the total");
    }
}
