//! Rollups: the analytics maps again, per bucket of **event time** (the event's `timestamp`,
//! UTC) at three granularities, so `GET /analytics/timeseries` can answer "signups per day by
//! source" and the dashboard can draw history.
//!
//! A rollup bucket is an ordinary metric map with a name that says what it holds,
//! `ru:<aggregate>:<m|h|d>:<bucket start, unix seconds, 11 digits>` ([`map_name`]), so it is
//! written by the same atomic settle step as the totals and inherits their exactly-once
//! guarantee and their dimension caps (per bucket). Backends keep rollup maps apart from the
//! totals when reading (`Backend::metrics` never lists them; `Backend::rollups` reads a range)
//! and forget each bucket once its granularity's [`Retention`] has passed its end.
//!
//! Distinct active users per bucket ([`ACTIVE_USERS`] maps, [`super::MapShape::BucketUsers`])
//! are written as user ids and kept by every backend as the set registers of one HyperLogLog
//! of 2^14 registers per bucket, with [`super::hll`]'s hash: standard error 1.04 / sqrt(2^14)
//! ≈ 0.81%, near exact for small counts (linear counting). Reads return the registers;
//! registers of several buckets or partitions merge by maximum into the registers of their
//! union, so a day in any time zone is counted from its hours without counting a user twice.
//!
//! A batch's rollups are summed per bucket and field by [`RollupSums`] in the settle step, from
//! each [`super::Effect`]'s totals and event time.

use std::collections::BTreeMap;

use foldhash::{HashMap, HashMapExt, HashSet};

use super::{maps, Increment, StoredMetrics, MINUTE_WINDOW};

/// Start of every rollup map name.
pub const PREFIX: &str = "ru:";

/// The aggregate of the per-bucket distinct users (HyperLogLog registers when read).
pub const ACTIVE_USERS: &str = "active_users";

/// The totals maps that are rolled up, by the same name; plus [`ACTIVE_USERS`].
pub const ROLLED_UP: [&str; 7] = [
    maps::EVENTS_BY_TYPE,
    maps::SIGNUPS_BY_SOURCE,
    maps::SIGNUPS_BY_COUNTRY,
    maps::SUBSCRIPTIONS_BY_PLAN,
    maps::MRR_BY_PLAN,
    maps::USAGE_EVENTS_BY_FEATURE,
    maps::USAGE_QUANTITY_BY_FEATURE,
];

/// Every rollup aggregate: what retention walks.
pub const AGGREGATES: [&str; 8] = [
    maps::EVENTS_BY_TYPE,
    maps::SIGNUPS_BY_SOURCE,
    maps::SIGNUPS_BY_COUNTRY,
    maps::SUBSCRIPTIONS_BY_PLAN,
    maps::MRR_BY_PLAN,
    maps::USAGE_EVENTS_BY_FEATURE,
    maps::USAGE_QUANTITY_BY_FEATURE,
    ACTIVE_USERS,
];

/// The width of a rollup bucket. Buckets are aligned on the UTC epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// Seconds in one bucket.
    pub fn seconds(self) -> i64 {
        match self {
            Granularity::Minute => 60,
            Granularity::Hour => 3_600,
            Granularity::Day => 86_400,
        }
    }

    /// The letter in map names.
    pub fn letter(self) -> char {
        match self {
            Granularity::Minute => 'm',
            Granularity::Hour => 'h',
            Granularity::Day => 'd',
        }
    }

    /// `minute`, `hour`, `day`: the API's names.
    pub fn name(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn parse(name: &str) -> Option<Granularity> {
        Granularity::ALL.into_iter().find(|g| g.name() == name)
    }

    fn of_letter(letter: &str) -> Option<Granularity> {
        Granularity::ALL
            .into_iter()
            .find(|g| letter.len() == 1 && letter.starts_with(g.letter()))
    }

    /// Start (unix seconds) of the UTC bucket holding `unix_seconds`.
    pub fn bucket_start(self, unix_seconds: i64) -> i64 {
        unix_seconds.div_euclid(self.seconds()) * self.seconds()
    }
}

