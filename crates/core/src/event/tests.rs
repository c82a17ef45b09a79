//! Unit tests of the parent module, compiled only with `#[cfg(test)]`.

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
    let text = include_str!("../../../../data/sample_events.json");
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
