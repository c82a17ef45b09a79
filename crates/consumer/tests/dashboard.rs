//! DAY15_DASHBOARD_UPDATE_ENABLED against a real local HTTP server.
mod common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use pipeline_core::analytics::counters;
use pipeline_core::testkit::wait::eventually;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Bodies the fake dashboard received. A std Mutex: no `.await` happens under the lock.
type Received = Arc<Mutex<Vec<Value>>>;

/// Starts a dashboard API on a free port; returns its URL and what it receives.
async fn dashboard_server(shutdown: CancellationToken) -> (String, Received) {
    let received = Received::default();
    let app = Router::new()
        .route(
            "/api/metrics",
            post(
                |State(r): State<Received>, Json(body): Json<Value>| async move {
                    r.lock().unwrap().push(body);
                    "ok"
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/metrics", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .unwrap();
    });
    (url, received)
}

fn sum(docs: &[Value], pointer: &str) -> f64 {
    docs.iter()
        .filter_map(|d| d.pointer(pointer).and_then(Value::as_f64))
        .sum()
}

#[tokio::test]
async fn each_batch_posts_its_metric_deltas_to_the_dashboard() {
    let server_stop = CancellationToken::new();
    let (url, received) = dashboard_server(server_stop.clone()).await;
    let config = config(&[
        ("DAY15_DASHBOARD_UPDATE_ENABLED", "true"),
        ("DAY15_DASHBOARD_API_URL", &url),
        ("DAY15_BATCH_SIZE", "2"),
    ]);
    let backend = memory_backend(&config);
    enqueue(
        &backend,
        vec![
            signup("evt_s", "u1", json!({"source": "ads", "country": "FR"})),
            event(
                json!({"event_id": "evt_p", "event_type": "subscription_created",
                "user_id": "u1", "timestamp": "2025-12-16T10:00:00Z",
                "metadata": {"plan": "pro", "amount": 120.0, "billing_cycle": "annual"}}),
            ),
            event(json!({"event_id": "evt_u", "event_type": "usage_tracked",
                "user_id": "u2", "timestamp": "2025-12-16T10:00:00Z",
                "metadata": {"feature": "export", "quantity": 7}})),
            event(json!({"event_id": "evt_x", "event_type": "page_view",
                "timestamp": "2025-12-16T10:00:00Z"})),
        ],
    )
    .await;
    let consumer = start(config, &backend);
    eventually("deltas of all 4 events posted", DEADLINE, || async {
        let docs = received.lock().unwrap().clone();
        (sum(&docs, "/processed") >= 4.0).then_some(())
    })
    .await;
    let stats = consumer.stop().await.unwrap();
    server_stop.cancel();

    let docs = received.lock().unwrap().clone();
    assert_eq!(docs.len(), 2, "one document per batch of 2: {docs:?}");
    assert_eq!(sum(&docs, "/processed"), 4.0);
    assert_eq!(sum(&docs, "/failed"), 0.0);
    assert_eq!(sum(&docs, "/signups"), 1.0);
    assert_eq!(sum(&docs, "/signups_by_source/ads"), 1.0);
    assert_eq!(sum(&docs, "/signups_by_country/FR"), 1.0);
    assert_eq!(sum(&docs, "/subscriptions"), 1.0);
    assert!((sum(&docs, "/mrr_delta") - 10.0).abs() < 1e-9);
    assert!((sum(&docs, "/mrr_delta_by_plan/pro") - 10.0).abs() < 1e-9);
    assert_eq!(sum(&docs, "/usage_events"), 1.0);
    assert_eq!(sum(&docs, "/usage_quantity"), 7.0);
    assert_eq!(sum(&docs, "/usage_quantity_by_feature/export"), 7.0);
    assert_eq!(sum(&docs, "/unhandled"), 1.0);
    assert_eq!(sum(&docs, "/events_by_type/page_view"), 1.0);
    assert!(docs
        .iter()
        .all(|d| d["consumer"].as_str().is_some_and(|c| !c.is_empty())));
    assert!(docs
        .iter()
        .all(|d| d["timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))));

    let counts = stats.dashboard.expect("dashboard counts are reported");
    assert_eq!((counts.posted, counts.failed, counts.dropped), (2, 0, 0));
}

#[tokio::test]
async fn a_dashboard_that_refuses_connections_does_not_fail_events() {
    // A port that was just free and is now closed: connections are refused.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/api/metrics", closed.local_addr().unwrap());
    drop(closed);
    let config = config(&[
        ("DAY15_DASHBOARD_UPDATE_ENABLED", "true"),
        ("DAY15_DASHBOARD_API_URL", &url),
    ]);
    let backend = memory_backend(&config);
    enqueue(
        &backend,
        vec![
            signup("evt_1", "u1", json!({})),
            signup("evt_2", "u2", json!({})),
        ],
    )
    .await;
    let consumer = start(config, &backend);
    counter_reaches(&backend, counters::PROCESSED, 2).await;
    let stats = consumer.stop().await.unwrap();

    assert_eq!((stats.processed, stats.failures.failed), (2, 0));
    let m = metrics(&backend).await;
    assert_eq!(m.counter(counters::FAILED), 0);
    let counts = stats.dashboard.expect("dashboard counts are reported");
    assert_eq!(counts.posted, 0);
    assert!(counts.failed >= 1, "{counts:?}");
}
