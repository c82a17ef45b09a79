//! `GET /analytics/timeseries`: one metric over a range of event time, bucketed, from the
//! rollups ([`super::rollup`]). HTTP-free: the webhook parses the query string into
//! [`TimeseriesQuery::parse`] and serves [`Timeseries`] as JSON.
//!
//! Buckets are aligned in the query's time zone (`tz`, IANA name, default UTC): hours on the
//! local hour, days on local midnight, so a day across a daylight-saving change lasts 23 or
//! 25 hours. Each local bucket is summed from the coarsest stored granularity whose UTC buckets
//! tile every local bucket of the query (a UTC day from one day bucket, a Berlin day from its
//! hours, a Kolkata hour from its minutes); that granularity's retention must reach `from`.
//! Distinct active users of a local bucket are the union of its stored buckets' registers.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveTime, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::hll::Hll;
use super::maps;
use super::rollup::{self, Buckets, Granularity, Retention};
use crate::backend::{Backend, BackendResult};
use crate::stats::json_number;

/// Most buckets one query may return.
pub const MAX_BUCKETS: usize = 10_000;

/// What a timeseries counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Events,
    Signups,
    Subscriptions,
    MrrAdded,
    UsageEvents,
    UsageQuantity,
    ActiveUsers,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Events,
        Metric::Signups,
        Metric::Subscriptions,
        Metric::MrrAdded,
        Metric::UsageEvents,
        Metric::UsageQuantity,
        Metric::ActiveUsers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Events => "events",
            Metric::Signups => "signups",
            Metric::Subscriptions => "subscriptions",
            Metric::MrrAdded => "mrr_added",
            Metric::UsageEvents => "usage_events",
            Metric::UsageQuantity => "usage_quantity",
            Metric::ActiveUsers => "active_users",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The `group_by` dimensions this metric accepts, each with the rollup aggregate it reads.
    pub fn dimensions(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Metric::Events => &[("type", maps::EVENTS_BY_TYPE)],
            Metric::Signups => &[
                ("source", maps::SIGNUPS_BY_SOURCE),
                ("country", maps::SIGNUPS_BY_COUNTRY),
            ],
            Metric::Subscriptions => &[("plan", maps::SUBSCRIPTIONS_BY_PLAN)],
            Metric::MrrAdded => &[("plan", maps::MRR_BY_PLAN)],
            Metric::UsageEvents => &[("feature", maps::USAGE_EVENTS_BY_FEATURE)],
            Metric::UsageQuantity => &[("feature", maps::USAGE_QUANTITY_BY_FEATURE)],
            Metric::ActiveUsers => &[],
        }
    }

    /// The aggregate read without `group_by` (its fields summed).
    fn total_aggregate(self) -> &'static str {
        match self.dimensions().first() {
            Some((_, aggregate)) => aggregate,
            None => rollup::ACTIVE_USERS,
        }
    }

    /// Counts are whole numbers; MRR is money, to the cent.
    fn value(self, x: f64) -> serde_json::Value {
        match self {
            Metric::MrrAdded => json_number((x * 100.0).round() / 100.0).into(),
            _ => serde_json::Value::from(x.max(0.0).round() as u64),
        }
    }
}

/// A parameter the query refuses, and why (the 400's `details`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterProblem {
    pub parameter: &'static str,
    pub problem: String,
}

fn problem(parameter: &'static str, problem: impl Into<String>) -> ParameterProblem {
    ParameterProblem {
        parameter,
        problem: problem.into(),
    }
}

/// A checked query: the metric, its local buckets and where they are read from.
#[derive(Debug, Clone)]
pub struct TimeseriesQuery {
    pub metric: Metric,
    pub granularity: Granularity,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The dimension's name (`source`, …) and its aggregate.
    pub group_by: Option<(&'static str, &'static str)>,
    pub tz: Tz,
    /// `(start, end)` unix seconds of every local bucket, oldest first.
    buckets: Vec<(i64, i64)>,
    /// The stored granularity the local buckets are summed from.
    stored: Granularity,
}

/// The raw parameters, as the query string gives them.
#[derive(Debug, Clone, Default)]
pub struct RawParameters<'a> {
    pub metric: Option<&'a str>,
    pub granularity: Option<&'a str>,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub group_by: Option<&'a str>,
    pub tz: Option<&'a str>,
}

fn required<'a>(name: &'static str, value: Option<&'a str>) -> Result<&'a str, ParameterProblem> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(problem(name, "is required")),
    }
}