/// The rollup map of `aggregate` for the bucket starting at `start` (unix seconds); fixed width
/// so names sort by time.
pub fn map_name(aggregate: &str, granularity: Granularity, start: i64) -> String {
    format!("{PREFIX}{aggregate}:{}:{start:011}", granularity.letter())
}

/// `(aggregate, granularity, start)` of a rollup map name; `None` for any other map.
pub fn parse(map: &str) -> Option<(&str, Granularity, i64)> {
    let rest = map.strip_prefix(PREFIX)?;
    let mut parts = rest.rsplitn(3, ':');
    let start = parts.next()?.parse().ok()?;
    let granularity = Granularity::of_letter(parts.next()?)?;
    Some((parts.next()?, granularity, start))
}

/// The aggregate of a rollup map name (cheap: no number parsing).
pub fn aggregate_of(map: &str) -> Option<&str> {
    map.strip_prefix(PREFIX)?.split(':').next()
}

/// Whether `map` is a rollup map of distinct-user registers.
pub fn is_register_map(map: &str) -> bool {
    aggregate_of(map) == Some(ACTIVE_USERS)
}

/// How long each granularity's buckets are kept after they end (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Retention {
    /// `DAY15_ROLLUP_MINUTE_RETENTION_HOURS`.
    pub minute_seconds: i64,
    /// `DAY15_ROLLUP_HOUR_RETENTION_DAYS`.
    pub hour_seconds: i64,
    /// `DAY15_ROLLUP_DAY_RETENTION_DAYS`.
    pub day_seconds: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            minute_seconds: 48 * 3_600,
            hour_seconds: 90 * 86_400,
            day_seconds: 3_650 * 86_400,
        }
    }
}

impl Retention {
    pub fn of(&self, granularity: Granularity) -> i64 {
        match granularity {
            Granularity::Minute => self.minute_seconds,
            Granularity::Hour => self.hour_seconds,
            Granularity::Day => self.day_seconds,
        }
    }

    /// The unix second at which the bucket starting at `start` is forgotten: its end plus the
    /// retention (what Redis sets as the key's expiry).
    pub fn expires_at(&self, granularity: Granularity, start: i64) -> i64 {
        start
            .saturating_add(granularity.seconds())
            .saturating_add(self.of(granularity))
    }

    /// The oldest bucket start still kept at `now` (unix seconds).
    pub fn oldest_kept(&self, granularity: Granularity, now: i64) -> i64 {
        granularity.bucket_start(now.saturating_sub(self.of(granularity)))
    }

    /// Whether rollup map `map` is still kept at `now`; maps that are not rollups always are.
    /// A late event's increments for a forgotten bucket are dropped by this check, in every
    /// backend, so a bucket is never brought back after it was deleted.
    pub fn keeps(&self, map: &str, now: i64) -> bool {
        match parse(map) {
            Some((_, g, start)) => self.expires_at(g, start) > now,
            None => true,
        }
    }
}

/// Stored buckets of one aggregate at one granularity: bucket start (unix seconds) -> fields
/// as stored (summed values; for [`ACTIVE_USERS`] the HyperLogLog's registers that are set,
/// register -> rank). A bucket with nothing stored is absent.
pub type Buckets = BTreeMap<i64, BTreeMap<String, f64>>;

/// Bucket starts `from..to` of the minutes `GET /analytics` shows at `now` (unix seconds): the
/// last [`MINUTE_WINDOW`] minutes, this one included.
pub fn minute_window(now: i64) -> (i64, i64) {
    let this = Granularity::Minute.bucket_start(now);
    (this - (MINUTE_WINDOW - 1) * 60, this + 60)
}

