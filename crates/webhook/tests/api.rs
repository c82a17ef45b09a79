//! Ingest responses, idempotency, counters and the read endpoints, against the memory backend.

mod common;

use std::time::Duration;

use common::{error_body, event, test_config, ServerHandle};
use pipeline_core::analytics::counters;
use pipeline_core::testkit::wait::eventually;
use serde_json::{json, Value};

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

#[tokio::test]
async fn the_originals_sample_events_are_accepted_with_every_response_field() {
    let server = ServerHandle::start().await;
    let samples: Vec<Value> =
        serde_json::from_str(include_str!("../../../data/sample_events.json")).unwrap();
    assert!(samples.len() >= 3);
    for sample in &samples {
        let r = server.post("/webhook/events", sample).await;
        assert_eq!(r.status(), 202, "{sample}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "accepted", "{body}");
        assert_eq!(body["event_id"], sample["event_id"]);
        assert!(is_rfc3339(&body["queued_at"]), "{body}");
        assert!(
            body["latency_ms"].as_f64().is_some_and(|l| l >= 0.0),
            "{body}"
        );
        assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
    }
    assert_eq!(server.queue_depth().await, samples.len() as u64);
}

#[tokio::test]
async fn a_repeated_event_is_ignored_with_200_duplicate() {
    let server = ServerHandle::start().await;
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_dup"))
            .await
            .status(),
        202
    );
    let r = server.post("/webhook/events", &event("evt_dup")).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"status": "ignored", "reason": "duplicate_event", "event_id": "evt_dup"})
    );
    assert_eq!(server.queue_depth().await, 1);
}

#[tokio::test]
async fn stored_events_carry_received_at_and_the_senders_unknown_fields() {
    let server = ServerHandle::start().await;
    let mut e = event("evt_stored");
    e["extra"] = json!({"kept": true});
    e["received_at"] = json!("1999-01-01T00:00:00Z");
    assert_eq!(server.post("/webhook/events", &e).await.status(), 202);
    let cancel = tokio_util::sync::CancellationToken::new();
    let claimed = server
        .backend
        .claim_batch("t", 10, Duration::ZERO, &cancel)
        .await
        .unwrap();
    let stored: Value = serde_json::from_str(&claimed[0].payload).unwrap();
    assert_eq!(stored["extra"], json!({"kept": true}));
    let received_at = stored["received_at"].as_str().unwrap();
    assert!(
        received_at.starts_with("20") && received_at.ends_with('Z'),
        "{received_at}"
    );
    assert_ne!(received_at, "1999-01-01T00:00:00Z");
}

#[tokio::test]
async fn a_readme_style_batch_without_user_or_metadata_is_accepted() {
    let server = ServerHandle::start().await;
    let batch = json!({"events": [
        {"event_id": "evt_batch_001", "event_type": "user_signup", "timestamp": "2025-12-16T10:00:00Z"},
        {"event_id": "evt_batch_002", "event_type": "subscription_created", "timestamp": "2025-12-16T10:00:01Z"},
        {"event_id": "evt_batch_003", "event_type": "usage_tracked", "timestamp": "2025-12-16T10:00:02Z"}
    ]});
    let r = server.post("/webhook/batch", &batch).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "processed");
    assert_eq!(
        body["results"],
        json!({"accepted": 3, "duplicates": 0, "errors": 0})
    );
    assert_eq!(body["total_events"], 3);
    assert!(body["latency_ms"].is_number(), "{body}");
    assert_eq!(body["error_details"], json!([]));
    assert_eq!(server.queue_depth().await, 3);
}

#[tokio::test]
async fn a_batch_judges_each_event_and_counts_duplicates_inside_it() {
    let server = ServerHandle::start().await;
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_seen"))
            .await
            .status(),
        202
    );
    let batch = json!({"events": [
        event("evt_new"),
        {"event_id": "evt_no_ts", "event_type": "user_signup"},
        event("evt_new"),
        event("evt_seen"),
        42
    ]});
    let r = server.post("/webhook/batch", &batch).await;
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["results"],
        json!({"accepted": 1, "duplicates": 2, "errors": 2})
    );
    assert_eq!(body["total_events"], 5);
    let details = body["error_details"].as_array().unwrap();
    assert_eq!(details.len(), 2);
    assert_eq!(details[0]["index"], 1);
    assert_eq!(details[0]["event_id"], "evt_no_ts");
    assert!(details[0]["error"].as_str().unwrap().contains("timestamp"));
    assert_eq!(details[1]["index"], 4);
    assert_eq!(details[1]["event_id"], Value::Null);
    assert_eq!(server.queue_depth().await, 2);
}

#[tokio::test]
async fn fifty_concurrent_identical_posts_give_exactly_one_202() {
    let server = ServerHandle::start().await;
    let e = event("evt_race");
    let requests = (0..50).map(|_| {
        let client = server.client.clone();
        let url = server.url("/webhook/events");
        let e = e.clone();
        tokio::spawn(async move { client.post(url).json(&e).send().await.unwrap().status() })
    });
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.unwrap().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        49,
        "{statuses:?}"
    );
    assert_eq!(server.queue_depth().await, 1);
}

