//! Properties of the `POST /webhook/batch` body parser (`webhook::parse_batch`), over generated
//! batches mixing valid events, damaged events and arbitrary JSON: each element is judged on
//! its own exactly as the single-event validator judges it, in order, and every refusal of the
//! whole body is a 400 or 413.

use pipeline_core::event::Event;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const MAX_EVENTS: usize = 16;

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid event, possibly with one field replaced by any JSON value.
fn maybe_valid_event() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec![
        "event_id",
        "event_type",
        "user_id",
        "timestamp",
        "metadata",
        "extra",
    ]);
    (
        "[a-z0-9_]{1,20}",
        prop::sample::select(vec![
            "user_signup",
            "subscription_created",
            "usage_tracked",
            "x",
            "billing.invoice:paid",
            "not an identifier",
        ]),
        prop::option::of((field, any_json())),
    )
        .prop_map(|(id, event_type, replaced)| {
            let mut e = json!({"event_id": format!("evt_{id}"), "event_type": event_type,
                               "timestamp": "2025-12-16T10:00:00Z"});
            if let Some((field, value)) = replaced {
                e[field] = value;
            }
            e
        })
}

fn element() -> impl Strategy<Value = Value> {
    prop_oneof![3 => maybe_valid_event(), 1 => any_json()]
}

proptest! {
    #[test]
    fn each_element_is_judged_alone_in_order_like_a_single_event(
        elements in prop::collection::vec(element(), 1..=MAX_EVENTS)
    ) {
        let body = json!({"events": elements}).to_string();
        let items = webhook::parse_batch(body.as_bytes(), MAX_EVENTS).unwrap();
        prop_assert_eq!(items.len(), elements.len());
        for (index, (item, element)) in items.iter().zip(&elements).enumerate() {
            // The element's own text, as POST /webhook/events would receive it.
            let alone = Event::from_slice(element.to_string().as_bytes());
            match (item, alone) {
                (Ok(event), Ok(mut expected)) => {
                    prop_assert_eq!(&event.id, &expected.id);
                    prop_assert_eq!(&*event.event_type, expected.event_type.as_str());
                    // The stored form holds what the tree validator's would.
                    let at = chrono::Utc::now();
                    expected.stamp_received_at(at);
                    let stored: Value = serde_json::from_str(
                        &event.stored(&pipeline_core::event::format_received_at(at)),
                    )
                    .unwrap();
                    prop_assert_eq!(stored, Value::Object(expected.body));
                }
                (Err(refused), Err(expected)) => {
                    prop_assert_eq!(refused.index, index);
                    prop_assert_eq!(&refused.error, &expected);
                    prop_assert_eq!(
                        refused.event_id.as_deref(),
                        element.get("event_id").and_then(Value::as_str)
                    );
                }
                (item, alone) => prop_assert!(false, "batch says {:?}, alone {:?}", item.is_ok(), alone.is_ok()),
            }
        }
    }

    #[test]
    fn a_batch_over_the_limit_is_413_and_an_empty_one_400(extra in 1usize..8) {
        let too_many = json!({"events": vec![json!({}); MAX_EVENTS + extra]}).to_string();
        let error = webhook::parse_batch(too_many.as_bytes(), MAX_EVENTS).unwrap_err();
        prop_assert_eq!(error.status().as_u16(), 413);
        let empty = json!({"events": []}).to_string();
        let error = webhook::parse_batch(empty.as_bytes(), MAX_EVENTS).unwrap_err();
        prop_assert_eq!(error.status().as_u16(), 400);
    }

    #[test]
    fn a_body_that_is_not_an_object_with_an_events_array_is_400(body in any_json()) {
        let is_batch = body
            .get("events")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty() && a.len() <= MAX_EVENTS);
        let text = body.to_string();
        let result = webhook::parse_batch(text.as_bytes(), MAX_EVENTS);
        match result {
            Ok(_) => prop_assert!(is_batch, "{body} accepted as a batch"),
            Err(e) => {
                prop_assert!(!is_batch, "{body} refused: {e}");
                prop_assert!(matches!(e.status().as_u16(), 400 | 413), "{}", e.status());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_are_refused_with_a_4xx_or_parsed_never_a_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..1024)
    ) {
        if let Err(e) = webhook::parse_batch(&bytes, MAX_EVENTS) {
            prop_assert!(matches!(e.status().as_u16(), 400 | 413), "{}", e.status());
        }
    }
}
