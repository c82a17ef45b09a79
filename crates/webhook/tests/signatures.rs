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
    // (Spaces separate secrets, so a raw secret has none.)
    let server = server_with_secret("my-plain-shared-secret").await;
    let body = event("evt_raw_secret").to_string().into_bytes();
    let headers = signed(b"my-plain-shared-secret", "msg_r", now(), &body);
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
            signed(KEY, "msg_x", ts + 330, &body),
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

/// The key a sender used before the rotation.
const OLD_KEY: &[u8] = b"fedcba9876543210fedcba9876543210";

fn whsec_of(key: &[u8]) -> String {
    format!("whsec_{}", STANDARD.encode(key))
}

#[tokio::test]
async fn during_a_rotation_the_old_and_the_new_secret_are_both_accepted() {
    // A raw secret may sit beside whsec_ ones; any whitespace separates them.
    let secrets = format!("{} \t{}  raw-third-secret", whsec_of(OLD_KEY), whsec());
    let server = server_with_secret(&secrets).await;
    for (n, key) in [OLD_KEY, KEY, b"raw-third-secret"].into_iter().enumerate() {
        let body = event(&format!("evt_rot_{n}")).to_string().into_bytes();
        let id = format!("msg_rot_{n}");
        let r = send(
            &server,
            "/webhook/events",
            &body,
            &signed(key, &id, now(), &body),
        )
        .await;
        assert_eq!(r.status(), 202, "secret {n}");
        let batch = serde_json::json!({"events": [event(&format!("evt_rot_b{n}"))]})
            .to_string()
            .into_bytes();
        let id = format!("msg_rot_b{n}");
        let r = send(
            &server,
            "/webhook/batch",
            &batch,
            &signed(key, &id, now(), &batch),
        )
        .await;
        assert_eq!(r.status(), 202, "batch, secret {n}");
    }

    let body = event("evt_rot_unknown").to_string().into_bytes();
    let r = send(
        &server,
        "/webhook/events",
        &body,
        &signed(b"a key nobody configured", "msg_rot_x", now(), &body),
    )
    .await;
    assert_eq!(r.status(), 401);
    let err = error_body(r).await;
    assert_eq!(err["error"], "invalid_signature");
    assert_eq!(err["message"], "no valid v1 signature in webhook-signature");
    assert_eq!(server.queue_depth().await, 6);
}

#[tokio::test]
async fn an_unusable_secret_among_several_is_named_at_start() {
    let err = webhook::signature::WebhookSecret::parse(&format!("{} whsec_***", whsec()))
        .expect_err("the second secret is not base64");
    assert!(
        err.to_string().starts_with(
            "DAY15_WEBHOOK_SECRET (secret 2 of 2) starts with whsec_ but the rest is not valid base64"
        ),
        "{err}"
    );
}