#[tokio::test]
async fn stats_count_exactly_after_a_known_sequence_and_reach_the_backend() {
    let server = ServerHandle::start().await;
    for id in ["evt_s1", "evt_s2", "evt_s3", "evt_s1"] {
        server.post("/webhook/events", &event(id)).await;
    }
    server
        .post("/webhook/events", &json!({"event_id": "evt_bad"}))
        .await;
    let batch = json!({"events": [event("evt_s4"), {"event_type": "x"}]});
    server.post("/webhook/batch", &batch).await;

    let stats = server.get_json("/stats").await;
    let expected = [
        ("received", 7),
        ("accepted", 4),
        ("duplicates", 1),
        ("rejected", 2),
        ("processed", 0),
        ("queue_depth", 4),
        ("dlq_depth", 0),
    ];
    for (name, value) in expected {
        assert_eq!(stats[name], value, "{name}: {stats}");
    }
    assert_eq!(stats["backend"], "memory");
    assert_eq!(stats["latency"]["ingest"]["count"], 5, "{stats}");
    assert!(stats["latency"]["ingest"]["p99_ms"].is_number());
    assert!(stats["latency"]["end_to_end"]["p50_ms"].is_number());
    assert!(stats["uptime_seconds"].is_number());

    // The same figures end up in the backend, where other processes read them.
    let backend = server.backend.clone();
    eventually(
        "local counters flushed to the backend",
        Duration::from_secs(5),
        || {
            let backend = backend.clone();
            async move {
                let m = backend.metrics().await.unwrap();
                (m.counter(counters::RECEIVED) == 7 && m.counter(counters::REJECTED) == 2)
                    .then_some(())
            }
        },
    )
    .await;
    let again = server.get_json("/stats").await;
    assert_eq!(again["received"], 7, "counted once, not twice: {again}");
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_can_be_disabled() {
    let server = ServerHandle::start().await;
    server.post("/webhook/events", &event("evt_m")).await;
    let r = server.get("/metrics").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for line in [
        "day15_events_accepted_total 1",
        "day15_events_received_total 1",
        "day15_queue_depth 1",
        "# TYPE day15_ingest_latency_seconds histogram",
        "day15_ingest_latency_seconds_count 1",
        "day15_end_to_end_latency_seconds_bucket{le=\"+Inf\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }

    let mut config = test_config();
    config.http.metrics_enabled = false;
    let off = ServerHandle::start_with(config).await;
    let r = off.get("/metrics").await;
    assert_eq!(r.status(), 404);
    error_body(r).await;
}

#[tokio::test]
async fn health_analytics_and_dashboard_answer() {
    let server = ServerHandle::start().await;
    let health = server.get_json("/health").await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["backend"], "memory");
    assert_eq!(health["queue_depth"], 0);
    assert_eq!(health["dlq_depth"], 0);
    assert!(is_rfc3339(&health["timestamp"]));
    assert!(health["uptime_seconds"].is_number());

    let a = server.get_json("/analytics").await;
    for key in [
        "generated_at",
        "events_processed",
        "events_by_type",
        "unhandled",
        "distinct_users",
        "signups",
        "subscriptions",
        "usage",
        "events_per_minute",
        "end_to_end_latency",
    ] {
        assert!(a.get(key).is_some(), "{key} missing: {a}");
    }
    assert_eq!(a["events_per_minute"].as_array().unwrap().len(), 60);
    assert!(a["subscriptions"]["mrr"].is_number());

    let r = server.get("/dashboard").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
}

#[tokio::test]
async fn the_server_stops_on_its_token_and_flushes_its_counters() {
    let server = ServerHandle::start().await;
    server.post("/webhook/events", &event("evt_stop")).await;
    server.post("/webhook/events", &json!([])).await;
    let backend = server.backend.clone();
    server.stop().await.unwrap();
    let m = backend.metrics().await.unwrap();
    assert_eq!(m.counter(counters::RECEIVED), 2);
    assert_eq!(m.counter(counters::REJECTED), 1);
}

/// Reads the stream until one whole `snapshot` event arrived; returns its data.
async fn next_snapshot(response: &mut reqwest::Response, buffer: &mut String) -> Value {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            if block.contains("event: snapshot") {
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                return serde_json::from_str(&data).unwrap();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("a snapshot within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn analytics_stream_sends_a_snapshot_at_once_and_again_after_a_change() {
    let server = ServerHandle::start().await;
    let mut stream = server.get("/analytics/stream").await;
    assert_eq!(stream.status(), 200);
    assert!(stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buffer = String::new();
    let first = next_snapshot(&mut stream, &mut buffer).await;
    assert_eq!(first["stats"]["accepted"], 0);
    assert_eq!(first["analytics"]["events_processed"], 0);

    server.post("/webhook/events", &event("evt_stream")).await;
    let second = next_snapshot(&mut stream, &mut buffer).await;
    assert_eq!(second["stats"]["accepted"], 1);
    assert_eq!(second["stats"]["queue_depth"], 1);

    // An open stream does not hold up shutdown.
    server.stop().await.unwrap();
}

/// Concurrent single events share enqueue calls; each request still gets its own answer:
/// of 64 requests for 16 ids sent at once, exactly one per id is accepted and the rest are
/// duplicates, and exactly 16 events are queued.
#[tokio::test]
async fn concurrent_single_events_are_each_answered_for_themselves() {
    let server = ServerHandle::start().await;
    let requests = (0..64).map(|i| {
        let body = event(&format!("evt_together_{}", i % 16));
        let server = &server;
        async move {
            let r = server.post("/webhook/events", &body).await;
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut accepted = std::collections::BTreeMap::new();
    for (status, body) in &answers {
        let id = body["event_id"].as_str().unwrap().to_string();
        match status {
            202 => *accepted.entry(id).or_insert(0) += 1,
            200 => assert_eq!(body["reason"], "duplicate_event", "{body}"),
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!(accepted.len(), 16, "{accepted:?}");
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");
    assert_eq!(server.queue_depth().await, 16);
    server.stop().await.unwrap();
}
