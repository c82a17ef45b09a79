//! Hostile clients: replayed signatures, absurd signature timestamps, slow bodies, connections
//! held open, and a body size claim of a gigabyte. `signatures.rs` and `admin.rs` cover the
//! ordinary signature and admin-token refusals; this file covers what an attacker would try next.
//! Slow and held connections speak raw HTTP/1.1 over TCP, as such a client would.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::{error_body, event, test_config, ServerHandle};
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{Backend as _, BackendOptions};
use serde_json::{json, Value};
use standard_webhooks::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &[u8] = b"an attacker does not know this key";

/// Signs over `ts` exactly as sent, even when it is not a number.
fn sign(id: &str, ts: &str, body: &[u8]) -> String {
    Secret::from_bytes(KEY).unwrap().sign(id, ts, body)
}

async fn signed_server() -> ServerHandle {
    let mut config = test_config();
    config.http.webhook_secret = Some(format!("whsec_{}", STANDARD.encode(KEY)));
    ServerHandle::start_with(config).await
}

async fn post_signed(
    server: &ServerHandle,
    path: &str,
    body: &[u8],
    id: &str,
    ts: &str,
    signature: &str,
) -> reqwest::Response {
    server
        .client
        .post(server.url(path))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts)
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_captured_signature_replayed_with_another_body_gets_401_on_both_endpoints() {
    let server = signed_server().await;
    let ts = chrono::Utc::now().timestamp().to_string();
    let body = event("evt_captured").to_string().into_bytes();
    let signature = sign("msg_captured", &ts, &body);
    let r = post_signed(
        &server,
        "/webhook/events",
        &body,
        "msg_captured",
        &ts,
        &signature,
    )
    .await;
    assert_eq!(r.status(), 202);

    // The captured headers with the attacker's own payload, on either endpoint.
    let forged_event = event("evt_forged").to_string().into_bytes();
    let forged_batch = json!({"events": [event("evt_forged_b")]})
        .to_string()
        .into_bytes();
    for (path, forged) in [
        ("/webhook/events", &forged_event),
        ("/webhook/batch", &forged_batch),
    ] {
        let r = post_signed(&server, path, forged, "msg_captured", &ts, &signature).await;
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(error_body(r).await["error"], "invalid_signature");
    }
    // The same body with one byte appended (trailing whitespace is still valid JSON).
    let mut padded = body.clone();
    padded.push(b' ');
    let r = post_signed(
        &server,
        "/webhook/events",
        &padded,
        "msg_captured",
        &ts,
        &signature,
    )
    .await;
    assert_eq!(r.status(), 401, "padded body");

    // Replaying the request exactly as captured changes nothing: its delivery was seen.
    let r = post_signed(
        &server,
        "/webhook/events",
        &body,
        "msg_captured",
        &ts,
        &signature,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap()["reason"],
        "duplicate_delivery"
    );
    assert_eq!(server.queue_depth().await, 1);
}

/// A server whose event ids are forgotten at once: what a captured request meets once its
/// event ids' idempotency TTL has passed (the signature tolerance may be longer).
async fn signed_server_forgetting_event_ids() -> (ServerHandle, Arc<MemoryBackend>) {
    let backend = Arc::new(MemoryBackend::new(BackendOptions {
        idempotency_ttl: Duration::ZERO,
        ..BackendOptions::default()
    }));
    let mut config = test_config();
    config.http.webhook_secret = Some(format!("whsec_{}", STANDARD.encode(KEY)));
    let server = ServerHandle::start_on(config, backend.clone()).await;
    (server, backend)
}

#[tokio::test]
async fn a_captured_request_replayed_after_its_event_ttl_is_a_duplicate_delivery() {
    let (server, backend) = signed_server_forgetting_event_ids().await;
    let ts = chrono::Utc::now().timestamp().to_string();
    let body = event("evt_replayed").to_string().into_bytes();
    let signature = sign("msg_replayed", &ts, &body);
    let send = || {
        post_signed(
            &server,
            "/webhook/events",
            &body,
            "msg_replayed",
            &ts,
            &signature,
        )
    };
    assert_eq!(send().await.status(), 202);
    for _ in 0..3 {
        let r = send().await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"status": "ignored", "reason": "duplicate_delivery", "event_id": "evt_replayed"})
        );
    }
    assert_eq!(server.queue_depth().await, 1);
    let stats = backend.metrics().await.unwrap();
    assert_eq!(stats.counter("accepted"), 1);
    assert_eq!(stats.counter("duplicates"), 3);
}

