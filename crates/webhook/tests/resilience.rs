//! Load shedding, a failing or hanging backend, recovery, and graceful shutdown.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{error_body, event, test_config, ServerHandle};
use pipeline_core::backend::{Backend as _, BackendOptions, Settlement};
use pipeline_core::testkit::wait::eventually;
use pipeline_core::testkit::{FaultMode, FaultyBackend};
use tokio_util::sync::CancellationToken;

fn faulty(mode: FaultMode) -> Arc<FaultyBackend> {
    Arc::new(FaultyBackend::new(BackendOptions::default(), mode))
}

async fn assert_unavailable_within_a_second(server: &ServerHandle, path: &str) {
    let started = Instant::now();
    let r = match path {
        "/webhook/batch" => {
            server
                .post(path, &serde_json::json!({"events": [event("evt_down")]}))
                .await
        }
        _ => server.post(path, &event("evt_down")).await,
    };
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 503, "{path}");
    assert_eq!(r.headers()["retry-after"], "1");
    let body = error_body(r).await;
    assert_eq!(body["error"], "backend_unavailable");
    assert!(
        elapsed < Duration::from_secs(1),
        "{path}: answered in {elapsed:?}"
    );
}

#[tokio::test]
async fn a_queue_above_the_limit_sheds_load_with_429_until_it_drains() {
    let mut config = test_config();
    config.http.max_queue_depth = 1;
    let server = ServerHandle::start_with(config).await;
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_q1"))
            .await
            .status(),
        202
    );
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_q2"))
            .await
            .status(),
        202
    );

    let r = server.post("/webhook/events", &event("evt_q3")).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_body(r).await["error"], "queue_full");
    let r = server
        .post(
            "/webhook/batch",
            &serde_json::json!({"events": [event("evt_q4")]}),
        )
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(server.queue_depth().await, 2);

    // A consumer drains the queue; the webhook accepts again by itself.
    let cancel = CancellationToken::new();
    let taken = server
        .backend
        .claim_batch("c", 10, Duration::ZERO, &cancel)
        .await
        .unwrap();
    let acks = taken
        .into_iter()
        .map(|delivery| Settlement::Ack {
            delivery,
            effect: None,
        })
        .collect();
    server.backend.settle(acks).await.unwrap();
    let client = server.client.clone();
    let url = server.url("/webhook/events");
    eventually(
        "a 202 once the queue is drained",
        Duration::from_secs(5),
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client
                    .post(url)
                    .json(&event("evt_q3"))
                    .send()
                    .await
                    .unwrap();
                (r.status() == 202).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_failing_backend_gives_503_with_retry_after_and_the_webhook_recovers() {
    let backend = faulty(FaultMode::Failing);
    let server = ServerHandle::start_on(test_config(), backend.clone()).await;
    assert_unavailable_within_a_second(&server, "/webhook/events").await;
    assert_unavailable_within_a_second(&server, "/webhook/batch").await;

    let r = server.get("/health").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let health: serde_json::Value = r.json().await.unwrap();
    assert_eq!(health["status"], "unhealthy");
    assert!(health["reason"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
    for path in ["/stats", "/metrics", "/analytics", "/dlq"] {
        let r = server.get(path).await;
        assert_eq!(r.status(), 503, "{path}");
        error_body(r).await;
    }

    backend.set_mode(FaultMode::Up);
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_back"))
            .await
            .status(),
        202
    );
    assert_eq!(server.get("/health").await.status(), 200);
    // The unjudged 503s were not counted; the accept after recovery was.
    let stats = server.get_json("/stats").await;
    assert_eq!(stats["received"], 1, "{stats}");
    assert_eq!(stats["accepted"], 1, "{stats}");
}

#[tokio::test]
async fn a_hanging_backend_still_gives_503_within_a_second() {
    let backend = faulty(FaultMode::Hanging);
    let server = ServerHandle::start_on(test_config(), backend.clone()).await;
    assert_unavailable_within_a_second(&server, "/webhook/events").await;

    let started = Instant::now();
    let r = server.get("/health").await;
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(1));

    backend.set_mode(FaultMode::Up);
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_back"))
            .await
            .status(),
        202
    );
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight() {
    let backend = faulty(FaultMode::Slow);
    let server = ServerHandle::start_on(test_config(), backend.clone()).await;
    let in_flight = {
        let client = server.client.clone();
        let url = server.url("/webhook/events");
        tokio::spawn(async move { client.post(url).json(&event("evt_late")).send().await })
    };
    // Wait until the request is inside the backend call, then stop the server.
    eventually(
        "the request inside the backend call",
        Duration::from_secs(5),
        || async { (backend.inner.depths().await.unwrap().queue == 1).then_some(()) },
    )
    .await;
    server.stop().await.unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 202);
}
