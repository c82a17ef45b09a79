//! The DLQ endpoints: listing, and replay/purge behind the admin bearer token.

mod common;

use std::time::Duration;

use common::{error_body, event, test_config, ServerHandle};
use pipeline_core::backend::{FailureReason, Settlement};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cret-admin-token";

async fn admin_server() -> ServerHandle {
    let mut config = test_config();
    config.http.admin_token = Some(TOKEN.into());
    ServerHandle::start_with(config).await
}

async fn admin_post(
    server: &ServerHandle,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut r = server.client.post(server.url(path)).json(body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.unwrap()
}

/// `GET /dlq…` as the admin: the listing needs the token once one is configured.
async fn admin_get(server: &ServerHandle, path_and_query: &str) -> reqwest::Response {
    server
        .client
        .get(server.url(path_and_query))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
}

/// [`admin_get`], expecting a 200 JSON page.
async fn dlq_page(server: &ServerHandle, path_and_query: &str) -> Value {
    let r = admin_get(server, path_and_query).await;
    assert_eq!(r.status(), 200, "GET {path_and_query}");
    r.json().await.unwrap()
}

/// Posts an event and dead-letters it the way a consumer would.
async fn dead_letter(server: &ServerHandle, id: &str) {
    assert_eq!(
        server.post("/webhook/events", &event(id)).await.status(),
        202
    );
    let cancel = CancellationToken::new();
    let deliveries = server
        .backend
        .claim_batch("test-consumer", 100, Duration::ZERO, &cancel)
        .await
        .unwrap();
    let settlements = deliveries
        .into_iter()
        .map(|delivery| Settlement::DeadLetter {
            delivery,
            reason: FailureReason::MaxRetriesExceeded,
            error: "handler failed".into(),
        })
        .collect();
    server.backend.settle(settlements).await.unwrap();
}

#[tokio::test]
async fn admin_endpoints_are_403_without_a_configured_token() {
    let server = ServerHandle::start().await;
    for path in ["/dlq/replay", "/dlq/purge"] {
        for token in [None, Some(""), Some("anything")] {
            let r = admin_post(&server, path, token, &json!({"all": true})).await;
            assert_eq!(r.status(), 403, "{path} {token:?}");
            assert_eq!(error_body(r).await["error"], "admin_disabled");
        }
    }
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401() {
    let server = admin_server().await;
    for path in ["/dlq/replay", "/dlq/purge"] {
        for token in [
            None,
            Some("wrong"),
            Some("s3cret-admin-token-longer"),
            Some(""),
        ] {
            let r = admin_post(&server, path, token, &json!({"all": true})).await;
            assert_eq!(r.status(), 401, "{path} {token:?}");
            assert_eq!(r.headers()["www-authenticate"], "Bearer");
            assert_eq!(error_body(r).await["error"], "unauthorized");
        }
        let r = server
            .client
            .post(server.url(path))
            .header("authorization", format!("Basic {TOKEN}"))
            .json(&json!({"all": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with Basic");
    }
}

#[tokio::test]
async fn dead_letters_can_be_listed_replayed_and_purged() {
    let server = admin_server().await;
    dead_letter(&server, "evt_dl_1").await;
    dead_letter(&server, "evt_dl_2").await;

    let page = dlq_page(&server, "/dlq").await;
    assert_eq!(page["total"], 2);
    assert_eq!(page["limit"], 50);
    assert_eq!(page["offset"], 0);
    let first = &page["entries"][0];
    assert_eq!(first["event_id"], "evt_dl_1");
    assert_eq!(first["event"]["event_id"], "evt_dl_1");
    assert_eq!(first["failure_reason"], "max_retries_exceeded");
    assert_eq!(first["error"], "handler failed");
    assert_eq!(first["attempts"], 1);
    assert!(first["failed_at"].is_string());

    let page = dlq_page(&server, "/dlq?limit=1&offset=1").await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0]["event_id"], "evt_dl_2");
    assert_eq!(page["total"], 2);

    let r = admin_post(
        &server,
        "/dlq/replay",
        Some(TOKEN),
        &json!({"event_ids": ["evt_dl_1"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"replayed": 1}));
    assert_eq!(server.queue_depth().await, 1);
    assert_eq!(dlq_page(&server, "/dlq").await["total"], 1);

    let r = admin_post(&server, "/dlq/replay", Some(TOKEN), &json!({"all": true})).await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"replayed": 1}));
    assert_eq!(server.queue_depth().await, 2);

    dead_letter(&server, "evt_dl_3").await;
    assert_eq!(dlq_page(&server, "/dlq").await["total"], 3);
    let r = server
        .client
        .post(server.url("/dlq/purge"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"purged": 3}));
    let page = dlq_page(&server, "/dlq").await;
    assert_eq!(page["total"], 0);
    assert_eq!(page["entries"], json!([]));
}

#[tokio::test]
async fn bad_dlq_parameters_and_replay_bodies_get_400() {
    let server = admin_server().await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "offset=-1",
        "offset=1.5",
    ] {
        let r = admin_get(&server, &format!("/dlq?{query}")).await;
        assert_eq!(r.status(), 400, "{query}");
        error_body(r).await;
    }
    for body in [
        json!({}),
        json!([]),
        json!({"all": "yes"}),
        json!({"all": false}),
        json!({"event_ids": "evt_1"}),
        json!({"event_ids": [1]}),
        json!({"event_ids": ["has space"]}),
        json!({"all": true, "event_ids": ["evt_1"]}),
    ] {
        let r = admin_post(&server, "/dlq/replay", Some(TOKEN), &body).await;
        assert_eq!(r.status(), 400, "{body}");
        error_body(r).await;
    }
}
