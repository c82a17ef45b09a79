//! Every kind of bad request gets its 4xx with a JSON error body, never a 5xx, and nothing is
//! queued.

mod common;

use common::{error_body, event, ServerHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EVENTS: &str = "/webhook/events";
const BATCH: &str = "/webhook/batch";
const JSON: Option<&str> = Some("application/json");

struct Case {
    name: &'static str,
    method: reqwest::Method,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// Expected `missing` list, when the case is about absent fields.
    missing: Option<&'static [&'static str]>,
}

fn post(name: &'static str, path: &'static str, body: impl Into<Vec<u8>>, status: u16) -> Case {
    Case {
        name,
        method: reqwest::Method::POST,
        path,
        content_type: JSON,
        body: body.into(),
        status,
        missing: None,
    }
}

/// A valid event with one field replaced (or removed when `value` is None).
fn with(field: &str, value: Option<Value>) -> Vec<u8> {
    let mut e = event("evt_bad_input");
    match value {
        Some(v) => e[field] = v,
        None => {
            e.as_object_mut().unwrap().remove(field);
        }
    }
    e.to_string().into_bytes()
}

/// A valid event of `event_type` with this metadata.
fn meta(event_type: &str, metadata: Value) -> Vec<u8> {
    let mut e = event("evt_bad_meta");
    e["event_type"] = json!(event_type);
    e["metadata"] = metadata;
    e.to_string().into_bytes()
}

