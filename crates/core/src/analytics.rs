//! The analytics model (docs/api.md, `GET /analytics`) as counter increments.
//!
//! Every aggregate is a named map of `field -> number`, and applying an event is a list of
//! [`Increment`]s. That shape is what every backend can apply atomically in one step (a SQLite
//! transaction, one Lua script) together with the processed-id mark and the ack, which is how
//! analytics stay exactly-once under redelivery. Reading turns the maps back into the typed
//! [`AnalyticsSnapshot`] served at `/analytics`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::event::{
    Event, EventId, MAX_AMOUNT, MAX_COUNT, SUBSCRIPTION_CREATED, USAGE_TRACKED, USER_SIGNUP,
};
use crate::latency::{self, Percentiles};
use crate::logging::LogSafe;
use crate::stats::{json_number, json_percentiles};

pub mod bounds;
pub mod hll;

pub use bounds::Bounds;

/// Names of the metric maps every backend stores.
pub mod maps {
    /// Pipeline-wide counters; fields are the names in [`super::counters`].
    pub const COUNTERS: &str = "counters";
    pub const EVENTS_BY_TYPE: &str = "events_by_type";
    pub const SIGNUPS_BY_SOURCE: &str = "signups_by_source";
    pub const SIGNUPS_BY_COUNTRY: &str = "signups_by_country";
    pub const SUBSCRIPTIONS_BY_PLAN: &str = "subscriptions_by_plan";
    pub const MRR_BY_PLAN: &str = "mrr_by_plan";
    pub const USAGE_EVENTS_BY_FEATURE: &str = "usage_events_by_feature";
    pub const USAGE_QUANTITY_BY_FEATURE: &str = "usage_quantity_by_feature";
    /// Ranked map: backends return only its top entries ([`super::TOP_USERS`]).
    pub const USAGE_BY_USER: &str = "usage_by_user";
    /// Distinct-count map: backends return only its size.
    pub const USERS: &str = "users";
    pub const LATENCY_INGEST: &str = "latency_ingest_us";
    pub const LATENCY_E2E: &str = "latency_e2e_us";
    /// Prefix of the per-minute maps (`epm:<unix minute>`, field = event type). Backends may
    /// forget them after [`super::MINUTE_WINDOW`] minutes.
    pub const PER_MINUTE_PREFIX: &str = "epm:";

    /// The per-minute map of a unix minute; fixed width so names sort by time.
    pub fn per_minute(minute: i64) -> String {
        format!("{PER_MINUTE_PREFIX}{minute:010}")
    }
}

/// Field names of the [`maps::COUNTERS`] map.
pub mod counters {
    pub const RECEIVED: &str = "received";
    pub const ACCEPTED: &str = "accepted";
    pub const DUPLICATES: &str = "duplicates";
    pub const REJECTED: &str = "rejected";
    pub const PROCESSED: &str = "processed";
    pub const FAILED: &str = "failed";
    pub const RETRIED: &str = "retried";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const UNHANDLED: &str = "unhandled";
    pub const ALL: [&str; 9] = [
        RECEIVED,
        ACCEPTED,
        DUPLICATES,
        REJECTED,
        PROCESSED,
        FAILED,
        RETRIED,
        DEAD_LETTERED,
        UNHANDLED,
    ];
}

/// What settling a failed attempt counts. The one home of the rules "a retry counts `failed`
/// and `retried`, a dead letter `failed` and `dead_lettered`": every backend applies them in
/// its settle step (only when the settlement takes effect), and the consumer's statistics and
/// dashboard push count through [`FailureCounts`].
pub mod counting {
    use super::counters::{DEAD_LETTERED, FAILED, RETRIED};

    /// Counters a retry adds one to.
    pub const RETRY: &[&str] = &[FAILED, RETRIED];
    /// Counters a dead letter adds one to.
    pub const DEAD_LETTER: &[&str] = &[FAILED, DEAD_LETTERED];
}

