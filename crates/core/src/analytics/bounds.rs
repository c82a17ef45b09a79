//! How much analytics state hostile traffic can make a backend keep.
//!
//! Event types and metadata strings (`source`, `country`, `plan`, `feature`) come from the
//! sender, and every new value used to become a metric field forever. Three bounds, applied by
//! every backend inside its atomic settle/record step (never from state read earlier):
//!
//! - **Dimension maps** ([`is_capped`]) hold at most [`Bounds::max_dimension_values`] named
//!   fields; past the cap a *new* value counts under [`OTHER`], an existing one under its own
//!   name. Sums over a map are unchanged. New values of one batch are decided in byte order of
//!   the field ([`in_order`]), so maps written together (`subscriptions_by_plan` and
//!   `mrr_by_plan`; `usage_events_by_feature` and `usage_quantity_by_feature`) holding the same
//!   fields make the same decision for the same batch.
//! - **Distinct users**: an exact set of up to [`Bounds::exact_distinct_users`] ids, plus a
//!   HyperLogLog fed with every id; once the set is full the count is the estimate.
//! - **Top users**: a Space-Saving top-K of [`Bounds::top_users_tracked`] entries: exact while
//!   fewer users are tracked; when full a new user replaces the smallest entry and inherits its
//!   count (an overestimate of at most that smallest count).

use super::rollup::{self, Retention};
use super::{maps, Sums};
use crate::event::{SUBSCRIPTION_CREATED, USAGE_TRACKED, USER_SIGNUP};

/// The field new values of a full dimension map count under.
pub const OTHER: &str = "other";

/// The limits on stored analytics state; part of `BackendOptions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Bounds {
    /// Named fields per dimension map (`DAY15_MAX_DIMENSION_VALUES`).
    pub max_dimension_values: usize,
    /// Distinct users counted exactly before the estimate takes over.
    pub exact_distinct_users: usize,
    /// Users the top-users ranking tracks (K of the Space-Saving top-K).
    pub top_users_tracked: usize,
    /// How long rollup buckets are kept, per granularity ([`rollup`]).
    pub rollup_retention: Retention,
}

/// Default of [`Bounds::max_dimension_values`].
pub const DEFAULT_MAX_DIMENSION_VALUES: usize = 1_000;
/// Default of [`Bounds::exact_distinct_users`].
pub const DEFAULT_EXACT_DISTINCT_USERS: usize = 10_000;
/// Default of [`Bounds::top_users_tracked`].
pub const DEFAULT_TOP_USERS_TRACKED: usize = 10_000;

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_dimension_values: DEFAULT_MAX_DIMENSION_VALUES,
            exact_distinct_users: DEFAULT_EXACT_DISTINCT_USERS,
            top_users_tracked: DEFAULT_TOP_USERS_TRACKED,
            rollup_retention: Retention::default(),
        }
    }
}

/// The maps whose fields come from senders and so are capped: pipeline counters and latency
/// histograms are not (their fields are ours).
pub const CAPPED_MAPS: [&str; 7] = [
    maps::EVENTS_BY_TYPE,
    maps::SIGNUPS_BY_SOURCE,
    maps::SIGNUPS_BY_COUNTRY,
    maps::SUBSCRIPTIONS_BY_PLAN,
    maps::MRR_BY_PLAN,
    maps::USAGE_EVENTS_BY_FEATURE,
    maps::USAGE_QUANTITY_BY_FEATURE,
];

/// The event types the analytics are about: always counted under their own name in the
/// by-type maps, so junk types sent first can never push them into [`OTHER`].
pub const KNOWN_TYPES: [&str; 3] = [USER_SIGNUP, SUBSCRIPTION_CREATED, USAGE_TRACKED];

/// Whether `map` is a dimension map (the per-minute maps, by type, and every rollup bucket of
/// a dimension map included: each bucket is capped on its own).
pub fn is_capped(map: &str) -> bool {
    CAPPED_MAPS.contains(&map)
        || map.starts_with(maps::PER_MINUTE_PREFIX)
        || rollup::aggregate_of(map).is_some_and(|a| CAPPED_MAPS.contains(&a))
}

/// Whether `map` counts events by type (the totals, per-minute maps and their rollups).
fn is_by_type(map: &str) -> bool {
    map == maps::EVENTS_BY_TYPE
        || map.starts_with(maps::PER_MINUTE_PREFIX)
        || rollup::aggregate_of(map) == Some(maps::EVENTS_BY_TYPE)
}