fn deep_nesting(depth: usize) -> String {
    format!(
        r#"{{"event_id":"evt_deep","event_type":"user_signup","timestamp":"2025-12-16T10:00:00Z","metadata":{{"x":{}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

fn cases() -> Vec<Case> {
    let two_mib = {
        let mut e = event("evt_big");
        e["metadata"]["padding"] = json!("x".repeat(2 * 1024 * 1024));
        e.to_string()
    };
    let too_many: Vec<Value> = (0..1001).map(|i| event(&format!("evt_many_{i}"))).collect();
    let mut invalid_utf8 = br#"{"event_id":"evt_"#.to_vec();
    invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
    invalid_utf8
        .extend_from_slice(br#"","event_type":"user_signup","timestamp":"2025-12-16T10:00:00Z"}"#);
    let s = Some;

    let mut v = vec![
        // Not JSON at all.
        post("plain text", EVENTS, "hello", 400),
        post("truncated JSON", EVENTS, r#"{"event_id": "evt_1""#, 400),
        post("empty body", EVENTS, "", 400),
        post("invalid UTF-8", EVENTS, invalid_utf8.clone(), 400),
        post(
            "trailing garbage",
            EVENTS,
            format!("{} x", event("evt_t")),
            400,
        ),
        post(
            "number out of range",
            EVENTS,
            r#"{"event_id":"e","event_type":"subscription_created","timestamp":"2025-12-16T10:00:00Z","metadata":{"amount":1e999}}"#,
            400,
        ),
        post("10k-deep nesting", EVENTS, deep_nesting(10_000), 400),
        // JSON, but not an object.
        post("empty array", EVENTS, "[]", 400),
        post(
            "array of events",
            EVENTS,
            format!("[{}]", event("evt_arr")),
            400,
        ),
        post("number", EVENTS, "42", 400),
        post("string", EVENTS, r#""evt_1""#, 400),
        post("null", EVENTS, "null", 400),
        post("boolean", EVENTS, "true", 400),
        // Missing required fields.
        post("empty object", EVENTS, "{}", 400),
        post("missing event_id", EVENTS, with("event_id", None), 400),
        post("missing event_type", EVENTS, with("event_type", None), 400),
        post("missing timestamp", EVENTS, with("timestamp", None), 400),
        post(
            "null event_id",
            EVENTS,
            with("event_id", s(Value::Null)),
            400,
        ),
        // Wrong types and values of the top-level fields.
        post(
            "event_id number",
            EVENTS,
            with("event_id", s(json!(12345))),
            400,
        ),
        post(
            "event_id empty",
            EVENTS,
            with("event_id", s(json!(""))),
            400,
        ),
        post(
            "event_id with space",
            EVENTS,
            with("event_id", s(json!("evt 1"))),
            400,
        ),
        post(
            "event_id too long",
            EVENTS,
            with("event_id", s(json!("e".repeat(129)))),
            400,
        ),
        post(
            "event_id not ASCII",
            EVENTS,
            with("event_id", s(json!("évt_1"))),
            400,
        ),
        post(
            "event_id object",
            EVENTS,
            with("event_id", s(json!({"id": 1}))),
            400,
        ),
        post(
            "event_type number",
            EVENTS,
            with("event_type", s(json!(7))),
            400,
        ),
        post(
            "event_type empty",
            EVENTS,
            with("event_type", s(json!(""))),
            400,
        ),
        post(
            "event_type too long",
            EVENTS,
            with("event_type", s(json!("t".repeat(65)))),
            400,
        ),
        post(
            "timestamp not a date",
            EVENTS,
            with("timestamp", s(json!("yesterday"))),
            400,
        ),
        post(
            "timestamp number",
            EVENTS,
            with("timestamp", s(json!(1734343200))),
            400,
        ),
        post(
            "timestamp without zone",
            EVENTS,
            with("timestamp", s(json!("2025-12-16T10:00:00"))),
            400,
        ),
        post("user_id number", EVENTS, with("user_id", s(json!(42))), 400),
        post(
            "user_id too long",
            EVENTS,
            with("user_id", s(json!("u".repeat(129)))),
            400,
        ),
        post(
            "metadata array",
            EVENTS,
            with("metadata", s(json!([1, 2]))),
            400,
        ),
        post(
            "metadata string",
            EVENTS,
            with("metadata", s(json!("organic"))),
            400,
        ),
        // Metadata rules of docs/api.md.
        post(
            "signup source number",
            EVENTS,
            meta("user_signup", json!({"source": 1})),
            400,
        ),
        post(
            "signup email boolean",
            EVENTS,
            meta("user_signup", json!({"email": true})),
            400,
        ),
        post(
            "signup company object",
            EVENTS,
            meta("user_signup", json!({"company": {}})),
            400,
        ),
        post(
            "signup country array",
            EVENTS,
            meta("user_signup", json!({"country": ["US"]})),
            400,
        ),
        post(
            "subscription plan number",
            EVENTS,
            meta("subscription_created", json!({"plan": 3})),
            400,
        ),
        post(
            "subscription amount negative",
            EVENTS,
            meta("subscription_created", json!({"amount": -1})),
            400,
        ),
        post(
            "subscription amount string",
            EVENTS,
            meta("subscription_created", json!({"amount": "99.99"})),
            400,
        ),
        post(
            "subscription billing_cycle weekly",
            EVENTS,
            meta("subscription_created", json!({"billing_cycle": "weekly"})),
            400,
        ),
        post(
            "subscription trial string",
            EVENTS,
            meta("subscription_created", json!({"trial": "no"})),
            400,
        ),
        post(
            "usage feature number",
            EVENTS,
            meta("usage_tracked", json!({"feature": 5})),
            400,
        ),
        post(
            "usage quantity fraction",
            EVENTS,
            meta("usage_tracked", json!({"quantity": 1.5})),
            400,
        ),
        post(
            "usage quantity negative",
            EVENTS,
            meta("usage_tracked", json!({"quantity": -3})),
            400,
        ),
        post(
            "usage duration_ms string",
            EVENTS,
            meta("usage_tracked", json!({"duration_ms": "12"})),
            400,
        ),
        // Limits and content types.
        post("2 MiB body", EVENTS, two_mib.clone(), 413),
        Case {
            content_type: Some("text/plain"),
            ..post("text/plain", EVENTS, event("evt_ct").to_string(), 415)
        },
        Case {
            content_type: None,
            ..post("no content type", EVENTS, event("evt_ct").to_string(), 415)
        },
        Case {
            content_type: Some("application/x-www-form-urlencoded"),
            ..post("form content type", EVENTS, "event_id=evt_1", 415)
        },
        // Batches.
        post("batch empty", BATCH, r#"{"events": []}"#, 400),
        post("batch without events", BATCH, r#"{"items": []}"#, 400),
        post(
            "batch is an array",
            BATCH,
            format!("[{}]", event("evt_b")),
            400,
        ),
        post("batch is a string", BATCH, r#""events""#, 400),
        post(
            "batch events not an array",
            BATCH,
            r#"{"events": {"event_id": "evt_1"}}"#,
            400,
        ),
        post("batch not JSON", BATCH, "events=1", 400),
        post(
            "batch 10k-deep nesting",
            BATCH,
            format!(r#"{{"events":[{}]}}"#, deep_nesting(10_000)),
            400,
        ),
        post(
            "batch over DAY15_MAX_BATCH_EVENTS",
            BATCH,
            json!({ "events": too_many }).to_string(),
            413,
        ),
        post(
            "batch 2 MiB",
            BATCH,
            format!(r#"{{"events":[{two_mib}]}}"#),
            413,
        ),
        Case {
            content_type: Some("text/plain"),
            ..post("batch text/plain", BATCH, r#"{"events":[]}"#, 415)
        },
        // Routing.
        Case {
            method: reqwest::Method::GET,
            ..post("GET on the ingest path", EVENTS, "", 405)
        },
        Case {
            method: reqwest::Method::PUT,
            ..post("PUT on the batch path", BATCH, "{}", 405)
        },
        post(
            "unknown path",
            "/webhook/nope",
            event("evt_404").to_string(),
            404,
        ),
    ];
    let missing: [(&str, &[&str]); 5] = [
        ("empty object", &["event_id", "event_type", "timestamp"]),
        ("missing event_id", &["event_id"]),
        ("missing event_type", &["event_type"]),
        ("missing timestamp", &["timestamp"]),
        ("batch without events", &["events"]),
    ];
    for c in &mut v {
        c.missing = missing.iter().find(|(n, _)| *n == c.name).map(|(_, m)| *m);
    }
    v
}

#[tokio::test]
async fn every_bad_input_gets_its_4xx_json_error_and_nothing_is_queued() {
    let server = ServerHandle::start().await;
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut request = server
            .client
            .request(case.method.clone(), server.url(case.path))
            .body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status != case.status {
            let text = response.text().await.unwrap_or_default();
            failures.push(format!(
                "{}: expected {}, got {status}: {text}",
                case.name, case.status
            ));
            continue;
        }
        let body = error_body(response).await;
        if status == 400 {
            let details = body["details"].as_array();
            assert!(
                details.is_some_and(|d| !d.is_empty()),
                "{}: {body}",
                case.name
            );
        }
        if let Some(missing) = case.missing {
            assert_eq!(body["missing"], json!(missing), "{}: {body}", case.name);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    assert_eq!(server.queue_depth().await, 0);
    let stats = server.get_json("/stats").await;
    assert_eq!(stats["accepted"], 0, "{stats}");
    // Every refused request counts as rejected, except routing errors (never judged).
    let judged = cases
        .iter()
        .filter(|c| c.status != 404 && c.status != 405)
        .count();
    assert_eq!(stats["rejected"], judged, "{stats}");
    assert_eq!(stats["received"], judged, "{stats}");
}

#[tokio::test]
async fn validation_errors_name_each_bad_field() {
    let server = ServerHandle::start().await;
    let body = json!({"event_id": "evt 1", "event_type": "subscription_created",
                      "timestamp": "2025-12-16T10:00:00Z",
                      "metadata": {"amount": -5, "billing_cycle": "weekly"}});
    let r = server.post(EVENTS, &body).await;
    assert_eq!(r.status(), 400);
    let body = error_body(r).await;
    assert_eq!(body["error"], "invalid_event");
    let fields: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["event_id", "metadata.amount", "metadata.billing_cycle"]
    );
}

/// Sends raw HTTP/1.1 and returns the status line and body.
async fn raw_request(server: &ServerHandle, head: &str, body: &[u8]) -> (String, String) {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before reading everything; that is the point.
    let _ = stream.write_all(body).await;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let server = ServerHandle::start().await;
    let head = "POST /webhook/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                content-length: 50000000\r\nconnection: close\r\n\r\n";
    let (status, body) = raw_request(&server, head, b"{}").await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("\"payload_too_large\""), "{body}");
    assert_eq!(server.queue_depth().await, 0);
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_cut_off_with_413() {
    let server = ServerHandle::start().await;
    let head = "POST /webhook/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                transfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let chunk = vec![b' '; 256 * 1024];
    let mut body = Vec::new();
    for _ in 0..6 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw_request(&server, head, &body).await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("\"payload_too_large\""), "{body}");
}

/// Values that would become unbounded metric keys, or numbers that break totals, are refused
/// with a 400 naming the field, and never reach the analytics.
#[tokio::test]
async fn hostile_values_are_refused_naming_the_field() {
    let server = ServerHandle::start().await;
    let huge = "s".repeat(900 * 1024);
    let typed = |t: &str| {
        let mut e = event("evt_hostile_type");
        e["event_type"] = json!(t);
        e
    };
    let with_meta = |t: &str, metadata: Value| {
        let mut e = event("evt_hostile_meta");
        e["event_type"] = json!(t);
        e["metadata"] = metadata;
        e
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "900 KB source",
            with_meta("user_signup", json!({ "source": huge })),
            "metadata.source",
        ),
        (
            "source with a newline",
            with_meta("user_signup", json!({"source": "ads\nfake_line"})),
            "metadata.source",
        ),
        (
            "country of 65 characters",
            with_meta("user_signup", json!({"country": "C".repeat(65)})),
            "metadata.country",
        ),
        (
            "plan with markup",
            with_meta("subscription_created", json!({"plan": "<b>pro</b>"})),
            "metadata.plan",
        ),
        (
            "feature not ASCII",
            with_meta("usage_tracked", json!({"feature": "\u{202e}llac_ipa"})),
            "metadata.feature",
        ),
        (
            "event_type with a space",
            typed("user signup"),
            "event_type",
        ),
        ("event_type with markup", typed("<script>"), "event_type"),
        (
            "event_type starting with a digit",
            typed("1st_login"),
            "event_type",
        ),
        (
            "amount 1e307",
            with_meta("subscription_created", json!({"amount": 1e307})),
            "metadata.amount",
        ),
        (
            "amount above a billion",
            with_meta("subscription_created", json!({"amount": 1_000_000_000.01})),
            "metadata.amount",
        ),
        (
            "quantity 2^63",
            with_meta("usage_tracked", json!({"quantity": 1u64 << 63})),
            "metadata.quantity",
        ),
        (
            "duration_ms 2^63",
            with_meta("usage_tracked", json!({"duration_ms": 1u64 << 63})),
            "metadata.duration_ms",
        ),
        (
            "user_id with a control character",
            {
                let mut e = event("evt_hostile_user");
                e["user_id"] = json!("user\u{1b}[2J");
                e
            },
            "user_id",
        ),
    ];
    for (name, body, field) in &cases {
        let r = server.post(EVENTS, body).await;
        assert_eq!(r.status(), 400, "{name}");
        let body = error_body(r).await;
        assert_eq!(body["error"], "invalid_event", "{name}: {body}");
        let fields: Vec<&str> = body["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [*field], "{name}: {body}");
    }
    assert_eq!(server.queue_depth().await, 0);
    let stats = server.get_json("/stats").await;
    assert_eq!(stats["rejected"], cases.len(), "{stats}");
}

/// Applies every queued event as a consumer does.
async fn apply_queued(server: &ServerHandle) -> usize {
    use pipeline_core::analytics::effect_of;
    use pipeline_core::backend::Settlement;
    use pipeline_core::event::Event;
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut applied = 0;
    loop {
        let deliveries = server
            .backend
            .claim_batch("test", 1000, std::time::Duration::ZERO, &cancel)
            .await
            .unwrap();
        if deliveries.is_empty() {
            return applied;
        }
        applied += deliveries.len();
        let settlements = deliveries
            .into_iter()
            .map(|delivery| {
                let event = Event::from_slice(delivery.payload.as_bytes()).unwrap();
                let effect = Some(effect_of(&event, chrono::Utc::now()));
                Settlement::Ack { delivery, effect }
            })
            .collect();
        server.backend.settle(settlements).await.unwrap();
    }
}

/// At the largest accepted amount and quantity, the totals of many events are exact and
/// finite; one above the bound is refused.
#[tokio::test]
async fn totals_of_many_events_at_the_bounds_are_exact() {
    const N: u64 = 1000;
    let server = ServerHandle::start().await;
    let meta_event = |id: String, t: &str, metadata: Value| {
        json!({"event_id": id, "event_type": t, "user_id": "user_max",
               "timestamp": "2025-12-16T10:00:00Z", "metadata": metadata})
    };
    for (t, key, above) in [
        ("subscription_created", "amount", json!(1_000_000_000.5)),
        ("usage_tracked", "quantity", json!(1_000_000_001u64)),
    ] {
        let r = server
            .post(
                EVENTS,
                &meta_event(format!("evt_above_{key}"), t, json!({ key: above })),
            )
            .await;
        assert_eq!(r.status(), 400, "{key} above the bound");
    }
    for (prefix, t, metadata) in [
        (
            "evt_max_sub",
            "subscription_created",
            json!({"plan": "max", "amount": 1_000_000_000.0, "billing_cycle": "monthly"}),
        ),
        (
            "evt_max_use",
            "usage_tracked",
            json!({"feature": "max", "quantity": 1_000_000_000u64, "duration_ms": 1_000_000_000u64}),
        ),
    ] {
        let events: Vec<Value> = (0..N)
            .map(|i| meta_event(format!("{prefix}_{i}"), t, metadata.clone()))
            .collect();
        let r = server.post(BATCH, &json!({ "events": events })).await;
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["results"]["accepted"], N, "{body}");
    }
    assert_eq!(apply_queued(&server).await, 2 * N as usize);

    let text = server.get("/analytics").await.text().await.unwrap();
    assert!(!text.contains("null"), "{text}");
    let a: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(a["subscriptions"]["mrr"], json!(1e12), "{text}");
    assert_eq!(a["subscriptions"]["by_plan"]["max"]["mrr"], json!(1e12));
    assert_eq!(a["usage"]["quantity"], json!(N * 1_000_000_000));
    assert_eq!(
        a["usage"]["by_feature"]["max"]["quantity"],
        json!(N * 1_000_000_000)
    );
    assert_eq!(
        a["usage"]["top_users"][0]["quantity"],
        json!(N * 1_000_000_000)
    );
}

/// An empty pipeline's documents hold plain zeros: no `-0.0`, no `null`.
#[tokio::test]
async fn an_empty_pipeline_reports_zero_not_negative_zero() {
    let server = ServerHandle::start().await;
    let analytics = server.get("/analytics").await.text().await.unwrap();
    assert!(analytics.contains(r#""mrr":0.0"#), "{analytics}");
    let stats = server.get("/stats").await.text().await.unwrap();
    let metrics = server.get("/metrics").await.text().await.unwrap();
    for (path, text) in [("/analytics", &analytics), ("/stats", &stats)] {
        assert!(
            !text.contains("-0.0") && !text.contains("null"),
            "{path}: {text}"
        );
    }
    assert!(
        !metrics.contains("NaN") && !metrics.contains(" -0"),
        "{metrics}"
    );
}