/// The headers of a Svix-based sender: same scheme, `svix-*` names.
fn svix_signed(key: &[u8], id: &str, ts: i64, body: &[u8]) -> Headers {
    vec![
        ("svix-id", id.to_string()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", sign(key, id, ts, body)),
    ]
}

#[tokio::test]
async fn svix_header_names_are_accepted_on_both_endpoints() {
    let server = server_with_secret(&whsec()).await;
    let body = event("evt_svix").to_string().into_bytes();
    let r = send(
        &server,
        "/webhook/events",
        &body,
        &svix_signed(KEY, "msg_svix_1", now(), &body),
    )
    .await;
    assert_eq!(r.status(), 202);
    let batch = serde_json::json!({"events": [event("evt_svix_b")]})
        .to_string()
        .into_bytes();
    let r = send(
        &server,
        "/webhook/batch",
        &batch,
        &svix_signed(KEY, "msg_svix_2", now(), &batch),
    )
    .await;
    assert_eq!(r.status(), 202);

    // Svix names are checked exactly like the standard ones.
    let body = event("evt_svix_bad").to_string().into_bytes();
    let r = send(
        &server,
        "/webhook/events",
        &body,
        &svix_signed(b"wrong key", "msg_svix_3", now(), &body),
    )
    .await;
    assert_eq!(r.status(), 401);
    assert_eq!(server.queue_depth().await, 2);
}

#[tokio::test]
async fn when_both_names_are_sent_the_webhook_names_win() {
    let server = server_with_secret(&whsec()).await;
    let body = event("evt_both").to_string().into_bytes();
    let ts = now();
    // Valid standard headers, garbage Svix ones: accepted.
    let mut headers = signed(KEY, "msg_both", ts, &body);
    headers.extend([
        ("svix-id", "msg_other".to_string()),
        ("svix-timestamp", "0".to_string()),
        ("svix-signature", "v1,***".to_string()),
    ]);
    let r = send(&server, "/webhook/events", &body, &headers).await;
    assert_eq!(r.status(), 202);

    // A wrong standard signature is not rescued by a valid Svix one.
    let body = event("evt_both_2").to_string().into_bytes();
    let mut headers = svix_signed(KEY, "msg_both_2", ts, &body);
    headers.push((
        "webhook-signature",
        sign(b"wrong key", "msg_both_2", ts, &body),
    ));
    let r = send(&server, "/webhook/events", &body, &headers).await;
    assert_eq!(r.status(), 401);

    // Each header is looked up on its own: a standard signature beside Svix id and timestamp.
    let body = event("evt_both_3").to_string().into_bytes();
    let mut headers = svix_signed(KEY, "msg_both_3", ts, &body);
    headers[2].0 = "webhook-signature";
    let r = send(&server, "/webhook/events", &body, &headers).await;
    assert_eq!(r.status(), 202);
    assert_eq!(server.queue_depth().await, 2);
}

#[tokio::test]
async fn a_delivery_refused_with_503_leaves_no_mark_and_its_retry_is_accepted() {
    use pipeline_core::testkit::{FaultMode, FaultyBackend};
    let backend = std::sync::Arc::new(FaultyBackend::new(Default::default(), FaultMode::Failing));
    let mut config = test_config();
    config.http.webhook_secret = Some(whsec());
    let server = ServerHandle::start_on(config, backend.clone()).await;
    let body = event("evt_retry_after_503").to_string().into_bytes();
    let headers = signed(KEY, "msg_retried", now(), &body);
    let r = send(&server, "/webhook/events", &body, &headers).await;
    assert_eq!(r.status(), 503);

    backend.set_mode(FaultMode::Up);
    // The sender retries the same delivery, as Standard Webhooks senders do.
    let r = send(&server, "/webhook/events", &body, &headers).await;
    assert_eq!(r.status(), 202);
    // Once stored, the same delivery again is a duplicate delivery.
    let r = send(&server, "/webhook/events", &body, &headers).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["reason"],
        "duplicate_delivery"
    );
    assert_eq!(server.queue_depth().await, 1);
}

/// Signs with the real `svix` Python library, if installed (`pip install svix`): the proof
/// that a Svix-based sender is understood, not just our reading of its scheme. Returns `None`
/// (the test then skips) when Python or the library is missing.
fn svix_python_sign(secret: &str, id: &str, ts: i64, body: &str) -> Option<String> {
    let script = "import sys, datetime\n\
        from svix.webhooks import Webhook\n\
        secret, msg_id, ts, body = sys.argv[1:5]\n\
        when = datetime.datetime.fromtimestamp(int(ts), tz=datetime.timezone.utc)\n\
        print(Webhook(secret).sign(msg_id, when, body))\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, secret, id, &ts.to_string(), body])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_string())
}

#[tokio::test]
async fn a_request_signed_by_the_svix_python_library_is_accepted() {
    let server = server_with_secret(&whsec()).await;
    let body = event("evt_svix_python").to_string();
    let ts = now();
    let Some(signature) = svix_python_sign(&whsec(), "msg_svix_py", ts, &body) else {
        eprintln!("SKIP: python3 with the svix library is not installed (pip install svix)");
        return;
    };
    assert_eq!(signature, sign(KEY, "msg_svix_py", ts, body.as_bytes()));
    let headers = vec![
        ("svix-id", "msg_svix_py".to_string()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", signature),
    ];
    let r = send(&server, "/webhook/events", body.as_bytes(), &headers).await;
    assert_eq!(r.status(), 202);
}
