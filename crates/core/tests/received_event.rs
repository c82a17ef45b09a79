//! The webhook's tree-free validator (`ReceivedEvent::accept`) against the tree validator
//! (`Event::from_slice`), which is the contract: over generated event texts — escapes,
//! whitespace, numbers at and past every bound, duplicate fields, a sender's `received_at`,
//! values of every type in every field — whatever the fast path accepts the tree validator
//! accepts too, with the same id and type, and the stored forms hold the same JSON, from which
//! the consumer's fast read gives the same analytics effect as the tree. Whatever the
//! tree validator accepts, the fast path accepts too unless the text repeats a field or holds a
//! `received_at` that is not a string (those it leaves to the tree validator on purpose).

use pipeline_core::analytics::effect_of;
use pipeline_core::event::{format_received_at, Event, ReceivedEvent};
use proptest::prelude::*;
use serde_json::Value;

/// A JSON value's text, from a list that reaches every rule's edges.
fn value_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "null",
        "true",
        "false",
        "0",
        "-0",
        "1",
        "-1",
        "1.0",
        "1e3",
        "1E2",
        "0.5",
        "999999999.99",
        "1000000000",
        "1000000001",
        "1e9",
        "1e400",
        "-1e400",
        "18446744073709551615",
        "18446744073709551616",
        "123456789012345678901234567890",
        "\"\"",
        "\"x\"",
        "\"US\"",
        "\"google_ads\"",
        "\"Pro Annual\"",
        "\"reports/export\"",
        "\"monthly\"",
        "\"annual\"",
        "\"m\\u006fnthly\"",
        "\"\\u0055S\"",
        "\"bad\\tvalue\"",
        "\"\\ud800\"",
        "\"é\"",
        "\"a\\\"b\"",
        "[]",
        "[1,2]",
        "{}",
        "{\"a\":1}",
        "{\"a\":1e400}",
        "[[[[[[]]]]]]",
        "\"2025-12-16T10:00:00Z\"",
        "\"2025-12-16T10:00:00+02:00\"",
        "\"2025-13-16T10:00:00Z\"",
        "\"evt_1\"",
        "\"evt 1\"",
        "\"user_signup\"",
        "\"subscription_created\"",
        "\"usage_tracked\"",
        "\"9lives\"",
    ])
    .prop_map(str::to_owned)
}

const TOP: &[&str] = &[
    "event_id",
    "event_type",
    "timestamp",
    "user_id",
    "metadata",
    "received_at",
    "extra",
];
const META: &[&str] = &[
    "source",
    "country",
    "email",
    "company",
    "plan",
    "amount",
    "billing_cycle",
    "trial",
    "feature",
    "quantity",
    "duration_ms",
    "other",
];

/// A JSON string's text for `s`, some of its letters written as `\u00XX` escapes.
fn quoted(s: &str, escape: bool) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if escape && i % 2 == 0 && c.is_ascii_alphabetic() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// Joins `(key, value text)` pairs into an object's text with the given spacing.
fn object(fields: &[(String, String)], space: &str, escape: bool) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}{space}:{space}{v}", quoted(k, escape)))
        .collect();
    format!(
        "{{{space}{}{space}}}",
        body.join(&format!("{space},{space}"))
    )
}