#[tokio::test]
async fn a_reused_webhook_id_with_new_events_and_a_valid_signature_stores_nothing() {
    let (server, _backend) = signed_server_forgetting_event_ids().await;
    let ts = chrono::Utc::now().timestamp().to_string();
    let body = json!({"events": [event("evt_first_a"), event("evt_first_b")]})
        .to_string()
        .into_bytes();
    let r = post_signed(
        &server,
        "/webhook/batch",
        &body,
        "msg_reused",
        &ts,
        &sign("msg_reused", &ts, &body),
    )
    .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["results"]["accepted"], 2);

    // Same webhook-id, other events, correctly signed: refused whole as a replay.
    let batch = json!({"events": [event("evt_new_a"), event("evt_new_b"), {"event_id": 5}]})
        .to_string()
        .into_bytes();
    let r = post_signed(
        &server,
        "/webhook/batch",
        &batch,
        "msg_reused",
        &ts,
        &sign("msg_reused", &ts, &batch),
    )
    .await;
    assert_eq!(r.status(), 202);
    let answer = r.json::<Value>().await.unwrap();
    assert_eq!(
        answer["results"],
        json!({"accepted": 0, "duplicates": 2, "errors": 1}),
        "{answer}"
    );
    let single = event("evt_new_c").to_string().into_bytes();
    let r = post_signed(
        &server,
        "/webhook/events",
        &single,
        "msg_reused",
        &ts,
        &sign("msg_reused", &ts, &single),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"status": "ignored", "reason": "duplicate_delivery", "event_id": "evt_new_c"})
    );
    assert_eq!(server.queue_depth().await, 2);
}

#[tokio::test]
async fn an_overlong_webhook_id_gets_401_naming_the_limit() {
    let server = signed_server().await;
    let ts = chrono::Utc::now().timestamp().to_string();
    let body = event("evt_long_id").to_string().into_bytes();
    let longest = "m".repeat(256);
    let r = post_signed(
        &server,
        "/webhook/events",
        &body,
        &longest,
        &ts,
        &sign(&longest, &ts, &body),
    )
    .await;
    assert_eq!(r.status(), 202, "256 characters are enough");

    let too_long = "m".repeat(257);
    let body = event("evt_long_id_2").to_string().into_bytes();
    let r = post_signed(
        &server,
        "/webhook/events",
        &body,
        &too_long,
        &ts,
        &sign(&too_long, &ts, &body),
    )
    .await;
    assert_eq!(r.status(), 401);
    let err = error_body(r).await;
    assert_eq!(err["error"], "invalid_signature");
    assert_eq!(
        err["message"],
        "webhook-id header must be at most 256 characters"
    );
    assert_eq!(server.queue_depth().await, 1);
}

#[tokio::test]
async fn absurd_signature_timestamps_get_401_never_a_server_error() {
    let server = signed_server().await;
    let now = chrono::Utc::now().timestamp();
    let body = json!({"events": [event("evt_absurd_ts")]})
        .to_string()
        .into_bytes();
    let timestamps = [
        (now - 301).to_string(),
        (now + 330).to_string(),
        "0".to_string(),
        "-1".to_string(),
        i64::MAX.to_string(),
        i64::MIN.to_string(),
        "99999999999999999999999".to_string(),
        format!("{now}.5"),
        format!("{now}000"),
        format!("+{now}x"),
    ];
    for ts in &timestamps {
        // Correctly signed over the timestamp as sent: only its value is wrong.
        let signature = sign("msg_ts", ts, &body);
        for path in ["/webhook/batch", "/webhook/events"] {
            let r = post_signed(&server, path, &body, "msg_ts", ts, &signature).await;
            assert_eq!(r.status(), 401, "{path} webhook-timestamp {ts}");
            assert_eq!(error_body(r).await["error"], "invalid_signature");
        }
    }
    assert_eq!(server.queue_depth().await, 0);
    assert_eq!(server.get("/health").await.status(), 200);
}

/// The host:port of the server, for raw TCP.
fn address(server: &ServerHandle) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Reads from `stream` until the peer closes or `deadline` passes; returns what arrived and
/// whether the peer closed.
async fn read_until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    deadline: Instant,
) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

