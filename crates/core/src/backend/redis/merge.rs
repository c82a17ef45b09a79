//! Merging the partitions' metric maps into one [`StoredMetrics`] on read.
//!
//! Each partition applies the analytics bounds to its own maps (inside its settle script), so
//! the merge applies them once more to the sums:
//! - summed maps add up field by field; a dimension map with more named fields than the cap
//!   keeps the largest `cap` (ties by name) and counts the rest under `other`, so its total is
//!   unchanged and it never shows more values than one partition could hold;
//! - the distinct users are the union of the partitions' exact sets while each is small enough
//!   to be read whole (see [`MEMBERS_PER_PARTITION`]), else the estimate of the union of their
//!   HyperLogLogs (read by the caller);
//! - the top users add up per user across the partitions' top lists, then the largest
//!   [`TOP_USERS`] are kept: exact while each partition's ranking is.

use std::collections::{BTreeMap, HashSet};

use crate::analytics::bounds::{always_named, is_capped, OTHER};
use crate::analytics::{maps, StoredMetrics, TOP_USERS};

/// Largest exact user set a partition returns whole, so the union stays exact: bounds what one
/// read of `/analytics` moves (at most this many ids per partition).
pub(super) const MEMBERS_PER_PARTITION: usize = 1_000;

/// How many of its top users each partition returns: more than are shown, so a user who is
/// second in every partition is still ranked first overall.
pub(super) const TOP_USERS_PER_PARTITION: usize = TOP_USERS * 4;

/// One partition's metrics as read, before merging.
#[derive(Debug, Default)]
pub(super) struct PartitionMetrics {
    pub(super) maps: BTreeMap<String, BTreeMap<String, f64>>,
    /// The partition's distinct-user count.
    pub(super) distinct_count: u64,
    /// Its exact user set, when returned whole.
    pub(super) distinct_members: Option<Vec<String>>,
    pub(super) top_users: Vec<(String, f64)>,
}

/// The merged metrics, and whether the distinct count still needs the HyperLogLog estimate
/// (some partition's set was not returned whole).
pub(super) fn merge(parts: Vec<PartitionMetrics>, cap: usize) -> (StoredMetrics, bool) {
    let mut out = StoredMetrics::default();
    let mut users: HashSet<String> = HashSet::new();
    let mut need_estimate = false;
    let mut largest_count = 0;
    let mut ranked: BTreeMap<String, f64> = BTreeMap::new();
    for part in parts {
        for (name, map) in part.maps {
            let merged = out.maps.entry(name).or_default();
            for (field, value) in map {
                *merged.entry(field).or_default() += value;
            }
        }
        largest_count = largest_count.max(part.distinct_count);
        match part.distinct_members {
            Some(members) => users.extend(members),
            None if part.distinct_count == 0 => {}
            None => need_estimate = true,
        }
        for (user, score) in part.top_users {
            *ranked.entry(user).or_default() += score;
        }
    }
    for (name, map) in out.maps.iter_mut() {
        let paired = COMPANIONS.iter().any(|(l, c)| l == name || c == name);
        if is_capped(name) && !paired {
            cap_map(name, map, cap);
        }
    }
    for (leader, companion) in COMPANIONS {
        let leader_kept = out
            .maps
            .get(leader)
            .and_then(|m| kept_fields(leader, m, cap));
        if let (Some(map), Some(kept)) = (out.maps.get_mut(leader), &leader_kept) {
            fold_into_other(leader, map, |field| kept.contains(field));
        }
        if let Some(map) = out.maps.get_mut(companion) {
            match &leader_kept {
                Some(kept) => fold_into_other(companion, map, |field| kept.contains(field)),
                None => cap_map(companion, map, cap),
            }
        }
    }
    out.distinct_users = (users.len() as u64).max(largest_count);
    let mut top: Vec<(String, f64)> = ranked.into_iter().collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(TOP_USERS);
    out.top_users = top;
    (out, need_estimate)
}