/// The failure counters as plain numbers, filled by the rules of [`counting`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FailureCounts {
    /// Failed attempts: retries plus dead letters.
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

impl FailureCounts {
    /// Adds one to each counter a rule of [`counting`] names.
    pub fn count(&mut self, rule: &[&str]) {
        for name in rule {
            match *name {
                counters::FAILED => self.failed += 1,
                counters::RETRIED => self.retried += 1,
                counters::DEAD_LETTERED => self.dead_lettered += 1,
                _ => {}
            }
        }
    }
}

/// How a stored metric map is read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapShape {
    /// Every field with its number.
    Summed,
    /// Only the number of fields ([`maps::USERS`]).
    Distinct,
    /// Only the [`TOP_USERS`] largest fields ([`maps::USAGE_BY_USER`]).
    Ranked,
}

impl MapShape {
    /// The shape of the map `name`: the one place the distinct and ranked maps are named.
    pub fn of(name: &str) -> MapShape {
        match name {
            maps::USERS => MapShape::Distinct,
            maps::USAGE_BY_USER => MapShape::Ranked,
            _ => MapShape::Summed,
        }
    }
}

/// Increments summed per `(map, field)`, borrowing the names: how a batch's effects are folded
/// so that each metric is written once per batch, whatever the batch size.
#[derive(Debug, Clone, Default)]
pub struct Sums<'a>(std::collections::HashMap<(&'a str, &'a str), f64>);

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

/// How many users `/analytics` lists by usage.
pub const TOP_USERS: usize = 10;
/// How many minutes of per-minute counts are kept and shown.
pub const MINUTE_WINDOW: i64 = 60;

/// Add `by` to `map[field]`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Increment {
    pub map: String,
    pub field: String,
    pub by: f64,
}

impl Increment {
    pub fn new(map: &str, field: impl Into<String>, by: f64) -> Self {
        Increment {
            map: map.to_string(),
            field: field.into(),
            by,
        }
    }

    /// `+1` on a pipeline counter.
    pub fn counter(name: &str) -> Self {
        Increment::new(maps::COUNTERS, name, 1.0)
    }

    /// One latency sample into a histogram map.
    pub fn latency(map: &str, micros: u64) -> Self {
        Increment::new(map, latency::bucket_of(micros).to_string(), 1.0)
    }
}

/// What applying one event changes; applied at most once per event id.
#[derive(Debug, Clone, PartialEq)]
pub struct Effect {
    pub event_id: EventId,
    pub increments: Vec<Increment>,
}

/// The monthly recurring revenue of a subscription: annual plans count a twelfth.
pub fn monthly_amount(amount: f64, billing_cycle: Option<&str>) -> f64 {
    match billing_cycle {
        Some("annual") => amount / 12.0,
        _ => amount,
    }
}

/// What a handler logs for a known event, as the original did.
pub fn describe(event: &Event) -> Option<String> {
    let meta = event.metadata();
    // Metadata strings are the sender's and unbounded: cut and escaped as log values.
    let s = |k: &str| {
        let value = meta
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("unknown");
        LogSafe(value).to_string()
    };
    let user = event.user_id.as_deref().unwrap_or("anonymous");
    match event.event_type.as_str() {
        USER_SIGNUP => Some(format!("User signup: {user} from {}", s("source"))),
        SUBSCRIPTION_CREATED => {
            let amount = meta
                .and_then(|m| m.get("amount"))
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0);
            Some(format!(
                "Subscription created: {user} - {} (${amount:.2})",
                s("plan")
            ))
        }
        USAGE_TRACKED => Some(format!(
            "Usage tracked: {user} - {} ({})",
            s("feature"),
            quantity(event)
        )),
        _ => None,
    }
}

fn quantity(event: &Event) -> u64 {
    event
        .metadata()
        .and_then(|m| m.get("quantity"))
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
}