fn instant(name: &'static str, value: Option<&str>) -> Result<DateTime<Utc>, ParameterProblem> {
    let text = required(name, value)?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            problem(
                name,
                "must be an RFC 3339 date-time, e.g. 2026-10-25T00:00:00Z",
            )
        })
}

fn one_of(names: impl Iterator<Item = &'static str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

impl TimeseriesQuery {
    /// Checks every rule of docs/api.md (`GET /analytics/timeseries`) and plans the buckets;
    /// the first problem found is returned, naming its parameter.
    pub fn parse(
        raw: &RawParameters<'_>,
        retention: &Retention,
        now: DateTime<Utc>,
    ) -> Result<TimeseriesQuery, ParameterProblem> {
        let metric_name = required("metric", raw.metric)?;
        let metric = Metric::parse(metric_name).ok_or_else(|| {
            problem(
                "metric",
                format!(
                    "must be one of {}",
                    one_of(Metric::ALL.into_iter().map(Metric::name))
                ),
            )
        })?;
        let granularity = Granularity::parse(required("granularity", raw.granularity)?)
            .ok_or_else(|| problem("granularity", "must be one of minute, hour, day"))?;
        let from = instant("from", raw.from)?;
        let to = instant("to", raw.to)?;
        if from > to {
            return Err(problem("from", "must not be after to"));
        }
        let group_by = match raw.group_by.filter(|g| !g.is_empty()) {
            None => None,
            Some(name) => Some(
                metric
                    .dimensions()
                    .iter()
                    .find(|(dimension, _)| *dimension == name)
                    .copied()
                    .ok_or_else(|| {
                        let dimensions = metric.dimensions();
                        if dimensions.is_empty() {
                            problem(
                                "group_by",
                                format!("is not available for {}", metric.name()),
                            )
                        } else {
                            problem(
                                "group_by",
                                format!(
                                    "must be one of {} for {}",
                                    one_of(dimensions.iter().map(|d| d.0)),
                                    metric.name()
                                ),
                            )
                        }
                    })?,
            ),
        };
        let tz: Tz = match raw.tz.filter(|t| !t.is_empty()) {
            None => Tz::UTC,
            Some(name) => name
                .parse()
                .map_err(|_| problem("tz", "must be an IANA time zone name, e.g. Europe/Berlin"))?,
        };
        let buckets = local_buckets(granularity, from, to, tz)?;
        let stored = stored_granularity(granularity, &buckets);
        if let Some(&(first, _)) = buckets.first() {
            let oldest = retention.oldest_kept(stored, now.timestamp());
            if first < oldest {
                return Err(problem(
                    "from",
                    format!(
                        "is older than the {} rollup keeps ({} days): its oldest bucket starts \
                         at {}",
                        stored.name(),
                        retention.of(stored) / 86_400,
                        format_instant(oldest, Tz::UTC)
                    ),
                ));
            }
        }
        Ok(TimeseriesQuery {
            metric,
            granularity,
            from,
            to,
            group_by,
            tz,
            buckets,
            stored,
        })
    }

    /// The local buckets, `(start, end)` in unix seconds.
    pub fn buckets(&self) -> &[(i64, i64)] {
        &self.buckets
    }

    /// The stored granularity the buckets are summed from.
    pub fn stored_granularity(&self) -> Granularity {
        self.stored
    }

    fn aggregate(&self) -> &'static str {
        match self.group_by {
            Some((_, aggregate)) => aggregate,
            None => self.metric.total_aggregate(),
        }
    }

    /// Reads the stored buckets and shapes the answer.
    pub async fn run(&self, backend: &dyn Backend) -> BackendResult<Timeseries> {
        let (first, last) = match (self.buckets.first(), self.buckets.last()) {
            (Some(first), Some(last)) => (first.0, last.1),
            _ => (0, 0),
        };
        let stored = if first < last {
            backend
                .rollups(self.aggregate(), self.stored, first, last)
                .await?
        } else {
            Buckets::new()
        };
        Ok(self.shape(stored))
    }

    /// Folds stored buckets into the local ones (every one present, oldest first).
    pub fn shape(&self, stored: Buckets) -> Timeseries {
        let registers = self.metric == Metric::ActiveUsers;
        let mut folded: Vec<BTreeMap<String, f64>> = vec![BTreeMap::new(); self.buckets.len()];
        for (start, fields) in stored {
            // The local bucket holding this stored one: the last that starts at or before it.
            let i = self.buckets.partition_point(|(s, _)| *s <= start);
            let Some(local) = i.checked_sub(1).and_then(|i| folded.get_mut(i)) else {
                continue;
            };
            for (field, value) in fields {
                let v = local.entry(field).or_insert(0.0);
                if registers {
                    *v = v.max(value);
                } else {
                    *v += value;
                }
            }
        }
        let buckets = self
            .buckets
            .iter()
            .zip(folded)
            .map(|(&(start, _), fields)| {
                let start = format_instant(start, self.tz);
                if registers {
                    let mut hll = Hll::new();
                    for (register, rank) in &fields {
                        if let Ok(register) = register.parse::<usize>() {
                            hll.raise(register, rank.clamp(0.0, 255.0) as u8);
                        }
                    }
                    TimeseriesBucket {
                        start,
                        value: Some(serde_json::Value::from(hll.estimate())),
                        values: None,
                    }
                } else if self.group_by.is_some() {
                    TimeseriesBucket {
                        start,
                        value: None,
                        values: Some(
                            fields
                                .into_iter()
                                .map(|(k, v)| (k, self.metric.value(v)))
                                .collect(),
                        ),
                    }
                } else {
                    TimeseriesBucket {
                        start,
                        value: Some(self.metric.value(fields.values().sum())),
                        values: None,
                    }
                }
            })
            .collect();
        Timeseries {
            metric: self.metric.name(),
            granularity: self.granularity.name(),
            from: self.from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            to: self.to.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            group_by: self.group_by.map(|(name, _)| name),
            tz: self.tz.name(),
            buckets,
        }
    }
}

