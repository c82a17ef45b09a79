//! The webhook event model and its validation (docs/api.md, "Events").
//!
//! Validation works on an already-parsed `serde_json::Value` and never panics, whatever the
//! input: every problem is reported per field so a sender can fix all of them at once. Unknown
//! top-level fields are kept as they were sent; the stored form is the sender's object plus
//! `received_at`.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<String> {
        Event::from_value(v)
            .unwrap_err()
            .details
            .into_iter()
            .map(|d| d.field)
            .collect()
    }

    fn base() -> Value {
        json!({"event_id": "evt_1", "event_type": "user_signup", "timestamp": "2025-12-16T10:00:00Z"})
    }

    #[test]
    fn the_originals_sample_events_validate() {
        let text = include_str!("../../../data/sample_events.json");
        let events: Vec<Value> = serde_json::from_str(text).unwrap();
        assert!(events.len() >= 3);
        for e in events {
            Event::from_value(e.clone()).unwrap_or_else(|err| panic!("{e}: {err}"));
        }
    }

    #[test]
    fn minimal_event_without_user_or_metadata_is_accepted() {
        let e = Event::from_value(base()).unwrap();
        assert_eq!(e.id.as_str(), "evt_1");
        assert_eq!(e.user_id, None);
    }

    #[test]
    fn missing_required_fields_are_listed() {
        let err = Event::from_value(json!({"user_id": "u"})).unwrap_err();
        assert_eq!(err.missing, ["event_id", "event_type", "timestamp"]);
    }

    #[test]
    fn timestamps_with_fractions_and_offsets_are_accepted() {
        for ts in ["2025-12-16T10:00:00.123456Z", "2025-12-16T10:00:00+02:00"] {
            let mut v = base();
            v["timestamp"] = json!(ts);
            assert!(Event::from_value(v).is_ok(), "{ts}");
        }
        let mut v = base();
        v["timestamp"] = json!("yesterday");
        assert_eq!(problems(v), ["timestamp"]);
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in [
            json!(""),
            json!("has space"),
            json!("x".repeat(129)),
            json!(5),
            json!("é"),
        ] {
            let mut v = base();
            v["event_id"] = bad.clone();
            assert_eq!(problems(v), ["event_id"], "{bad}");
        }
    }

    #[test]
    fn metadata_types_are_checked_per_event_type() {
        let cases = [
            ("user_signup", json!({"source": 1}), "metadata.source"),
            (
                "subscription_created",
                json!({"amount": -1}),
                "metadata.amount",
            ),
            (
                "subscription_created",
                json!({"amount": "9"}),
                "metadata.amount",
            ),
            (
                "subscription_created",
                json!({"billing_cycle": "weekly"}),
                "metadata.billing_cycle",
            ),
            (
                "subscription_created",
                json!({"trial": "no"}),
                "metadata.trial",
            ),
            (
                "usage_tracked",
                json!({"quantity": 1.5}),
                "metadata.quantity",
            ),
            (
                "usage_tracked",
                json!({"quantity": -3}),
                "metadata.quantity",
            ),
            (
                "usage_tracked",
                json!({"duration_ms": "1"}),
                "metadata.duration_ms",
            ),
        ];
        for (t, meta, field) in cases {
            let mut v = base();
            v["event_type"] = json!(t);
            v["metadata"] = meta;
            assert_eq!(problems(v), [field], "{t}");
        }
    }

    /// An event of `event_type` with one metadata key set.
    fn with_meta(event_type: &str, key: &str, value: Value) -> Value {
        let mut v = base();
        v["event_type"] = json!(event_type);
        v["metadata"] = json!({ key: value });
        v
    }

    const DIMENSIONS: [(&str, &str); 4] = [
        (USER_SIGNUP, "source"),
        (USER_SIGNUP, "country"),
        (SUBSCRIPTION_CREATED, "plan"),
        (USAGE_TRACKED, "feature"),
    ];

    #[test]
    fn dimension_values_are_short_and_plain() {
        let good = [
            "organic".to_string(),
            "google_ads".into(),
            "US".into(),
            "Pro Annual".into(),
            "reports/export".into(),
            "v1.2:beta-3".into(),
            "d".repeat(64),
        ];
        let bad = [
            String::new(),
            "d".repeat(65),
            "s".repeat(900 * 1024),
            "a\nb".into(),
            "tab\there".into(),
            "nul\0".into(),
            "<script>".into(),
            "café".into(),
            "a,b".into(),
            "\u{202e}evil".into(),
        ];
        for (t, key) in DIMENSIONS {
            for value in &good {
                Event::from_value(with_meta(t, key, json!(value)))
                    .unwrap_or_else(|e| panic!("{key}={value:?}: {e}"));
            }
            for value in &bad {
                let field = format!("metadata.{key}");
                assert_eq!(
                    problems(with_meta(t, key, json!(value))),
                    [field.as_str()],
                    "{value:?}"
                );
            }
        }
    }

    #[test]
    fn event_types_are_identifiers() {
        for good in [
            "user_signup",
            "x",
            "page_view",
            "billing.invoice:paid",
            "A-1",
            &"t".repeat(64),
        ] {
            let mut v = base();
            v["event_type"] = json!(good);
            Event::from_value(v).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in [
            "1st",
            "_x",
            "has space",
            "a/b",
            "évent",
            "user_signup\n",
            "<img src=x>",
            &"t".repeat(65),
        ] {
            let mut v = base();
            v["event_type"] = json!(bad);
            assert_eq!(problems(v), ["event_type"], "{bad:?}");
        }
    }

    #[test]
    fn amounts_and_counts_are_bounded() {
        let accepted = [
            (SUBSCRIPTION_CREATED, "amount", json!(1_000_000_000.0)),
            (SUBSCRIPTION_CREATED, "amount", json!(0)),
            (USAGE_TRACKED, "quantity", json!(1_000_000_000u64)),
            (USAGE_TRACKED, "duration_ms", json!(1_000_000_000u64)),
        ];
        for (t, key, value) in accepted {
            Event::from_value(with_meta(t, key, value.clone()))
                .unwrap_or_else(|e| panic!("{key}={value}: {e}"));
        }
        let refused = [
            (SUBSCRIPTION_CREATED, "amount", json!(1_000_000_000.01)),
            (SUBSCRIPTION_CREATED, "amount", json!(1e307)),
            (SUBSCRIPTION_CREATED, "amount", json!(f64::MAX)),
            (USAGE_TRACKED, "quantity", json!(1_000_000_001u64)),
            (USAGE_TRACKED, "quantity", json!(1u64 << 63)),
            (USAGE_TRACKED, "quantity", json!(u64::MAX)),
            (USAGE_TRACKED, "duration_ms", json!(1u64 << 63)),
        ];
        for (t, key, value) in refused {
            let field = format!("metadata.{key}");
            assert_eq!(
                problems(with_meta(t, key, value.clone())),
                [field.as_str()],
                "{value}"
            );
        }
    }

    #[test]
    fn user_ids_without_control_characters_are_accepted() {
        for good in ["user_abc123", "Jürgen Müller", "a@b.c", &"u".repeat(128)] {
            let mut v = base();
            v["user_id"] = json!(good);
            assert_eq!(Event::from_value(v).unwrap().user_id.as_deref(), Some(good));
        }
        for bad in ["u\0", "line\nbreak", "u\u{7f}", "u\u{85}", "\u{1b}[31mred"] {
            let mut v = base();
            v["user_id"] = json!(bad);
            assert_eq!(problems(v), ["user_id"], "{bad:?}");
        }
    }

    #[test]
    fn unknown_fields_and_types_are_kept() {
        let mut v = base();
        v["event_type"] = json!("page_view");
        v["extra"] = json!({"a": 1});
        let mut e = Event::from_value(v).unwrap();
        e.stamp_received_at(chrono::Utc::now());
        let stored: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(stored["extra"], json!({"a": 1}));
        assert!(stored["received_at"].as_str().unwrap().ends_with('Z'));
        assert!(e.received_at_micros().is_some());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_validator(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Event::from_slice(&bytes);
        }

        #[test]
        fn arbitrary_json_objects_never_panic(
            id in proptest::option::of(".{0,140}"),
            t in proptest::option::of(".{0,70}"),
            ts in proptest::option::of(".{0,40}"),
            q in proptest::num::f64::ANY,
        ) {
            let v = json!({"event_id": id, "event_type": t, "timestamp": ts,
                           "metadata": {"quantity": q, "amount": q}});
            let _ = Event::from_value(v);
        }

        #[test]
        fn a_dimension_value_is_accepted_exactly_when_short_and_plain(
            value in "[ -~]{0,70}|.{0,70}",
            which in 0..DIMENSIONS.len(),
        ) {
            let (t, key) = DIMENSIONS[which];
            let plain = (1..=64).contains(&value.chars().count())
                && value.chars().all(|c| c.is_ascii_alphanumeric() || " _-.:/".contains(c));
            let result = Event::from_value(with_meta(t, key, json!(value)));
            proptest::prop_assert_eq!(result.is_ok(), plain, "{:?}", value);
        }

        #[test]
        fn an_event_type_is_accepted_exactly_when_an_identifier(t in "[ -~]{0,70}|.{0,70}") {
            let identifier = t.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && t.chars().count() <= 64
                && t.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
            let mut v = base();
            v["event_type"] = json!(t);
            proptest::prop_assert_eq!(Event::from_value(v).is_ok(), identifier, "{:?}", t);
        }

        #[test]
        fn numbers_are_accepted_exactly_within_their_bounds(n in proptest::num::u64::ANY, shift in 0u32..64) {
            let n = n >> shift;
            let within = n <= MAX_COUNT;
            for key in ["quantity", "duration_ms"] {
                let ok = Event::from_value(with_meta(USAGE_TRACKED, key, json!(n))).is_ok();
                proptest::prop_assert_eq!(ok, within, "{}={}", key, n);
            }
            let amount = n as f64 / 100.0;
            let ok = Event::from_value(with_meta(SUBSCRIPTION_CREATED, "amount", json!(amount))).is_ok();
            proptest::prop_assert_eq!(ok, amount <= MAX_AMOUNT, "amount={}", amount);
        }
    }
}