/// An event's text and whether it is plain: no field given twice.
fn event_text() -> impl Strategy<Value = (String, bool)> {
    let types = prop::sample::select(vec![
        "user_signup",
        "subscription_created",
        "usage_tracked",
        "page_view",
    ]);
    let meta_field = (prop::sample::select(META.to_vec()), value_text());
    let top_field = (prop::sample::select(TOP.to_vec()), value_text());
    (
        "[a-z0-9_]{1,12}",
        types,
        prop::collection::vec(meta_field, 0..5),
        prop::collection::vec(top_field, 0..3),
        prop::sample::select(vec!["", " ", "\n\t"]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(id, event_type, meta, extra, space, escape, meta_is_object)| {
                let mut meta_fields: Vec<(String, String)> = Vec::new();
                let mut top: Vec<(String, String)> = vec![
                    ("event_id".into(), quoted(&format!("evt_{id}"), escape)),
                    ("event_type".into(), quoted(event_type, escape)),
                    ("timestamp".into(), "\"2025-12-16T10:00:00Z\"".into()),
                ];
                for (k, v) in meta {
                    meta_fields.push((k.to_string(), v));
                }
                let metadata = if meta_is_object {
                    object(&meta_fields, space, escape)
                } else {
                    "null".into()
                };
                top.push(("metadata".into(), metadata));
                for (k, v) in extra {
                    top.push((k.to_string(), v));
                }
                let repeats = |fields: &[(String, String)]| {
                    let mut names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
                    names.sort_unstable();
                    names.windows(2).any(|w| w[0] == w[1])
                };
                // A sender's `received_at` that is not a string is left to the tree validator too.
                let own_received_at_is_text = top
                    .iter()
                    .filter(|(k, _)| k == "received_at")
                    .all(|(_, v)| serde_json::from_str::<String>(v).is_ok());
                let repeated = repeats(&top) || (meta_is_object && repeats(&meta_fields));
                let plain = !repeated && own_received_at_is_text;
                (
                    format!("{space}{}{space}", object(&top, space, escape)),
                    plain,
                )
            },
        )
}

fn check(text: &str, plain: bool) -> Result<(), TestCaseError> {
    let tree = Event::from_slice(text.as_bytes());
    match (ReceivedEvent::accept(text), tree) {
        (Some(fast), Ok(mut tree)) => {
            prop_assert_eq!(&fast.id, &tree.id);
            prop_assert_eq!(&*fast.event_type, tree.event_type.as_str());
            prop_assert_eq!(Some(fast.timestamp()), tree.timestamp());
            let at = chrono::Utc::now();
            tree.stamp_received_at(at);
            let stored_text = fast.stored(&format_received_at(at));
            let stored: Value = serde_json::from_str(&stored_text)
                .map_err(|e| TestCaseError::fail(format!("stored form of {text}: {e}")))?;
            prop_assert_eq!(stored, Value::Object(tree.body), "{}", text);
            check_consumed(&stored_text)?;
        }
        (Some(_), Err(refused)) => {
            prop_assert!(
                false,
                "fast path accepted {text}, the validator said {refused}"
            )
        }
        (None, Ok(_)) => prop_assert!(!plain, "fast path left a plain valid event: {text}"),
        (None, Err(_)) => {}
    }
    Ok(())
}

/// The consumer's side: a stored event the fast path reads has the effect the tree gives.
fn check_consumed(stored: &str) -> Result<(), TestCaseError> {
    let tree = Event::from_slice(stored.as_bytes())
        .map_err(|e| TestCaseError::fail(format!("stored form {stored} refused: {e}")))?;
    let Some(fast) = ReceivedEvent::accept(stored) else {
        return Err(TestCaseError::fail(format!(
            "the fast path left the stored form of an event it accepted: {stored}"
        )));
    };
    prop_assert_eq!(fast.user_id(), tree.user_id.as_deref());
    prop_assert_eq!(fast.received_at_micros(), tree.received_at_micros());
    let applied = chrono::Utc::now();
    prop_assert_eq!(
        effect_of(&fast, applied),
        effect_of(&tree, applied),
        "{}",
        stored
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn the_fast_path_accepts_exactly_what_the_validator_accepts((text, plain) in event_text()) {
        check(&text, plain)?;
    }

    #[test]
    fn arbitrary_text_is_never_accepted_by_the_fast_path_alone(text in "\\PC{0,200}") {
        check(&text, false)?;
    }
}

/// The original's sample events (each with a `received_at` of its own, which is replaced).
#[test]
fn the_originals_sample_events_take_the_fast_path_and_store_the_same_json() {
    let samples: Vec<Value> =
        serde_json::from_str(include_str!("../../../data/sample_events.json")).unwrap();
    assert!(!samples.is_empty());
    for sample in samples {
        let text = serde_json::to_string_pretty(&sample).unwrap();
        assert!(ReceivedEvent::accept(&text).is_some(), "{text}");
        check(&text, true).unwrap();
    }
}

/// Nesting counts from the event's root, as in a tree parse: one level past its limit
/// anywhere, even in a field no rule reads, is refused by both.
#[test]
fn nesting_is_limited_as_in_a_tree_parse() {
    for depth in [120, 125, 126, 127, 128, 200] {
        for field in ["plan", "other", "email"] {
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let text = format!(
                r#"{{"event_id":"e","event_type":"user_signup","timestamp":"2025-12-16T10:00:00Z","metadata":{{"{field}":{nested}}}}}"#
            );
            check(&text, false).unwrap();
        }
    }
}