/// Unix seconds as RFC 3339 in `tz` (`Z` when the offset is zero).
fn format_instant(t: i64, tz: Tz) -> String {
    Utc.timestamp_opt(t, 0)
        .single()
        .map(|t| {
            t.with_timezone(&tz)
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        })
        .unwrap_or_default()
}

/// The offset of `tz` at unix second `t`, in seconds.
fn offset_at(tz: Tz, t: i64) -> i64 {
    Utc.timestamp_opt(t, 0)
        .single()
        .map(|u| {
            i64::from(
                tz.offset_from_utc_datetime(&u.naive_utc())
                    .fix()
                    .local_minus_utc(),
            )
        })
        .unwrap_or(0)
}

/// Start (unix seconds) of the local bucket of `g` holding `t`.
fn local_floor(g: Granularity, t: i64, tz: Tz) -> i64 {
    match g {
        // Floored on the local clock with the offset in force at `t`: a repeated hour at a
        // change back from summer time is two buckets, as it is two hours.
        Granularity::Minute | Granularity::Hour => {
            let offset = offset_at(tz, t);
            g.bucket_start(t + offset) - offset
        }
        Granularity::Day => {
            let local = Utc
                .timestamp_opt(t, 0)
                .single()
                .map(|u| u.with_timezone(&tz).date_naive());
            match local {
                Some(date) => local_midnight(date, tz),
                None => g.bucket_start(t),
            }
        }
    }
}

/// The first instant of a local date (midnight, or the end of a gap that swallowed it).
fn local_midnight(date: chrono::NaiveDate, tz: Tz) -> i64 {
    let mut at = date.and_time(NaiveTime::MIN);
    for _ in 0..4 {
        if let Some(t) = tz.from_local_datetime(&at).earliest() {
            return t.timestamp();
        }
        at += Duration::minutes(30);
    }
    date.and_time(NaiveTime::MIN).and_utc().timestamp()
}

/// The start of the local bucket after the one starting at `start`.
fn local_next(g: Granularity, start: i64, tz: Tz) -> i64 {
    match g {
        Granularity::Minute | Granularity::Hour => {
            let next = local_floor(g, start + g.seconds(), tz);
            // An offset change inside the bucket could floor back: never go backwards.
            if next > start {
                next
            } else {
                start + g.seconds()
            }
        }
        Granularity::Day => {
            let date = Utc
                .timestamp_opt(start, 0)
                .single()
                .map(|u| u.with_timezone(&tz).date_naive());
            match date.and_then(|d| d.succ_opt()) {
                Some(next) => local_midnight(next, tz).max(start + 3_600),
                None => start + g.seconds(),
            }
        }
    }
}

