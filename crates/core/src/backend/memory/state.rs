//! The memory backend's state and the steps taken under its lock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::super::*;
use super::users::{DistinctUsers, TopUsers};
use crate::analytics::bounds::{self, DimensionCap};
use crate::analytics::rollup::{self, Granularity};
use crate::analytics::{maps, Bounds, MapShape, Maps, Sums};

/// Expired rollup buckets deleted per [`State::add`] at most: retention never holds the lock
/// for long.
const PRUNE_PER_ADD: usize = 64;

/// One queued event.
pub(super) struct Entry {
    pub(super) event_id: EventId,
    pub(super) payload: String,
    /// Failed attempts so far.
    pub(super) failures: u32,
    /// Claim token and expiry (epoch ms) of the current lease, if leased.
    pub(super) lease: Option<(u64, i64)>,
    /// The payload's `received_at` (epoch ms), parsed once when queued.
    pub(super) received_at: Option<i64>,
}

#[derive(Default)]
pub(super) struct State {
    /// Event id -> expiry (epoch ms) of its duplicate mark.
    pub(super) seen: HashMap<EventId, i64>,
    /// Event id -> expiry (epoch ms) of its applied mark.
    pub(super) processed: HashMap<EventId, i64>,
    /// Delivery id -> expiry (epoch ms) of its [`DeliveryMark`].
    pub(super) deliveries: HashMap<String, i64>,
    /// Keyed in queueing order, so the first entry is the oldest queued one.
    pub(super) entries: BTreeMap<u64, Entry>,
    /// Entry keys ready to claim, oldest first.
    pub(super) ready: VecDeque<u64>,
    /// (lease expiry ms, key) of leased entries.
    pub(super) leased: BTreeSet<(i64, u64)>,
    /// (due ms, key) of entries waiting for a retry.
    pub(super) delayed: BTreeSet<(i64, u64)>,
    pub(super) dlq: Vec<DeadLetter>,
    /// Every summed map (the distinct and ranked ones are below), rollups apart.
    pub(super) metrics: Maps,
    /// Rollup buckets by map name ([`rollup::map_name`] sorts by aggregate, granularity, time).
    pub(super) rollups: Maps,
    /// Distinct users: exact while small, then estimated.
    pub(super) users: DistinctUsers,
    /// Usage per user, bounded top-K.
    pub(super) top_users: TopUsers,
    pub(super) next_key: u64,
    pub(super) next_token: u64,
    /// When expired id marks are next swept (epoch ms).
    pub(super) next_prune: i64,
}

impl State {
    /// Adds increments under the analytics [`Bounds`], decided here under the lock.
    /// Rollup buckets past their retention at `now` are neither written nor kept.
    pub(super) fn add(&mut self, increments: &[Increment], bounds: &Bounds) {
        let now = epoch_millis(std::time::SystemTime::now()) / 1_000;
        let retention = &bounds.rollup_retention;
        let sums = Sums::of(increments);
        let mut caps: HashMap<&str, DimensionCap> = HashMap::new();
        let mut rolled = false;
        for (map, field, by) in bounds::in_order(&sums) {
            let is_rollup = map.starts_with(rollup::PREFIX);
            if is_rollup && !retention.keeps(map, now) {
                continue;
            }
            rolled |= is_rollup;
            match MapShape::of(map) {
                MapShape::Distinct => self.users.insert(field, bounds),
                MapShape::Ranked => self.top_users.add(field, by, bounds),
                MapShape::BucketUsers => {
                    // Kept as the bucket's set HyperLogLog registers (register -> rank).
                    let (register, rank) = crate::analytics::hll::position(field);
                    let stored = self
                        .rollups
                        .entry(map.to_string())
                        .or_default()
                        .entry(register.to_string())
                        .or_insert(0.0);
                    *stored = stored.max(f64::from(rank));
                }
                MapShape::Summed => {
                    let store = if is_rollup {
                        &mut self.rollups
                    } else {
                        &mut self.metrics
                    };
                    let stored = store.entry(map.to_string()).or_default();
                    let field = if bounds::is_capped(map) {
                        let cap = caps.entry(map).or_insert_with(|| {
                            let named = stored.len()
                                - bounds::always_named_fields(map)
                                    .filter(|f| stored.contains_key(*f))
                                    .count();
                            DimensionCap::new(named, bounds)
                        });
                        cap.target(map, field, stored.contains_key(field))
                    } else {
                        field
                    };
                    *stored.entry(field.to_string()).or_insert(0.0) += by;
                }
            }
        }
        if rolled {
            self.prune_rollups(retention, now);
        }
    }

