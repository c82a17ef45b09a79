//! The consumer loop in-process on the memory backend: analytics, failures, DLQ, dry run and
//! shutdown, as a user of `/analytics`, `/stats` and `/dlq` would observe them.
mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use common::*;
use pipeline_core::analytics::rollup::Granularity;
use pipeline_core::analytics::{counters, maps, AnalyticsSnapshot};
use pipeline_core::backend::{Backend, DlqSelection};
use pipeline_core::testkit::wait::eventually;
use serde_json::json;

/// One signup: id, user, source, country.
type SignupRow = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);
/// One subscription: id, user, plan, amount, billing cycle.
type SubscriptionRow = (
    &'static str,
    &'static str,
    &'static str,
    f64,
    Option<&'static str>,
);
/// One usage event: id, user, feature, quantity.
type UsageRow = (&'static str, &'static str, &'static str, Option<u64>);

#[tokio::test]
async fn a_known_mix_of_events_gives_exact_analytics() {
    let signups: [SignupRow; 4] = [
        ("s1", "u1", Some("organic"), Some("US")),
        ("s2", "u2", Some("ads"), Some("US")),
        ("s3", "u3", Some("organic"), Some("DE")),
        ("s4", "u4", None, None),
    ];
    let subscriptions: [SubscriptionRow; 4] = [
        ("p1", "u1", "pro", 99.99, Some("monthly")),
        ("p2", "u2", "pro", 1200.0, Some("annual")),
        ("p3", "u3", "basic", 9.5, None),
        ("p4", "u7", "enterprise", 4999.0, Some("annual")),
    ];
    let usage: [UsageRow; 4] = [
        ("g1", "u1", "api_call", Some(50)),
        ("g2", "u2", "api_call", None),
        ("g3", "u1", "export", Some(5)),
        ("g4", "u5", "api_call", Some(10)),
    ];
    let unknown = [("x1", Some("u6")), ("x2", None)];

    let mut events = Vec::new();
    for (id, user, source, country) in signups {
        let mut meta = serde_json::Map::new();
        if let Some(s) = source {
            meta.insert("source".into(), json!(s));
        }
        if let Some(c) = country {
            meta.insert("country".into(), json!(c));
        }
        events.push(signup(id, user, meta.into()));
    }
    for (id, user, plan, amount, cycle) in subscriptions {
        let mut meta = json!({"plan": plan, "amount": amount});
        if let Some(c) = cycle {
            meta["billing_cycle"] = json!(c);
        }
        events.push(event(
            json!({"event_id": id, "event_type": "subscription_created",
            "user_id": user, "timestamp": "2025-12-16T10:00:00Z", "metadata": meta}),
        ));
    }
    for (id, user, feature, quantity) in usage {
        let mut meta = json!({"feature": feature});
        if let Some(q) = quantity {
            meta["quantity"] = json!(q);
        }
        events.push(event(json!({"event_id": id, "event_type": "usage_tracked",
            "user_id": user, "timestamp": "2025-12-16T10:00:00Z", "metadata": meta})));
    }
    for (id, user) in unknown {
        let mut v = json!({"event_id": id, "event_type": "page_view",
                           "timestamp": "2025-12-16T10:00:00Z"});
        if let Some(u) = user {
            v["user_id"] = json!(u);
        }
        events.push(event(v));
    }
    let total = events.len() as u64;

    // The expected figures, computed from the rows alone.
    let mut by_source = BTreeMap::new();
    let mut by_country = BTreeMap::new();
    for (_, _, source, country) in signups {
        *by_source
            .entry(source.unwrap_or("unknown").to_string())
            .or_insert(0u64) += 1;
        *by_country
            .entry(country.unwrap_or("unknown").to_string())
            .or_insert(0u64) += 1;
    }
    let monthly = |amount: f64, cycle: Option<&str>| {
        if cycle == Some("annual") {
            amount / 12.0
        } else {
            amount
        }
    };
    let mut plans: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for (_, _, plan, amount, cycle) in subscriptions {
        let p = plans.entry(plan.to_string()).or_default();
        p.0 += 1;
        p.1 += monthly(amount, cycle);
    }
    let mrr: f64 = plans.values().map(|p| p.1).sum();
    let mut features: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut per_user: BTreeMap<String, u64> = BTreeMap::new();
    for (_, user, feature, quantity) in usage {
        let f = features.entry(feature.to_string()).or_default();
        f.0 += 1;
        f.1 += quantity.unwrap_or(1);
        *per_user.entry(user.to_string()).or_default() += quantity.unwrap_or(1);
    }
    let users: BTreeSet<&str> = signups
        .iter()
        .map(|r| r.1)
        .chain(subscriptions.iter().map(|r| r.1))
        .chain(usage.iter().map(|r| r.1))
        .chain(unknown.iter().filter_map(|r| r.1))
        .collect();

    let config = config(&[("DAY15_BATCH_SIZE", "4")]);
    let backend = memory_backend(&config);
    enqueue(&backend, events).await;
    let consumer = start(config, &backend);
    counter_reaches(&backend, counters::PROCESSED, total).await;
    let stats = consumer.stop().await.unwrap();

    let a = AnalyticsSnapshot::from_metrics(&metrics(&backend).await, Utc::now());
    assert_eq!(a.events_processed, total);
    assert_eq!(a.unhandled, unknown.len() as u64);
    assert_eq!(a.events_by_type["page_view"], unknown.len() as u64);
    assert_eq!(a.distinct_users, users.len() as u64);
    assert_eq!(a.signups.total, signups.len() as u64);
    assert_eq!(a.signups.by_source, by_source);
    assert_eq!(a.signups.by_country, by_country);
    assert_eq!(a.subscriptions.total, subscriptions.len() as u64);
    assert_eq!(a.subscriptions.mrr, (mrr * 100.0).round() / 100.0);
    for (plan, (count, plan_mrr)) in &plans {
        assert_eq!(a.subscriptions.by_plan[plan].count, *count, "{plan}");
        assert_eq!(
            a.subscriptions.by_plan[plan].mrr,
            (plan_mrr * 100.0).round() / 100.0,
            "{plan}"
        );
    }
    assert_eq!(a.usage.events, usage.len() as u64);
    assert_eq!(
        a.usage.quantity,
        features.values().map(|f| f.1).sum::<u64>()
    );
    for (feature, (events, quantity)) in &features {
        assert_eq!(a.usage.by_feature[feature].events, *events, "{feature}");
        assert_eq!(a.usage.by_feature[feature].quantity, *quantity, "{feature}");
    }
    let top = &a.usage.top_users[0];
    let (top_user, top_quantity) = per_user.iter().max_by_key(|(_, q)| **q).unwrap();
    assert_eq!((&top.user_id, top.quantity), (top_user, *top_quantity));
    assert_eq!(a.end_to_end_latency.count, total);
    // The per-minute section follows event time: every event is stamped 2025-12-16T10:00Z, so
    // none falls in the last hour, and that day's bucket holds them all.
    assert_eq!(a.events_per_minute.iter().map(|m| m.total).sum::<u64>(), 0);
    let day = chrono::DateTime::parse_from_rfc3339("2025-12-16T00:00:00Z")
        .unwrap()
        .timestamp();
    let buckets = backend
        .rollups(maps::EVENTS_BY_TYPE, Granularity::Day, day, day + 86_400)
        .await
        .unwrap();
    assert_eq!(buckets[&day].values().sum::<f64>(), total as f64);

    assert_eq!(stats.processed, total);
    assert_eq!(stats.failures.failed, 0);
    assert!(stats.batches >= total.div_ceil(4), "{stats:?}");
    assert_eq!(backend.depths().await.unwrap().queue, 0);
}

#[tokio::test]
async fn transient_failure_is_processed_on_the_third_attempt() {
    let config = config(&[("DAY15_FAULT_INJECTION", "true")]);
    let backend = memory_backend(&config);
    enqueue(&backend, vec![failing("evt_t2", "transient:2")]).await;
    let consumer = start(config, &backend);
    counter_reaches(&backend, counters::PROCESSED, 1).await;
    let stats = consumer.stop().await.unwrap();

    let m = metrics(&backend).await;
    assert_eq!(m.counter(counters::RETRIED), 2);
    assert_eq!(m.counter(counters::DEAD_LETTERED), 0);
    assert_eq!((stats.processed, stats.failures.retried), (1, 2));
    assert!(backend.dlq_list(10, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn permanent_failure_is_dead_lettered_after_all_retries_and_replay_processes_it() {
    let config_on = config(&[
        ("DAY15_FAULT_INJECTION", "true"),
        ("DAY15_MAX_RETRIES", "2"),
    ]);
    let backend = memory_backend(&config_on);
    enqueue(&backend, vec![failing("evt_perm", "permanent")]).await;
    let consumer = start(config_on, &backend);
    eventually("the event in the DLQ", DEADLINE, || async {
        (backend.depths().await.unwrap().dlq == 1).then_some(())
    })
    .await;
    let stats = consumer.stop().await.unwrap();
    assert_eq!(
        (stats.failures.retried, stats.failures.dead_lettered),
        (2, 1)
    );

    let dlq = backend.dlq_list(10, 0).await.unwrap();
    assert_eq!(dlq.len(), 1);
    let letter = &dlq[0];
    assert_eq!(letter.event_id.as_str(), "evt_perm");
    assert_eq!(letter.attempts, 3, "1 + DAY15_MAX_RETRIES attempts");
    assert_eq!(letter.failure_reason, "max_retries_exceeded");
    assert_eq!(letter.error, "simulated permanent failure");
    assert!(!letter.failed_at.is_empty());
    assert_eq!(letter.event["event_type"], "user_signup");
    assert_eq!(metrics(&backend).await.counter(counters::PROCESSED), 0);

    let said = consumer::dlq::replay(backend.as_ref(), DlqSelection::All)
        .await
        .unwrap();
    assert_eq!(said, "Replayed 1 dead letter");
    let consumer = start(config(&[]), &backend);
    counter_reaches(&backend, counters::PROCESSED, 1).await;
    consumer.stop().await.unwrap();
    assert_eq!(backend.depths().await.unwrap(), Default::default());
}

#[tokio::test]
async fn a_retry_waiting_a_long_backoff_does_not_delay_the_rest_of_its_batch() {
    let config = config(&[
        ("DAY15_FAULT_INJECTION", "true"),
        ("DAY15_RETRY_DELAY_SECONDS", "600"),
        ("DAY15_RETRY_MAX_DELAY_SECONDS", "600"),
    ]);
    let backend = memory_backend(&config);
    let mut events = vec![failing("evt_slow", "transient:1")];
    for i in 0..5 {
        events.push(signup(&format!("evt_{i}"), "u1", json!({"source": "ads"})));
    }
    enqueue(&backend, events).await;
    let consumer = start(config, &backend);

    counter_reaches(&backend, counters::PROCESSED, 5).await;
    let m = metrics(&backend).await;
    assert_eq!(m.counter(counters::RETRIED), 1);
    assert_eq!(
        backend.depths().await.unwrap().queue,
        1,
        "only the retry is still waiting"
    );
    let stats = consumer.stop().await.unwrap();
    assert_eq!(stats.batches, 1, "all six were one batch");
}

#[tokio::test]
async fn simulate_failure_is_ignored_without_fault_injection() {
    let config = config(&[]);
    let backend = memory_backend(&config);
    enqueue(
        &backend,
        vec![
            failing("evt_a", "permanent"),
            failing("evt_b", "transient:3"),
        ],
    )
    .await;
    let consumer = start(config, &backend);
    counter_reaches(&backend, counters::PROCESSED, 2).await;
    let stats = consumer.stop().await.unwrap();
    assert_eq!((stats.failures.failed, stats.failures.retried), (0, 0));
    assert_eq!(metrics(&backend).await.counter(counters::FAILED), 0);
}

#[tokio::test]
async fn an_invalid_payload_goes_to_the_dlq_at_once_as_a_permanent_failure() {
    let config = config(&[]);
    let backend = memory_backend(&config);
    enqueue(
        &backend,
        vec![
            raw("evt_garbage", "{not json"),
            raw(
                "evt_invalid",
                r#"{"event_id":"evt_invalid","event_type":"user_signup"}"#,
            ),
        ],
    )
    .await;
    let consumer = start(config, &backend);
    eventually("both in the DLQ", DEADLINE, || async {
        (backend.depths().await.unwrap().dlq == 2).then_some(())
    })
    .await;
    consumer.stop().await.unwrap();

    for letter in backend.dlq_list(10, 0).await.unwrap() {
        assert_eq!(letter.failure_reason, "permanent_failure", "{letter:?}");
        assert_eq!(letter.attempts, 1, "no retries: {letter:?}");
        assert!(letter.error.starts_with("invalid event"), "{letter:?}");
    }
    assert_eq!(metrics(&backend).await.counter(counters::RETRIED), 0);
}

#[tokio::test]
async fn dry_run_acks_events_without_touching_analytics() {
    let config = config(&[("DAY15_DRY_RUN", "true")]);
    let backend = memory_backend(&config);
    enqueue(
        &backend,
        vec![
            signup("evt_1", "u1", json!({"source": "ads"})),
            signup("evt_2", "u2", json!({"source": "ads"})),
        ],
    )
    .await;
    let consumer = start(config, &backend);
    eventually("the queue drained", DEADLINE, || async {
        (backend.depths().await.unwrap().queue == 0).then_some(())
    })
    .await;
    let stats = consumer.stop().await.unwrap();
    assert_eq!((stats.processed, stats.dry_run), (2, 2));

    let a = AnalyticsSnapshot::from_metrics(&metrics(&backend).await, Utc::now());
    assert_eq!(a.events_processed, 0);
    assert!(a.events_by_type.is_empty());
    assert_eq!(a.signups.total, 0);
    assert_eq!(a.distinct_users, 0);
}

#[tokio::test]
async fn cancelling_an_idle_consumer_returns_its_statistics() {
    let config = config(&[("DAY15_BATCH_TIMEOUT_SECONDS", "30")]);
    let backend = memory_backend(&config);
    let consumer = start(config, &backend);
    enqueue(
        &backend,
        vec![
            signup("evt_1", "u1", json!({})),
            signup("evt_2", "u2", json!({})),
        ],
    )
    .await;
    counter_reaches(&backend, counters::PROCESSED, 2).await;

    // The consumer now blocks on an empty queue for up to 30 s; shutdown must cut that short.
    let stats = consumer.stop().await.expect("a clean shutdown is Ok");
    assert_eq!(stats.processed, 2);
    assert!(stats.batches >= 1);
    let report = stats.report_lines().join("\n");
    assert!(report.contains("PROCESSING STATISTICS"), "{report}");
    assert!(report.contains("Events processed: 2"), "{report}");
}

#[tokio::test]
async fn linger_fills_a_partial_batch_with_events_that_arrive_meanwhile() {
    let config = config(&[
        ("DAY15_BATCH_LINGER_MS", "60000"),
        ("DAY15_BATCH_SIZE", "3"),
    ]);
    let backend = memory_backend(&config);
    let consumer = start(config, &backend);
    for i in 0..3 {
        enqueue(&backend, vec![signup(&format!("evt_{i}"), "u1", json!({}))]).await;
    }
    counter_reaches(&backend, counters::PROCESSED, 3).await;
    let stats = consumer.stop().await.unwrap();
    assert_eq!(stats.batches, 1, "one full batch despite three arrivals");
}
