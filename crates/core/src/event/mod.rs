//! The webhook event model and its validation (docs/api.md, "Events").
//!
//! Validation works on an already-parsed `serde_json::Value` and never panics, whatever the
//! input: every problem is reported per field so a sender can fix all of them at once. Unknown
//! top-level fields are kept as they were sent; the stored form is the sender's object plus
//! `received_at`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

mod fields;
mod received;

pub use fields::batch_elements;
pub use received::ReceivedEvent;

/// An event's idempotency key: 1–128 printable ASCII characters without whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub const MAX_LEN: usize = 128;

    /// Checks the id rules; the error says which one failed.
    pub fn parse(s: &str) -> Result<EventId, &'static str> {
        if s.is_empty() {
            return Err("must not be empty");
        }
        if s.len() > Self::MAX_LEN {
            return Err("must be at most 128 characters");
        }
        if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err("must be printable ASCII without whitespace");
        }
        Ok(EventId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One problem with one field, as returned in an error body's `details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldProblem {
    pub field: String,
    pub problem: String,
}

/// Why an event was refused: every field problem, and the required fields that were absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationError {
    pub details: Vec<FieldProblem>,
    pub missing: Vec<String>,
}

impl ValidationError {
    fn push(&mut self, field: &str, problem: impl Into<String>) {
        self.details.push(FieldProblem {
            field: field.to_string(),
            problem: problem.into(),
        });
    }

    /// A one-line summary for logs and batch `error_details`.
    pub fn summary(&self) -> String {
        self.details
            .iter()
            .map(|d| {
                if d.field.is_empty() {
                    d.problem.clone()
                } else {
                    format!("{}: {}", d.field, d.problem)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

impl std::error::Error for ValidationError {}

/// Longest accepted `event_type` and dimension value (`metadata.source`, `country`, `plan`,
/// `feature`), in characters. These values become metric keys that are kept and served at
/// `/analytics`, so their size is bounded where they enter.
pub const MAX_DIMENSION_LEN: usize = 64;
/// Largest accepted `metadata.amount`. No real plan costs more, and with it a sum of amounts
/// stays finite and, to the cent, exact far beyond any realistic number of subscriptions.
pub const MAX_AMOUNT: f64 = 1_000_000_000.0;
/// Largest accepted `metadata.quantity` and `metadata.duration_ms` of one event. With it a
/// total stays exact in the stores' `f64` sums up to millions of events at the bound.
pub const MAX_COUNT: u64 = 1_000_000_000;
/// Longest accepted `user_id`, in characters.
pub const MAX_USER_ID_LEN: usize = 128;

/// Whether `s` may be an `event_type`: an ASCII letter, then at most 63 ASCII letters, digits
/// or `_ . : -` (`user_signup`, `billing.invoice:paid`).
pub fn is_event_type(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && s.len() <= MAX_DIMENSION_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Whether `s` may be a dimension value (`metadata.source`, `country`, `plan`, `feature`):
/// 1 to 64 ASCII letters, digits, spaces or `_ - . : /` (`google_ads`, `US`, `Pro Annual`,
/// `reports/export`).
pub fn is_dimension_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DIMENSION_LEN
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b' ' | b'_' | b'-' | b'.' | b':' | b'/')
        })
}

/// The event types the consumers know how to apply.
pub const USER_SIGNUP: &str = "user_signup";
pub const SUBSCRIPTION_CREATED: &str = "subscription_created";
pub const USAGE_TRACKED: &str = "usage_tracked";

/// A validated event. `body` is the sender's object, unknown fields included.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub event_type: String,
    pub user_id: Option<String>,
    pub body: Map<String, Value>,
}

impl Event {
    /// Validates one JSON value against the event rules of docs/api.md.
    pub fn from_value(value: Value) -> Result<Event, ValidationError> {
        let mut err = ValidationError::default();
        let Value::Object(body) = value else {
            err.push("", "event must be a JSON object");
            return Err(err);
        };

        let id = match body.get("event_id") {
            None | Some(Value::Null) => {
                err.push("event_id", "is required");
                err.missing.push("event_id".into());
                None
            }
            Some(Value::String(s)) => match EventId::parse(s) {
                Ok(id) => Some(id),
                Err(problem) => {
                    err.push("event_id", problem);
                    None
                }
            },
            Some(_) => {
                err.push("event_id", "must be a string");
                None
            }
        };

        let event_type = match body.get("event_type") {
            None | Some(Value::Null) => {
                err.push("event_type", "is required");
                err.missing.push("event_type".into());
                None
            }
            Some(Value::String(s)) if s.is_empty() || s.chars().count() > MAX_DIMENSION_LEN => {
                err.push("event_type", "must be 1 to 64 characters");
                None
            }
            Some(Value::String(s)) if !is_event_type(s) => {
                err.push(
                    "event_type",
                    "must start with an ASCII letter followed by ASCII letters, digits or _ . : -",
                );
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                err.push("event_type", "must be a string");
                None
            }
        };

        match body.get("timestamp") {
            None | Some(Value::Null) => {
                err.push("timestamp", "is required");
                err.missing.push("timestamp".into());
            }
            Some(Value::String(s)) => {
                if chrono::DateTime::parse_from_rfc3339(s).is_err() {
                    err.push(
                        "timestamp",
                        "must be an RFC 3339 date-time, e.g. 2025-12-16T10:00:00Z",
                    );
                }
            }
            Some(_) => err.push("timestamp", "must be an RFC 3339 date-time string"),
        }

        let user_id = match body.get("user_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() > MAX_USER_ID_LEN => {
                err.push("user_id", "must be at most 128 characters");
                None
            }
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                err.push("user_id", "must not contain control characters");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                err.push("user_id", "must be a string");
                None
            }
        };