/// Adds the minute rollup of events by type to a snapshot of the totals, under the rollup map
/// names, for the per-minute section of `/analytics`.
pub fn add_minutes(snapshot: &mut StoredMetrics, minutes: Buckets) {
    for (start, fields) in minutes {
        snapshot.maps.insert(
            map_name(maps::EVENTS_BY_TYPE, Granularity::Minute, start),
            fields,
        );
    }
}

/// A batch's rollup increments, summed per bucket and field while borrowing the effects'
/// names: a batch builds each bucket's map name once, not once per event, which keeps the
/// rollups' cost on the settle path small (see BENCHMARKS.md).
#[derive(Debug, Default)]
pub struct RollupSums<'a> {
    /// `(aggregate, granularity, bucket start, field)` -> sum.
    sums: HashMap<(&'a str, Granularity, i64, &'a str), f64>,
    /// `(granularity, bucket start, user)`: the bucket's distinct users.
    users: HashSet<(Granularity, i64, &'a str)>,
}

impl<'a> RollupSums<'a> {
    /// Adds an effect's rolled-up increments, and its user, at its event time.
    pub fn add(&mut self, effect: &'a super::Effect) {
        let Some(at) = effect.event_time else {
            return;
        };
        let starts = Granularity::ALL.map(|g| (g, g.bucket_start(at)));
        for i in &effect.increments {
            if i.map == maps::USERS {
                for (g, start) in starts {
                    self.users.insert((g, start, &i.field));
                }
            } else if let Some(aggregate) = ROLLED_UP.iter().find(|m| **m == i.map) {
                for (g, start) in starts {
                    *self
                        .sums
                        .entry((aggregate, g, start, &i.field))
                        .or_insert(0.0) += i.by;
                }
            }
        }
    }

    /// The summed increments, one per bucket and field (users: one per bucket and user).
    pub fn increments(&self) -> Vec<Increment> {
        let mut names: HashMap<(&str, Granularity, i64), String> = HashMap::new();
        let mut name = |aggregate: &'a str, g: Granularity, start: i64| -> String {
            names
                .entry((aggregate, g, start))
                .or_insert_with(|| map_name(aggregate, g, start))
                .clone()
        };
        let mut out = Vec::with_capacity(self.sums.len() + self.users.len());
        for (&(aggregate, g, start, field), &by) in &self.sums {
            out.push(Increment {
                map: name(aggregate, g, start),
                field: field.to_string(),
                by,
            });
        }
        for &(g, start, user) in &self.users {
            out.push(Increment {
                map: name(ACTIVE_USERS, g, start),
                field: user.to_string(),
                by: 1.0,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_time() {
        let a = map_name(maps::SIGNUPS_BY_SOURCE, Granularity::Hour, 3_600);
        let b = map_name(maps::SIGNUPS_BY_SOURCE, Granularity::Hour, 1_764_000_000);
        assert_eq!(a, "ru:signups_by_source:h:00000003600");
        assert!(a < b);
        assert_eq!(
            parse(&b),
            Some((maps::SIGNUPS_BY_SOURCE, Granularity::Hour, 1_764_000_000))
        );
        assert_eq!(parse(maps::EVENTS_BY_TYPE), None);
        assert_eq!(aggregate_of(&b), Some(maps::SIGNUPS_BY_SOURCE));
    }

    #[test]
    fn buckets_align_on_utc_and_before_the_epoch() {
        assert_eq!(Granularity::Day.bucket_start(86_400 + 5), 86_400);
        assert_eq!(Granularity::Minute.bucket_start(-1), -60);
    }

    #[test]
    fn a_bucket_is_kept_until_its_end_plus_the_retention() {
        let r = Retention::default();
        let start = 1_000 * 60;
        let name = map_name(maps::EVENTS_BY_TYPE, Granularity::Minute, start);
        let gone = start + 60 + 48 * 3_600;
        assert!(r.keeps(&name, gone - 1));
        assert!(!r.keeps(&name, gone));
        assert!(r.keeps(maps::EVENTS_BY_TYPE, i64::MAX));
    }
}
