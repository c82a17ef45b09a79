//! The `/analytics` document, shaped from the stored maps.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use super::rollup::{self, Granularity};
use super::{counters, maps, StoredMetrics, MINUTE_WINDOW};
use crate::event::{SUBSCRIPTION_CREATED, USAGE_TRACKED, USER_SIGNUP};
use crate::latency::{self, Percentiles};
use crate::stats::{json_number, json_percentiles};

#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanFigures {
    pub count: u64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FeatureFigures {
    pub events: u64,
    pub quantity: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserUsage {
    pub user_id: String,
    pub quantity: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Signups {
    pub total: u64,
    pub by_source: BTreeMap<String, u64>,
    pub by_country: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Subscriptions {
    pub total: u64,
    /// Monthly recurring revenue in the amounts' currency; annual plans count a twelfth.
    pub mrr: f64,
    pub by_plan: BTreeMap<String, PlanFigures>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub events: u64,
    pub quantity: u64,
    pub by_feature: BTreeMap<String, FeatureFigures>,
    pub top_users: Vec<UserUsage>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MinuteCounts {
    /// Start of the minute, RFC 3339 UTC.
    pub minute: String,
    pub total: u64,
    pub by_type: BTreeMap<String, u64>,
}

/// The `/analytics` document.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The last [`MINUTE_WINDOW`] minutes of event time, oldest first, including empty minutes:
    /// the minute rollup of events by type.
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
                let by_type = counts(m.map(&rollup::map_name(
                    maps::EVENTS_BY_TYPE,
                    Granularity::Minute,
                    minute * 60,
                )));
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