/// Every local bucket overlapping `from..to` (the one holding `from` first; `to` exclusive).
fn local_buckets(
    g: Granularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tz: Tz,
) -> Result<Vec<(i64, i64)>, ParameterProblem> {
    let (from, to) = (from.timestamp(), to.timestamp());
    let mut out = Vec::new();
    let mut start = local_floor(g, from, tz);
    while start < to {
        if out.len() == MAX_BUCKETS {
            return Err(problem(
                "to",
                format!(
                    "the range holds more than {MAX_BUCKETS} {} buckets: shorten it or use a \
                     coarser granularity",
                    g.name()
                ),
            ));
        }
        let end = local_next(g, start, tz);
        out.push((start, end));
        start = end;
    }
    Ok(out)
}

/// The coarsest stored granularity, at most `g`, whose UTC buckets tile every local bucket.
fn stored_granularity(g: Granularity, buckets: &[(i64, i64)]) -> Granularity {
    Granularity::ALL
        .into_iter()
        .rev()
        .filter(|s| *s <= g)
        .find(|s| {
            let w = s.seconds();
            buckets
                .iter()
                .all(|(a, b)| a.rem_euclid(w) == 0 && b.rem_euclid(w) == 0)
        })
        .unwrap_or(Granularity::Minute)
}

/// One bucket of the answer: `value` without `group_by`, `values` with it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimeseriesBucket {
    /// Start of the bucket, RFC 3339 in the query's time zone.
    pub start: String,
    /// The metric over the bucket (without `group_by`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<f64>))]
    pub value: Option<serde_json::Value>,
    /// The metric per value of the `group_by` dimension; a value absent from a bucket is 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<BTreeMap<String, f64>>))]
    pub values: Option<BTreeMap<String, serde_json::Value>>,
}

/// The `GET /analytics/timeseries` document.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timeseries {
    pub metric: &'static str,
    pub granularity: &'static str,
    /// The range asked for, RFC 3339 UTC.
    pub from: String,
    pub to: String,
    /// The `group_by` dimension, `null` without one.
    pub group_by: Option<&'static str>,
    /// The time zone buckets are aligned in (IANA name).
    pub tz: &'static str,
    /// Every bucket overlapping `from..to`, oldest first, empty ones included.
    pub buckets: Vec<TimeseriesBucket>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn query(g: &str, from: &str, to: &str, tz: Option<&str>) -> TimeseriesQuery {
        TimeseriesQuery::parse(
            &RawParameters {
                metric: Some("events"),
                granularity: Some(g),
                from: Some(from),
                to: Some(to),
                group_by: None,
                tz,
            },
            &Retention {
                hour_seconds: 10_000 * 86_400,
                ..Retention::default()
            },
            at("2026-12-01T00:00:00Z"),
        )
        .unwrap()
    }

    #[test]
    fn a_berlin_day_across_the_october_change_lasts_25_hours() {
        let q = query(
            "day",
            "2026-10-24T00:00:00+02:00",
            "2026-10-27T00:00:00+01:00",
            Some("Europe/Berlin"),
        );
        let lengths: Vec<i64> = q.buckets().iter().map(|(a, b)| (b - a) / 3_600).collect();
        assert_eq!(lengths, [24, 25, 24]);
        assert_eq!(q.stored_granularity(), Granularity::Hour);
        let shaped = q.shape(Buckets::new());
        assert_eq!(shaped.buckets[1].start, "2026-10-25T00:00:00+02:00");
        assert_eq!(shaped.buckets[2].start, "2026-10-26T00:00:00+01:00");
    }

    #[test]
    fn the_repeated_hour_is_two_buckets() {
        let q = query(
            "hour",
            "2026-10-25T01:00:00+02:00",
            "2026-10-25T04:00:00+01:00",
            Some("Europe/Berlin"),
        );
        let shaped = q.shape(Buckets::new());
        let starts: Vec<&str> = shaped.buckets.iter().map(|b| b.start.as_str()).collect();
        assert_eq!(
            starts,
            [
                "2026-10-25T01:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ]
        );
    }

    #[test]
    fn utc_days_read_day_buckets_and_half_hour_zones_read_minutes() {
        let q = query("day", "2026-11-01T00:00:00Z", "2026-11-03T00:00:00Z", None);
        assert_eq!(q.stored_granularity(), Granularity::Day);
        assert_eq!(q.buckets().len(), 2);
        let q = query(
            "hour",
            "2026-11-30T10:00:00Z",
            "2026-11-30T12:00:00Z",
            Some("Asia/Kolkata"),
        );
        assert_eq!(q.stored_granularity(), Granularity::Minute);
    }
}