fn status_of(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

fn body_of(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// One request of `content_length` bytes to `/webhook/events`, head only.
fn head(content_length: u64) -> String {
    format!(
        "POST /webhook/events HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {content_length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_body_sent_one_byte_a_second_is_cut_off_with_408_at_the_request_timeout() {
    let server = ServerHandle::start().await;
    let body = event("evt_slowloris").to_string().into_bytes();
    let stream = TcpStream::connect(address(&server)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    writer
        .write_all(head(body.len() as u64).as_bytes())
        .await
        .unwrap();
    // The drip stops by itself once the server has closed the connection.
    let drip = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let deadline = started + webhook::REQUEST_TIMEOUT + Duration::from_secs(5);
    let (response, closed) = read_until_closed(&mut reader, deadline).await;
    let elapsed = started.elapsed();
    drip.abort();
    assert!(
        status_of(&response).contains(" 408 "),
        "after {elapsed:?}: {response:?}"
    );
    assert_eq!(body_of(&response)["error"], "request_timeout");
    assert!(closed, "the connection stays open after the 408");
    // The timeout, not something else, ended it: the body needed ~110 s at this pace.
    assert!(
        elapsed >= webhook::REQUEST_TIMEOUT - Duration::from_secs(1),
        "{elapsed:?}"
    );
    assert_eq!(server.queue_depth().await, 0);
}

#[tokio::test]
async fn a_request_head_trickled_one_header_a_second_is_cut_off_at_the_header_timeout() {
    let server = ServerHandle::start().await;
    let stream = TcpStream::connect(address(&server)).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    writer
        .write_all(b"POST /webhook/events HTTP/1.1\r\nhost: test\r\n")
        .await
        .unwrap();
    // A header line a second, never the blank line that ends the head.
    let drip = tokio::spawn(async move {
        for n in 0.. {
            let line = format!("x-slow-{n}: still here\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });

    let deadline = started + webhook::HEADER_READ_TIMEOUT + Duration::from_secs(5);
    let (_, closed) = read_until_closed(&mut reader, deadline).await;
    let elapsed = started.elapsed();
    drip.abort();
    assert!(closed, "the connection is still open after {elapsed:?}");
    assert!(
        elapsed >= webhook::HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "closed after {elapsed:?}, before the header timeout"
    );
    assert_eq!(server.queue_depth().await, 0);
}

/// Opens `n` connections of each hostile kind and keeps them open while the caller works:
/// silent ones, ones that sent half a request head, and ones that sent a head and half a body.
async fn hold_connections(server: &ServerHandle, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(3 * n);
    for i in 0..n {
        held.push(TcpStream::connect(address(server)).await.unwrap());

        let mut half_head = TcpStream::connect(address(server)).await.unwrap();
        half_head
            .write_all(b"POST /webhook/events HTTP/1.1\r\nhost: test\r\ncontent-ty")
            .await
            .unwrap();
        held.push(half_head);

        let mut half_body = TcpStream::connect(address(server)).await.unwrap();
        let body = event(&format!("evt_held_{i}")).to_string();
        half_body
            .write_all(head(body.len() as u64).as_bytes())
            .await
            .unwrap();
        half_body
            .write_all(&body.as_bytes()[..body.len() / 2])
            .await
            .unwrap();
        held.push(half_body);
    }
    held
}

#[tokio::test]
async fn a_hundred_held_connections_do_not_starve_new_requests() {
    let server = ServerHandle::start().await;
    let held = hold_connections(&server, 34).await;
    assert!(held.len() >= 100);

    // New clients on fresh connections are still served, each well within the request timeout.
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..20 {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = server.url("/webhook/events");
        requests.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&event(&format!("evt_fresh_{i}")))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            r.map(|r| r.status().as_u16())
        }));
    }
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap(), 202);
    }
    let health = server
        .client
        .get(server.url("/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        started.elapsed() < webhook::REQUEST_TIMEOUT,
        "new requests waited {:?} behind the held connections",
        started.elapsed()
    );
    // None of the half-sent events was stored.
    assert_eq!(server.queue_depth().await, 20);
    drop(held);
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_idle_or_half_sent_connections() {
    let server = ServerHandle::start().await;
    // Only connections that never completed a request head: those with a body in flight are
    // requests in progress, which shutdown rightly lets finish (up to the request timeout).
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(TcpStream::connect(address(&server)).await.unwrap());
        let mut half = TcpStream::connect(address(&server)).await.unwrap();
        half.write_all(b"GET /health HTTP/1.1\r\nhost:")
            .await
            .unwrap();
        held.push(half);
    }
    // Make sure the server has taken them all before it is stopped.
    assert_eq!(server.get("/health").await.status(), 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server.stop())
        .await
        .expect("serve returns promptly although clients keep connections open")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(held);
}

#[tokio::test]
async fn a_one_gibibyte_content_length_is_refused_with_413_at_once() {
    let server = ServerHandle::start().await;
    for path in ["/webhook/events", "/webhook/batch"] {
        let mut stream = TcpStream::connect(address(&server)).await.unwrap();
        // A keep-alive request whose body never comes: the answer cannot wait for it.
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            1u64 << 30
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"{\"events\": [").await.unwrap();
        let started = Instant::now();
        let (response, closed) =
            read_until_closed(&mut stream, started + Duration::from_secs(5)).await;
        assert!(
            status_of(&response).contains(" 413 "),
            "{path}: {response:?}"
        );
        assert_eq!(body_of(&response)["error"], "payload_too_large", "{path}");
        // The server does not keep the connection to swallow the announced gigabyte.
        assert!(closed, "{path}: connection left open after the 413");
        assert!(started.elapsed() < Duration::from_secs(5), "{path}");
    }
    assert_eq!(server.queue_depth().await, 0);
    let stats = server.get_json("/stats").await;
    assert_eq!(stats["rejected"], 2, "{stats}");
}
