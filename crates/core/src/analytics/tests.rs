//! Unit tests of the parent module, compiled only with `#[cfg(test)]`.

use chrono::Utc;
use serde_json::json;

use super::*;
use std::collections::BTreeMap;

use crate::event::{Event, MAX_AMOUNT, MAX_COUNT, SUBSCRIPTION_CREATED, USAGE_TRACKED};

fn event(v: serde_json::Value) -> Event {
    Event::from_value(v).unwrap()
}

#[test]
fn a_known_mix_gives_the_expected_aggregates() {
    let now = "2025-12-16T10:00:30Z".parse().unwrap();
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
        add_to_maps(&mut stored, &effect_of(&event(e), now).all_increments());
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
    let minute = rollup::map_name(
        maps::EVENTS_BY_TYPE,
        rollup::Granularity::Minute,
        Utc::now().timestamp() / 60 * 60,
    );
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
        add_to_maps(&mut stored, &effect_of(&e, now).all_increments());
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

#[test]
fn consumer_call_map_names_give_back_their_operation_and_consumer() {
    for operation in consumer_calls::OPERATIONS {
        let name = maps::consumer_call_duration(operation, "host:a-1");
        assert_eq!(
            maps::consumer_call_duration_of(&name),
            Some((operation, "host:a-1"))
        );
    }
    assert_eq!(
        maps::consumer_call_duration_of("consumer_call_duration_us:enqueue:c1"),
        None,
        "not an operation consumers time"
    );
    assert_eq!(
        maps::consumer_call_duration_of("consumer_batch_duration_us:c1"),
        None
    );
    assert_eq!(
        maps::consumer_call_duration_of("consumer_call_duration_us:claimed:c1"),
        None
    );
}