        match body.get("metadata") {
            None | Some(Value::Null) => {}
            Some(Value::Object(meta)) => {
                if let Some(t) = &event_type {
                    check_metadata(t, meta, &mut err);
                }
            }
            Some(_) => err.push("metadata", "must be a JSON object"),
        }

        match (id, event_type) {
            (Some(id), Some(event_type)) if err.details.is_empty() => Ok(Event {
                id,
                event_type,
                user_id,
                body,
            }),
            _ => Err(err),
        }
    }

    /// Parses and validates raw JSON bytes; a parse failure is a problem of the whole body.
    pub fn from_slice(bytes: &[u8]) -> Result<Event, ValidationError> {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => Event::from_value(v),
            Err(e) => {
                let mut err = ValidationError::default();
                err.push("", format!("body is not valid JSON: {e}"));
                Err(err)
            }
        }
    }

    /// The event's metadata object (empty when absent).
    pub fn metadata(&self) -> Option<&Map<String, Value>> {
        self.body.get("metadata").and_then(Value::as_object)
    }

    /// Sets `received_at` (RFC 3339 UTC, microseconds), replacing any value the sender gave.
    pub fn stamp_received_at(&mut self, at: chrono::DateTime<chrono::Utc>) {
        self.body
            .insert("received_at".into(), Value::String(format_received_at(at)));
    }

    /// The event's `timestamp` in UTC, when present and parseable (validation requires it): the
    /// event time the rollups bucket by.
    pub fn timestamp(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let s = self.body.get("timestamp")?.as_str()?;
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        Some(t.with_timezone(&chrono::Utc))
    }

    /// Refuses an event whose `timestamp` is more than `max_skew` after `now`
    /// (`DAY15_MAX_FUTURE_SKEW_SECONDS`): checked when the event is received, so a sender's
    /// clock running ahead cannot fill buckets of a future the rollups would keep.
    pub fn check_future_skew(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        max_skew: std::time::Duration,
    ) -> Result<(), ValidationError> {
        future_skew(self.timestamp(), now, max_skew)
    }

    /// `received_at` in microseconds since the epoch, when present and parseable.
    pub fn received_at_micros(&self) -> Option<i64> {
        let s = self.body.get("received_at")?.as_str()?;
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        Some(t.timestamp_micros())
    }

    /// The stored form: the sender's object with `received_at`, as compact JSON.
    pub fn to_json(&self) -> String {
        // Serialising a Map of Values cannot fail.
        serde_json::to_string(&self.body).unwrap_or_default()
    }
}

/// The refusal of an event whose `timestamp` is more than `max_skew` after `now`.
fn future_skew(
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    max_skew: std::time::Duration,
) -> Result<(), ValidationError> {
    let skew = chrono::Duration::from_std(max_skew).unwrap_or(chrono::Duration::MAX);
    match timestamp {
        Some(t) if t.signed_duration_since(now) > skew => {
            let mut err = ValidationError::default();
            err.push(
                "timestamp",
                format!("is more than {} seconds in the future", max_skew.as_secs()),
            );
            Err(err)
        }
        _ => Ok(()),
    }
}

/// `received_at` format: RFC 3339 UTC with microseconds.
pub fn format_received_at(at: chrono::DateTime<chrono::Utc>) -> String {
    // Once per event on the ingest path: chrono's RFC 3339 writer, not a strftime parse.
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn check_metadata(event_type: &str, meta: &Map<String, Value>, err: &mut ValidationError) {
    for (key, value) in meta {
        if value.is_null() {
            continue;
        }
        let problem = match (event_type, key.as_str()) {
            (USER_SIGNUP, "source" | "country")
            | (SUBSCRIPTION_CREATED, "plan")
            | (USAGE_TRACKED, "feature") => dimension_problem(value),
            (USER_SIGNUP, "email" | "company") if !value.is_string() => Some("must be a string"),
            (SUBSCRIPTION_CREATED, "amount")
                if !value
                    .as_f64()
                    .is_some_and(|a| a.is_finite() && (0.0..=MAX_AMOUNT).contains(&a)) =>
            {
                Some("must be a number from 0 to 1000000000")
            }
            (SUBSCRIPTION_CREATED, "billing_cycle")
                if !matches!(value.as_str(), Some("monthly" | "annual")) =>
            {
                Some("must be \"monthly\" or \"annual\"")
            }
            (SUBSCRIPTION_CREATED, "trial") if !value.is_boolean() => Some("must be a boolean"),
            (USAGE_TRACKED, "quantity" | "duration_ms")
                if value.as_u64().is_none_or(|n| n > MAX_COUNT) =>
            {
                Some("must be an integer from 0 to 1000000000")
            }
            _ => None,
        };
        if let Some(problem) = problem {
            err.push(&format!("metadata.{key}"), problem);
        }
    }
}

/// What is wrong with a dimension value, if anything.
fn dimension_problem(value: &Value) -> Option<&'static str> {
    match value.as_str() {
        None => Some("must be a string"),
        Some(s) if s.is_empty() || s.chars().count() > MAX_DIMENSION_LEN => {
            Some("must be 1 to 64 characters")
        }
        Some(s) if !is_dimension_value(s) => {
            Some("must contain only ASCII letters, digits, spaces and _ - . : /")
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests;
