//! Standard Webhooks signatures. Signatures are computed with the `standard-webhooks` crate,
//! whose own tests pin it to the specification's published vectors; these tests prove the
//! webhook asks for them and refuses what does not match.

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{error_body, event, test_config, ServerHandle};
use standard_webhooks::Secret;

/// A `whsec_` secret and the key bytes it stands for.
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn whsec() -> String {
    format!("whsec_{}", STANDARD.encode(KEY))
}

fn sign(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    Secret::from_bytes(key).unwrap().sign(id, ts, body)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn server_with_secret(secret: &str) -> ServerHandle {
    let mut config = test_config();
    config.http.webhook_secret = Some(secret.to_string());
    ServerHandle::start_with(config).await
}

async fn send(
    server: &ServerHandle,
    path: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut r = server
        .client
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.send().await.unwrap()
}

/// Request headers as (name, value).
type Headers = Vec<(&'static str, String)>;

fn signed(key: &[u8], id: &str, ts: i64, body: &[u8]) -> Headers {
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sign(key, id, ts, body)),
    ]
}

#[tokio::test]
async fn a_valid_signature_is_accepted_on_both_endpoints() {
    let server = server_with_secret(&whsec()).await;
    let body = event("evt_signed").to_string().into_bytes();
    let r = send(
        &server,
        "/webhook/events",
        &body,
        &signed(KEY, "msg_1", now(), &body),
    )
    .await;
    assert_eq!(r.status(), 202);

    let batch = serde_json::json!({"events": [event("evt_signed_b")]})
        .to_string()
        .into_bytes();
    let r = send(
        &server,
        "/webhook/batch",
        &batch,
        &signed(KEY, "msg_2", now(), &batch),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert_eq!(server.queue_depth().await, 2);
}

#[tokio::test]
async fn the_signature_covers_the_raw_bytes_as_sent() {
    let server = server_with_secret(&whsec()).await;
    // Odd spacing and key order: re-serialised JSON would not match this signature.
    let body = br#"{ "timestamp":"2025-12-16T10:00:00Z",  "event_type":"user_signup","event_id":"evt_raw" }"#;
    let r = send(
        &server,
        "/webhook/events",
        body,
        &signed(KEY, "msg_raw", now(), body),
    )
    .await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn a_raw_secret_is_used_as_bytes() {
    let server = server_with_secret("my plain shared secret").await;
    let body = event("evt_raw_secret").to_string().into_bytes();
    let headers = signed(b"my plain shared secret", "msg_r", now(), &body);
    let r = send(&server, "/webhook/events", &body, &headers).await;
    assert_eq!(r.status(), 202);
    // The whsec_ decoding must not apply to a raw secret.
    let body = event("evt_raw_secret_2").to_string().into_bytes();
    let r = send(
        &server,
        "/webhook/events",
        &body,
        &signed(KEY, "msg_r2", now(), &body),
    )
    .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn bad_signatures_get_401_and_nothing_is_queued() {
    let server = server_with_secret(&whsec()).await;
    let body = event("evt_refused").to_string().into_bytes();
    let ts = now();
    let good = signed(KEY, "msg_x", ts, &body);
    let tampered = event("evt_tampered").to_string().into_bytes();

    let mut cases: Vec<(&str, Vec<u8>, Headers)> = vec![
        (
            "wrong secret",
            body.clone(),
            signed(b"another key", "msg_x", ts, &body),
        ),
        ("tampered body", tampered, good.clone()),
        ("no headers", body.clone(), vec![]),
        (
            "expired timestamp",
            body.clone(),
            signed(KEY, "msg_x", ts - 301, &body),
        ),
        (
            "timestamp from the future",
            body.clone(),
            signed(KEY, "msg_x", ts + 301, &body),
        ),
        ("timestamp not a number", body.clone(), {
            let mut h = good.clone();
            h[1].1 = "yesterday".into();
            h
        }),
        ("signature of another id", body.clone(), {
            let mut h = good.clone();
            h[0].1 = "msg_other".into();
            h
        }),
        ("unknown signature version", body.clone(), {
            let mut h = good.clone();
            h[2].1 = h[2].1.replacen("v1,", "v2,", 1);
            h
        }),
        ("signature not base64", body.clone(), {
            let mut h = good.clone();
            h[2].1 = "v1,***".into();
            h
        }),
    ];
    for missing in 0..3 {
        let mut h = good.clone();
        let name = h.remove(missing).0;
        cases.push((name, body.clone(), h));
    }

    for (name, body, headers) in cases {
        let r = send(&server, "/webhook/events", &body, &headers).await;
        assert_eq!(r.status(), 401, "{name}");
        let err = error_body(r).await;
        assert_eq!(err["error"], "invalid_signature", "{name}: {err}");
    }
    assert_eq!(server.queue_depth().await, 0);
}

#[tokio::test]
async fn one_valid_signature_among_several_is_enough_for_rotation() {
    let server = server_with_secret(&whsec()).await;
    let body = event("evt_rotated").to_string().into_bytes();
    let ts = now();
    let old = sign(b"the retired key", "msg_rot", ts, &body);
    let new = sign(KEY, "msg_rot", ts, &body);
    let headers = vec![
        ("webhook-id", "msg_rot".to_string()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", format!("{old} v1a,ignored {new}")),
    ];
    let r = send(&server, "/webhook/events", &body, &headers).await;
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn without_a_secret_unsigned_requests_are_accepted() {
    let server = ServerHandle::start().await;
    let r = server.post("/webhook/events", &event("evt_unsigned")).await;
    assert_eq!(r.status(), 202);
}