/// Whether `field` of dimension map `map` keeps its name without taking a slot: [`OTHER`]
/// itself, and the [`KNOWN_TYPES`] in the by-type maps.
pub fn always_named(map: &str, field: &str) -> bool {
    field == OTHER || (is_by_type(map) && KNOWN_TYPES.contains(&field))
}

/// Every field of `map` that is [`always_named`]: a map's named count is its size minus those
/// it holds, found without reading all its fields.
pub fn always_named_fields(map: &str) -> impl Iterator<Item = &'static str> {
    let typed = is_by_type(map);
    std::iter::once(OTHER).chain(KNOWN_TYPES.into_iter().filter(move |_| typed))
}

/// The cap decision for one dimension map within one atomic step.
#[derive(Debug, Clone)]
pub struct DimensionCap {
    /// Named fields the map holds, counting the ones this step added.
    named: usize,
    cap: usize,
}

impl DimensionCap {
    /// `named`: the fields the map holds now that take a slot (all but the
    /// [`always_named`] ones).
    pub fn new(named: usize, bounds: &Bounds) -> Self {
        DimensionCap {
            named,
            cap: bounds.max_dimension_values,
        }
    }

    /// The field an increment of `field` lands on; `exists`: whether the map holds `field`.
    /// Call it for a batch's fields in [`in_order`] order.
    pub fn target<'f>(&mut self, map: &str, field: &'f str, exists: bool) -> &'f str {
        if exists || always_named(map, field) {
            field
        } else if self.named < self.cap {
            self.named += 1;
            field
        } else {
            OTHER
        }
    }
}

/// Summed increments sorted by map, then field (bytes): the order every backend decides
/// new values in, so that the decision depends on nothing but the stored fields and the batch.
pub fn in_order<'a>(sums: &Sums<'a>) -> Vec<(&'a str, &'a str, f64)> {
    // Grouped by map first, so the sorts compare fields, not the long map names a map's
    // fields all share.
    let mut by_map: foldhash::HashMap<&'a str, Vec<(&'a str, f64)>> = Default::default();
    for (map, field, by) in sums.iter() {
        by_map.entry(map).or_default().push((field, by));
    }
    let mut maps: Vec<_> = by_map.into_iter().collect();
    maps.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut all = Vec::with_capacity(sums.len());
    for (map, mut fields) in maps {
        fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all.extend(fields.into_iter().map(|(field, by)| (map, field, by)));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(existing: &[&str], batch: &[&str], cap: usize, map: &str) -> Vec<String> {
        let bounds = Bounds {
            max_dimension_values: cap,
            ..Bounds::default()
        };
        let named = existing.iter().filter(|f| !always_named(map, f)).count();
        let mut c = DimensionCap::new(named, &bounds);
        let mut batch = batch.to_vec();
        batch.sort();
        batch
            .iter()
            .map(|f| c.target(map, f, existing.contains(f)).to_string())
            .collect()
    }

    #[test]
    fn past_the_cap_new_values_count_as_other_and_old_ones_keep_their_name() {
        let got = decide(&["a", "b"], &["d", "a", "c"], 3, maps::SIGNUPS_BY_SOURCE);
        assert_eq!(got, ["a", "c", OTHER]);
    }

    #[test]
    fn maps_written_together_decide_alike() {
        let existing = ["basic", "pro"];
        let batch = ["zeta", "alpha", "pro"];
        assert_eq!(
            decide(&existing, &batch, 3, maps::SUBSCRIPTIONS_BY_PLAN),
            decide(&existing, &batch, 3, maps::MRR_BY_PLAN)
        );
    }

    #[test]
    fn known_types_and_other_never_take_a_slot() {
        let got = decide(
            &["junk1", OTHER],
            &["junk2", USER_SIGNUP, OTHER],
            1,
            maps::EVENTS_BY_TYPE,
        );
        assert_eq!(got, [OTHER, OTHER, USER_SIGNUP]);
        assert!(!is_capped(maps::COUNTERS));
        assert!(!is_capped(maps::LATENCY_E2E));
        assert!(is_capped(&maps::per_minute(5)));
        let hourly = rollup::map_name(maps::EVENTS_BY_TYPE, rollup::Granularity::Hour, 0);
        assert!(is_capped(&hourly) && always_named(&hourly, USER_SIGNUP));
        assert!(!is_capped(&rollup::map_name(
            rollup::ACTIVE_USERS,
            rollup::Granularity::Hour,
            0
        )));
    }
}