/// The increments of applying `event` at `applied_at`.
pub fn effect_of(event: &Event, applied_at: DateTime<Utc>) -> Effect {
    let meta = event.metadata();
    let text = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string()
    };
    let t = event.event_type.as_str();
    let mut inc = vec![
        Increment::counter(counters::PROCESSED),
        Increment::new(maps::EVENTS_BY_TYPE, t, 1.0),
        Increment::new(&maps::per_minute(applied_at.timestamp() / 60), t, 1.0),
    ];
    if let Some(user) = &event.user_id {
        inc.push(Increment::new(maps::USERS, user.clone(), 1.0));
    }
    if let Some(received) = event.received_at_micros() {
        let micros = (applied_at.timestamp_micros() - received).max(0) as u64;
        inc.push(Increment::latency(maps::LATENCY_E2E, micros));
    }
    match t {
        USER_SIGNUP => {
            inc.push(Increment::new(maps::SIGNUPS_BY_SOURCE, text("source"), 1.0));
            inc.push(Increment::new(
                maps::SIGNUPS_BY_COUNTRY,
                text("country"),
                1.0,
            ));
        }
        SUBSCRIPTION_CREATED => {
            // Validation bounds the amount; the clamp keeps an `Event` built any other way from
            // adding a non-finite or huge figure to the stored sum.
            let amount = meta
                .and_then(|m| m.get("amount"))
                .and_then(|v| v.as_f64())
                .filter(|a| a.is_finite())
                .map_or(0.0, |a| a.clamp(0.0, MAX_AMOUNT));
            let cycle = meta
                .and_then(|m| m.get("billing_cycle"))
                .and_then(|v| v.as_str());
            let plan = text("plan");
            inc.push(Increment::new(
                maps::SUBSCRIPTIONS_BY_PLAN,
                plan.clone(),
                1.0,
            ));
            inc.push(Increment::new(
                maps::MRR_BY_PLAN,
                plan,
                monthly_amount(amount, cycle),
            ));
        }
        USAGE_TRACKED => {
            let q = quantity(event).min(MAX_COUNT) as f64;
            let feature = text("feature");
            inc.push(Increment::new(
                maps::USAGE_EVENTS_BY_FEATURE,
                feature.clone(),
                1.0,
            ));
            inc.push(Increment::new(maps::USAGE_QUANTITY_BY_FEATURE, feature, q));
            if let Some(user) = &event.user_id {
                inc.push(Increment::new(maps::USAGE_BY_USER, user.clone(), q));
            }
        }
        _ => inc.push(Increment::counter(counters::UNHANDLED)),
    }
    Effect {
        event_id: event.id.clone(),
        increments: inc,
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
                MapShape::Summed => {
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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlanFigures {
    pub count: u64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeatureFigures {
    pub events: u64,
    pub quantity: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserUsage {
    pub user_id: String,
    pub quantity: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Signups {
    pub total: u64,
    pub by_source: BTreeMap<String, u64>,
    pub by_country: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Subscriptions {
    pub total: u64,
    /// Monthly recurring revenue in the amounts' currency; annual plans count a twelfth.
    pub mrr: f64,
    pub by_plan: BTreeMap<String, PlanFigures>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Usage {
    pub events: u64,
    pub quantity: u64,
    pub by_feature: BTreeMap<String, FeatureFigures>,
    pub top_users: Vec<UserUsage>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MinuteCounts {
    /// Start of the minute, RFC 3339 UTC.
    pub minute: String,
    pub total: u64,
    pub by_type: BTreeMap<String, u64>,
}

/// The `/analytics` document.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AnalyticsSnapshot {
    pub generated_at: String,
    /// Events applied (known and unknown types).
    pub events_processed: u64,
    pub events_by_type: BTreeMap<String, u64>,
    pub unhandled: u64,
    pub distinct_users: u64,
    pub signups: Signups,
    pub subscriptions: Subscriptions,
    pub usage: Usage,
    /// The last [`MINUTE_WINDOW`] minutes, oldest first, including empty minutes.
    pub events_per_minute: Vec<MinuteCounts>,
    pub end_to_end_latency: Percentiles,
}

/// A map of counts as whole numbers (a stored count is never negative or fractional, but a
/// float store is read defensively). The conversion saturates: NaN and negatives read 0, a sum
/// beyond `u64::MAX` reads `u64::MAX`; it never wraps or panics.
pub fn counts(map: BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    map.into_iter()
        .map(|(k, v)| (k, v.max(0.0).round() as u64))
        .collect()
}

/// Rounds to the cent, as a [`json_number`]: never NaN, infinite or `-0.0` (an empty sum of
/// floats is `-0.0`).
fn round2(x: f64) -> f64 {
    json_number((x * 100.0).round() / 100.0)
}

/// Adds counts without wrapping or panicking.
fn saturating_total<'a>(values: impl IntoIterator<Item = &'a u64>) -> u64 {
    values.into_iter().fold(0, |sum, n| sum.saturating_add(*n))
}

impl AnalyticsSnapshot {
    /// The document of `m` at `now`. Counts and totals read back saturated; every other
    /// figure is a [`json_number`], so the JSON never carries `null` or `-0.0` for a number.
    pub fn from_metrics(m: &StoredMetrics, now: DateTime<Utc>) -> Self {
        let events_by_type = counts(m.map(maps::EVENTS_BY_TYPE));
        let of_type = |t: &str| events_by_type.get(t).copied().unwrap_or(0);

        let mrr_by_plan = m.map(maps::MRR_BY_PLAN);
        let by_plan: BTreeMap<String, PlanFigures> = counts(m.map(maps::SUBSCRIPTIONS_BY_PLAN))
            .into_iter()
            .map(|(plan, count)| {
                let mrr = round2(mrr_by_plan.get(&plan).copied().unwrap_or(0.0));
                (plan, PlanFigures { count, mrr })
            })
            .collect();

        let quantities = counts(m.map(maps::USAGE_QUANTITY_BY_FEATURE));
        let by_feature: BTreeMap<String, FeatureFigures> =
            counts(m.map(maps::USAGE_EVENTS_BY_FEATURE))
                .into_iter()
                .map(|(f, events)| {
                    let quantity = quantities.get(&f).copied().unwrap_or(0);
                    (f, FeatureFigures { events, quantity })
                })
                .collect();

        let this_minute = now.timestamp() / 60;
        let events_per_minute = (this_minute - MINUTE_WINDOW + 1..=this_minute)
            .map(|minute| {
                let by_type = counts(m.map(&maps::per_minute(minute)));
                MinuteCounts {
                    minute: Utc
                        .timestamp_opt(minute * 60, 0)
                        .single()
                        .map(|t| t.format("%Y-%m-%dT%H:%M:00Z").to_string())
                        .unwrap_or_default(),
                    total: saturating_total(by_type.values()),
                    by_type,
                }
            })
            .collect();

        AnalyticsSnapshot {
            generated_at: crate::event::format_received_at(now),
            events_processed: m.counter(counters::PROCESSED),
            unhandled: m.counter(counters::UNHANDLED),
            distinct_users: m.distinct_users,
            signups: Signups {
                total: of_type(USER_SIGNUP),
                by_source: counts(m.map(maps::SIGNUPS_BY_SOURCE)),
                by_country: counts(m.map(maps::SIGNUPS_BY_COUNTRY)),
            },
            subscriptions: Subscriptions {
                total: of_type(SUBSCRIPTION_CREATED),
                mrr: round2(mrr_by_plan.values().sum()),
                by_plan,
            },
            usage: Usage {
                events: of_type(USAGE_TRACKED),
                quantity: saturating_total(quantities.values()),
                by_feature,
                top_users: m
                    .top_users
                    .iter()
                    .map(|(u, q)| UserUsage {
                        user_id: u.clone(),
                        quantity: q.max(0.0).round() as u64,
                    })
                    .collect(),
            },
            events_by_type,
            events_per_minute,
            end_to_end_latency: json_percentiles(latency::percentiles(&m.map(maps::LATENCY_E2E))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(v: serde_json::Value) -> Event {
        Event::from_value(v).unwrap()
    }

    #[test]
    fn a_known_mix_gives_the_expected_aggregates() {
        let now = Utc::now();
        let events = [
            json!({"event_id":"a","event_type":"user_signup","user_id":"u1","timestamp":"2025-12-16T10:00:00Z","metadata":{"source":"organic","country":"US"}}),
            json!({"event_id":"b","event_type":"subscription_created","user_id":"u1","timestamp":"2025-12-16T10:00:00Z","metadata":{"plan":"pro","amount":120.0,"billing_cycle":"annual"}}),
            json!({"event_id":"c","event_type":"subscription_created","user_id":"u2","timestamp":"2025-12-16T10:00:00Z","metadata":{"plan":"pro","amount":99.99}}),
            json!({"event_id":"d","event_type":"usage_tracked","user_id":"u2","timestamp":"2025-12-16T10:00:00Z","metadata":{"feature":"api_call","quantity":50}}),
            json!({"event_id":"e","event_type":"usage_tracked","user_id":"u3","timestamp":"2025-12-16T10:00:00Z","metadata":{"feature":"api_call"}}),
            json!({"event_id":"f","event_type":"page_view","timestamp":"2025-12-16T10:00:00Z"}),
        ];
        let mut stored = Maps::new();
        for e in events {
            add_to_maps(&mut stored, &effect_of(&event(e), now).increments);
        }
        let m = StoredMetrics::from_maps(&stored);

        let a = AnalyticsSnapshot::from_metrics(&m, now);
        assert_eq!(a.events_processed, 6);
        assert_eq!(a.unhandled, 1);
        assert_eq!(a.distinct_users, 3);
        assert_eq!(a.signups.total, 1);
        assert_eq!(a.signups.by_source["organic"], 1);
        assert_eq!(a.subscriptions.total, 2);
        assert_eq!(a.subscriptions.mrr, 109.99);
        assert_eq!(a.subscriptions.by_plan["pro"].count, 2);
        assert_eq!(a.usage.quantity, 51);
        assert_eq!(a.usage.by_feature["api_call"].events, 2);
        assert_eq!(a.usage.top_users[0].user_id, "u2");
        assert_eq!(a.events_per_minute.len(), 60);
        assert_eq!(a.events_per_minute[59].total, 6);
    }

    #[test]
    fn an_empty_pipeline_has_zero_mrr_not_negative_zero() {
        let a = AnalyticsSnapshot::from_metrics(&StoredMetrics::default(), Utc::now());
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.contains(r#""mrr":0.0"#), "{text}");
        assert!(!text.contains("-0.0") && !text.contains("null"), "{text}");
    }

    /// Figures written to a store before the values were bounded (or by a foreign writer)
    /// read back as plain numbers: saturated totals, no `null`, no wrap, no panic.
    #[test]
    fn a_poisoned_store_reads_back_as_plain_numbers() {
        let mut m = StoredMetrics::default();
        let fields = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let huge = 2f64.powi(63);
        m.maps.insert(
            maps::SUBSCRIPTIONS_BY_PLAN.into(),
            fields(&[("a", 1.0), ("b", 1.0), ("c", 1.0)]),
        );
        m.maps.insert(
            maps::MRR_BY_PLAN.into(),
            fields(&[("a", 1e307), ("b", f64::MAX), ("c", f64::NAN)]),
        );
        m.maps.insert(
            maps::USAGE_EVENTS_BY_FEATURE.into(),
            fields(&[("x", 1.0), ("y", 1.0)]),
        );
        m.maps.insert(
            maps::USAGE_QUANTITY_BY_FEATURE.into(),
            fields(&[("x", huge), ("y", huge)]),
        );
        let minute = maps::per_minute(Utc::now().timestamp() / 60);
        m.maps
            .insert(minute, fields(&[("t1", f64::INFINITY), ("t2", huge)]));
        let a = AnalyticsSnapshot::from_metrics(&m, Utc::now());
        assert_eq!(a.usage.quantity, u64::MAX);
        assert_eq!(a.events_per_minute[59].total, u64::MAX);
        assert!(a.subscriptions.mrr.is_finite());
        let text = serde_json::to_string(&a).unwrap();
        assert!(!text.contains("null") && !text.contains("-0.0"), "{text}");
    }

    #[test]
    fn totals_of_events_at_the_bounds_are_exact() {
        let now = Utc::now();
        let mut stored = Maps::new();
        let n = 10_000u64;
        for i in 0..n {
            let (t, metadata) = if i % 2 == 0 {
                // The largest annual amount whose twelfth is a whole number.
                let (cycle, amount) = if i % 4 == 0 {
                    ("monthly", MAX_AMOUNT)
                } else {
                    ("annual", 999_999_996.0)
                };
                (
                    SUBSCRIPTION_CREATED,
                    json!({"plan": "max", "amount": amount, "billing_cycle": cycle}),
                )
            } else {
                (
                    USAGE_TRACKED,
                    json!({"feature": "max", "quantity": MAX_COUNT}),
                )
            };
            let e = event(
                json!({"event_id": format!("e{i}"), "event_type": t, "user_id": "u",
                                 "timestamp": "2025-12-16T10:00:00Z", "metadata": metadata}),
            );
            add_to_maps(&mut stored, &effect_of(&e, now).increments);
        }
        let over = json!({"event_id": "o", "event_type": USAGE_TRACKED,
                          "timestamp": "2025-12-16T10:00:00Z",
                          "metadata": {"quantity": MAX_COUNT + 1}});
        assert!(Event::from_value(over).is_err());

        let a = AnalyticsSnapshot::from_metrics(&StoredMetrics::from_maps(&stored), now);
        let quarter = n / 4;
        // 2500 monthly at the bound, 2500 annual counting a twelfth of theirs.
        assert_eq!(quarter, 2500);
        assert_eq!(a.subscriptions.mrr, 2_708_333_332_500.0);
        assert!(a.subscriptions.mrr.is_finite());
        assert_eq!(a.usage.quantity, n / 2 * MAX_COUNT);
        assert_eq!(a.usage.by_feature["max"].quantity, n / 2 * MAX_COUNT);
        assert_eq!(a.usage.top_users[0].quantity, n / 2 * MAX_COUNT);
    }

    #[test]
    fn handler_log_lines_match_the_original() {
        let e = event(
            json!({"event_id":"a","event_type":"subscription_created","user_id":"user_def456","timestamp":"2025-12-16T10:00:00Z","metadata":{"plan":"premium","amount":99.99}}),
        );
        assert_eq!(
            describe(&e).unwrap(),
            "Subscription created: user_def456 - premium ($99.99)"
        );
        let e = event(
            json!({"event_id":"a","event_type":"usage_tracked","user_id":"user_ghi789","timestamp":"2025-12-16T10:00:00Z","metadata":{"feature":"api_call","quantity":50}}),
        );
        assert_eq!(
            describe(&e).unwrap(),
            "Usage tracked: user_ghi789 - api_call (50)"
        );
        let e = event(
            json!({"event_id":"a","event_type":"user_signup","user_id":"user_abc123","timestamp":"2025-12-16T10:00:00Z","metadata":{"source":"organic"}}),
        );
        assert_eq!(
            describe(&e).unwrap(),
            "User signup: user_abc123 from organic"
        );
    }
}