    /// Deletes at most [`PRUNE_PER_ADD`] rollup buckets past their retention.
    fn prune_rollups(&mut self, retention: &rollup::Retention, now: i64) {
        let mut expired = Vec::new();
        for aggregate in rollup::AGGREGATES {
            for g in Granularity::ALL {
                let first = rollup::map_name(aggregate, g, i64::MIN / 2);
                let kept = rollup::map_name(aggregate, g, retention.oldest_kept(g, now));
                let room = PRUNE_PER_ADD - expired.len();
                expired.extend(
                    self.rollups
                        .range(first..kept)
                        .map(|(name, _)| name.clone())
                        .filter(|name| !retention.keeps(name, now))
                        .take(room),
                );
                if expired.len() >= PRUNE_PER_ADD {
                    break;
                }
            }
        }
        for name in expired {
            self.rollups.remove(&name);
        }
    }

    /// The stored buckets of `aggregate` at `granularity` starting in `from..to` that are
    /// still kept at `now`.
    pub(super) fn rollups(
        &self,
        aggregate: &str,
        granularity: Granularity,
        (from, to): (i64, i64),
        retention: &rollup::Retention,
        now: i64,
    ) -> rollup::Buckets {
        if from >= to {
            return rollup::Buckets::new();
        }
        let first = rollup::map_name(aggregate, granularity, from);
        let end = rollup::map_name(aggregate, granularity, to);
        self.rollups
            .range(first..end)
            .filter(|(name, _)| retention.keeps(name, now))
            .filter_map(|(name, fields)| Some((rollup::parse(name)?.2, fields.clone())))
            .collect()
    }

    /// Adds one to each of the counters `names`.
    pub(super) fn count(&mut self, names: &[&str]) {
        for name in names {
            *self
                .metrics
                .entry(maps::COUNTERS.to_string())
                .or_default()
                .entry(name.to_string())
                .or_insert(0.0) += 1.0;
        }
    }

    pub(super) fn push(&mut self, event_id: EventId, payload: String, failures: u32) {
        let key = self.next_key;
        self.next_key += 1;
        let received_at = payload_received_at_ms(&payload);
        self.entries.insert(
            key,
            Entry {
                event_id,
                payload,
                failures,
                lease: None,
                received_at,
            },
        );
        self.ready.push_back(key);
    }

    /// Moves expired leases and due retries back to `ready`.
    pub(super) fn promote(&mut self, now: i64) {
        while let Some(&(until, key)) = self.leased.first() {
            if until > now {
                break;
            }
            self.leased.pop_first();
            if let Some(e) = self.entries.get_mut(&key) {
                if e.lease.is_some_and(|(_, u)| u == until) {
                    e.lease = None;
                    self.ready.push_back(key);
                }
            }
        }
        while let Some(&(due, key)) = self.delayed.first() {
            if due > now {
                break;
            }
            self.delayed.pop_first();
            if self.entries.contains_key(&key) {
                self.ready.push_back(key);
            }
        }
    }

    /// The entry a lease names, if that lease is still its current one.
    pub(super) fn leased_entry(&self, lease: &Lease) -> Option<u64> {
        let Lease::Memory { key, token } = *lease else {
            return None;
        };
        (self.entries.get(&key)?.lease?.0 == token).then_some(key)
    }

    /// Ends the lease of an entry, if any.
    pub(super) fn unlease(&mut self, key: u64) {
        if let Some(e) = self.entries.get_mut(&key) {
            if let Some((_, until)) = e.lease.take() {
                self.leased.remove(&(until, key));
            }
        }
    }

    pub(super) fn release(&mut self, key: u64) -> Option<Entry> {
        self.unlease(key);
        self.entries.remove(&key)
    }
}