/// Dimension maps written together with a leading one (`leader`, `companion`): the companion
/// keeps exactly the fields its leader keeps, so a plan's count and its MRR never disagree on
/// whether it is `other`.
const COMPANIONS: [(&str, &str); 2] = [
    (maps::SUBSCRIPTIONS_BY_PLAN, maps::MRR_BY_PLAN),
    (
        maps::USAGE_EVENTS_BY_FEATURE,
        maps::USAGE_QUANTITY_BY_FEATURE,
    ),
];

/// Keeps the `cap` largest named fields of dimension map `name` (ties by name) and folds the
/// rest into [`OTHER`]; fields that are always named stay.
pub(super) fn cap_map(name: &str, map: &mut BTreeMap<String, f64>, cap: usize) {
    if let Some(kept) = kept_fields(name, map, cap) {
        fold_into_other(name, map, |field| kept.contains(field));
    }
}

/// The named fields dimension map `name` keeps when it holds more than `cap`; `None` when it
/// is within the cap.
fn kept_fields(name: &str, map: &BTreeMap<String, f64>, cap: usize) -> Option<HashSet<String>> {
    let mut named: Vec<(&String, f64)> = map
        .iter()
        .filter(|(field, _)| !always_named(name, field))
        .map(|(f, v)| (f, *v))
        .collect();
    if named.len() <= cap {
        return None;
    }
    named.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    Some(named[..cap].iter().map(|(f, _)| (*f).clone()).collect())
}

/// Folds every named field of `map` that `keep` refuses into [`OTHER`].
fn fold_into_other(name: &str, map: &mut BTreeMap<String, f64>, keep: impl Fn(&str) -> bool) {
    let folded: Vec<String> = map
        .keys()
        .filter(|field| !always_named(name, field) && !keep(field))
        .cloned()
        .collect();
    if folded.is_empty() {
        return;
    }
    let sum: f64 = folded.iter().filter_map(|f| map.remove(f)).sum();
    *map.entry(OTHER.to_string()).or_default() += sum;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(map: &[(&str, f64)], users: Option<&[&str]>, count: u64) -> PartitionMetrics {
        let mut maps = BTreeMap::new();
        maps.insert(
            maps::SIGNUPS_BY_COUNTRY.to_string(),
            map.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        );
        PartitionMetrics {
            maps,
            distinct_count: count,
            distinct_members: users.map(|u| u.iter().map(|s| s.to_string()).collect()),
            top_users: vec![("u1".into(), 2.0), ("u2".into(), 3.0)],
        }
    }

    #[test]
    fn sums_add_up_and_users_are_united() {
        let (m, estimate) = merge(
            vec![
                part(&[("US", 2.0)], Some(&["u1", "u2"]), 2),
                part(&[("US", 1.0), ("DE", 1.0)], Some(&["u2", "u3"]), 2),
            ],
            10,
        );
        assert!(!estimate);
        assert_eq!(m.distinct_users, 3);
        assert_eq!(m.map(maps::SIGNUPS_BY_COUNTRY)["US"], 3.0);
        assert_eq!(m.top_users[0], ("u2".to_string(), 6.0));
    }

    #[test]
    fn a_merged_dimension_map_keeps_the_cap_and_its_total() {
        let (m, _) = merge(
            vec![
                part(&[("US", 5.0), ("DE", 1.0)], None, 0),
                part(&[("FR", 3.0), (OTHER, 2.0)], None, 0),
            ],
            2,
        );
        let map = m.map(maps::SIGNUPS_BY_COUNTRY);
        assert_eq!(map.len(), 3, "{map:?}");
        assert_eq!(map[OTHER], 3.0);
        assert_eq!(map.values().sum::<f64>(), 11.0);
    }

    #[test]
    fn a_set_not_read_whole_asks_for_the_estimate() {
        let (m, estimate) = merge(vec![part(&[], None, 5000), part(&[], Some(&["a"]), 1)], 10);
        assert!(estimate);
        assert_eq!(m.distinct_users, 5000);
    }
}
