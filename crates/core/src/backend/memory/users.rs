//! Distinct users (exact while small, then a HyperLogLog) and the bounded top users.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::analytics::hll::Hll;
use crate::analytics::Bounds;

/// Distinct users in bounded memory: the exact set until it is full, and a HyperLogLog fed
/// with every user.
#[derive(Default)]
pub(super) struct DistinctUsers {
    /// The first [`Bounds::exact_distinct_users`] users.
    pub(super) exact: HashSet<String>,
    /// Every user, for the estimate once `exact` is full.
    pub(super) estimate: Hll,
}

impl DistinctUsers {
    pub(super) fn insert(&mut self, user: &str, bounds: &Bounds) {
        self.estimate.insert(user);
        if self.exact.len() < bounds.exact_distinct_users && !self.exact.contains(user) {
            self.exact.insert(user.to_string());
        }
    }

    /// The exact count while the set is not full, else the estimate (never below the set).
    pub(super) fn count(&self, bounds: &Bounds) -> u64 {
        let exact = self.exact.len() as u64;
        if self.exact.len() < bounds.exact_distinct_users {
            exact
        } else {
            self.estimate.estimate().max(exact)
        }
    }
}

/// One ranked user, ordered smallest first (ties: the name that ranks last first), so the
/// first entry is the one a new user replaces.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Ranked(pub(super) f64, pub(super) String);

impl Eq for Ranked {}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .total_cmp(&other.0)
            .then_with(|| other.1.cmp(&self.1))
    }
}

/// Usage per user as a Space-Saving top-K: exact below K tracked users; at K a new user
/// replaces the smallest entry and inherits its count.
#[derive(Default)]
pub(super) struct TopUsers {
    /// User -> usage.
    pub(super) usage: BTreeMap<String, f64>,
    /// The same entries, ordered by usage.
    pub(super) order: BTreeSet<Ranked>,
}

impl TopUsers {
    pub(super) fn add(&mut self, user: &str, by: f64, bounds: &Bounds) {
        let base = match self.usage.get(user) {
            Some(&v) => {
                self.order.remove(&Ranked(v, user.to_string()));
                v
            }
            None if self.usage.len() < bounds.top_users_tracked.max(1) => 0.0,
            None => match self.order.pop_first() {
                Some(Ranked(v, evicted)) => {
                    self.usage.remove(&evicted);
                    v
                }
                None => 0.0,
            },
        };
        self.usage.insert(user.to_string(), base + by);
        self.order.insert(Ranked(base + by, user.to_string()));
    }

    /// The `n` largest, largest first.
    pub(super) fn top(&self, n: usize) -> Vec<(String, f64)> {
        self.order
            .iter()
            .rev()
            .take(n)
            .map(|Ranked(v, u)| (u.clone(), *v))
            .collect()
    }
}
