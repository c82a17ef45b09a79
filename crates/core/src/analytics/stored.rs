//! Increments summed and stored, and how each stored map is read back.

use std::collections::BTreeMap;

use super::{maps, Increment, TOP_USERS};

/// How a stored metric map is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapShape {
    /// Every field with its number.
    Summed,
    /// Only the number of fields ([`maps::USERS`]).
    Distinct,
    /// Only the [`TOP_USERS`] largest fields ([`maps::USAGE_BY_USER`]).
    Ranked,
    /// The distinct users of one rollup bucket ([`super::rollup::ACTIVE_USERS`]): written with
    /// the user id as field, kept by the backend as a HyperLogLog, read back as its registers
    /// (field = register, value = rank; registers merge by maximum).
    BucketUsers,
}

impl MapShape {
    /// The shape of the map `name`: the one place the distinct and ranked maps are named.
    pub fn of(name: &str) -> MapShape {
        match name {
            maps::USERS => MapShape::Distinct,
            maps::USAGE_BY_USER => MapShape::Ranked,
            _ if super::rollup::is_register_map(name) => MapShape::BucketUsers,
            _ => MapShape::Summed,
        }
    }
}

/// Increments summed per `(map, field)`, borrowing the names: how a batch's effects are folded
/// so that each metric is written once per batch, whatever the batch size.
#[derive(Debug, Clone, Default)]
pub struct Sums<'a>(foldhash::HashMap<(&'a str, &'a str), f64>);

impl<'a> Sums<'a> {
    pub fn of(increments: impl IntoIterator<Item = &'a Increment>) -> Self {
        let mut sums = Sums::default();
        sums.extend(increments);
        sums
    }

    pub fn extend(&mut self, increments: impl IntoIterator<Item = &'a Increment>) {
        for i in increments {
            *self.0.entry((&i.map, &i.field)).or_insert(0.0) += i.by;
        }
    }

    /// Distinct `(map, field)` pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `(map, field, sum)`, each pair once, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str, f64)> + '_ {
        self.0.iter().map(|(&(map, field), &by)| (map, field, by))
    }
}

/// Metric maps held in memory, `map -> field -> number`.
pub type Maps = BTreeMap<String, BTreeMap<String, f64>>;

/// Adds increments to maps held in memory.
pub fn add_to_maps(maps: &mut Maps, increments: &[Increment]) {
    for (map, field, by) in Sums::of(increments).iter() {
        *maps
            .entry(map.to_string())
            .or_default()
            .entry(field.to_string())
            .or_insert(0.0) += by;
    }
}

/// Every metric map as a backend stores it (pipeline counters, analytics maps, latency
/// histograms), read back in one consistent step; [`AnalyticsSnapshot`] and the `/stats`
/// document are shaped from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredMetrics {
    /// Every map except the ranked and distinct ones, per-minute maps included.
    pub maps: BTreeMap<String, BTreeMap<String, f64>>,
    /// Number of fields of [`maps::USERS`].
    pub distinct_users: u64,
    /// The [`TOP_USERS`] largest fields of [`maps::USAGE_BY_USER`], largest first.
    pub top_users: Vec<(String, f64)>,
}

impl StoredMetrics {
    pub fn map(&self, name: &str) -> BTreeMap<String, f64> {
        self.maps.get(name).cloned().unwrap_or_default()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.maps
            .get(maps::COUNTERS)
            .and_then(|m| m.get(name))
            .copied()
            .unwrap_or(0.0)
            .max(0.0) as u64
    }

    /// Merges increments not yet stored (a process's unflushed local counts).
    pub fn add(&mut self, increments: &[Increment]) {
        add_to_maps(&mut self.maps, increments);
    }

    /// The snapshot of maps held whole in memory, each read back by its [`MapShape`].
    pub fn from_maps(all: &Maps) -> Self {
        let mut snapshot = StoredMetrics::default();
        for (name, map) in all {
            match MapShape::of(name) {
                MapShape::Summed | MapShape::BucketUsers => {
                    snapshot.maps.insert(name.clone(), map.clone());
                }
                MapShape::Distinct => snapshot.distinct_users = map.len() as u64,
                MapShape::Ranked => {
                    let mut top: Vec<_> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
                    top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                    top.truncate(TOP_USERS);
                    snapshot.top_users = top;
                }
            }
        }
        snapshot
    }
}
