//! HTTP fuzz loop: more than ten thousand random and mutated requests against an in-process
//! server on the memory backend. Mutated valid events (flipped bytes, truncation, huge numbers
//! and strings, deep nesting, invalid UTF-8), odd Content-Types and header values, random
//! methods and paths, and some malformed raw HTTP/1.1.
//!
//! Proven: no answer is ever a 5xx (the memory backend never fails, so not even a 503), the
//! server answers `/health` and shuts down cleanly afterwards, every 202 is for a body that
//! validates, a well-formed JSON request is accepted exactly when the validator accepts it, and
//! the queue holds exactly the events the 202 answers announced.
//!
//! Each worker draws from its own `StdRng` seeded from [`SEED`] (override with
//! `HTTP_FUZZ_SEED=<u64>`), and a failure names the worker and input number, so any failure
//! replays exactly.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{test_config, ServerHandle};
use pipeline_core::event::Event;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEED: u64 = 0x5eed_f022;
const WORKERS: usize = 16;
const INPUTS_PER_WORKER: usize = 640;
/// Small limits so that "too large" is reached often without megabyte bodies.
const MAX_BODY: usize = 64 * 1024;
const MAX_BATCH: usize = 20;

const EVENTS: &str = "/webhook/events";
const BATCH: &str = "/webhook/batch";

/// Content-Types the server must treat as JSON.
const JSON_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/cloudevents+json",
];

const OTHER_TYPES: &[&str] = &[
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/jsonx",
    "application/+json",
    "json",
    "",
    ";",
    "application/",
    "/json",
];

/// Raw tokens put where a JSON value goes: numbers no type can hold, and non-JSON literals.
const ODD_NUMBERS: &[&str] = &[
    "1e999",
    "-1e999",
    "1e-999",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890123456789",
    "1.7976931348623157e308",
    "-0",
    "0.0000000000000000000000000000001",
    "NaN",
    "Infinity",
    "-Infinity",
    "00012",
    "1_000",
    "0x10",
    "+1",
    ".5",
];

const ODD_STRINGS: &[&str] = &[
    "\"\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"evt with spaces\"",
    "\"\\u00e9v\\u00e9nement\"",
    "\"2025-13-45T99:99:99Z\"",
    "\"2025-12-16T10:00:00\"",
    "\"+275760-09-13T00:00:00Z\"",
    "\"2016-12-31T23:59:60Z\"",
    "\"9999-12-31T23:59:59.999999999999Z\"",
    "\"\\\"\"",
];

/// Byte sequences that are not UTF-8: stray continuation, overlong, surrogate, beyond U+10FFFF.
const INVALID_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc3",
];

const FIELDS: &[&str] = &["event_id", "event_type", "user_id", "timestamp", "metadata"];
const META_KEYS: &[&str] = &[
    "source",
    "email",
    "country",
    "plan",
    "amount",
    "billing_cycle",
    "trial",
    "feature",
    "quantity",
    "duration_ms",
];

/// One generated request.
struct Input {
    method: String,
    path: String,
    content_type: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Malformed HTTP sent over raw TCP instead of through the HTTP client.
    raw: Option<Vec<u8>>,
    /// What was done to it, for failure messages.
    what: String,
}

/// A valid event of a random known (or unknown) type with a unique id.
fn valid_event(rng: &mut StdRng, id: &str) -> Value {
    let mut e = match rng.gen_range(0..4) {
        0 => json!({"event_type": "user_signup", "metadata": {
            "source": "organic", "email": "a@example.com", "country": "FR"}}),
        1 => json!({"event_type": "subscription_created", "metadata": {
            "plan": "premium", "amount": rng.gen_range(0.0..500.0),
            "billing_cycle": if rng.gen() { "monthly" } else { "annual" }, "trial": rng.gen::<bool>()}}),
        2 => json!({"event_type": "usage_tracked", "metadata": {
            "feature": "api_call", "quantity": rng.gen_range(0..1000u32),
            "duration_ms": rng.gen_range(0..100_000u32)}}),
        _ => json!({"event_type": "custom_thing", "extra": [1, 2, 3]}),
    };
    e["event_id"] = json!(id);
    e["timestamp"] = json!("2025-12-16T10:00:00.123+02:00");
    if rng.gen_bool(0.7) {
        e["user_id"] = json!(format!("user_{}", rng.gen_range(0..100)));
    }
    e
}

fn random_bytes(rng: &mut StdRng, max_len: usize) -> Vec<u8> {
    let len = rng.gen_range(0..=max_len);
    (0..len).map(|_| rng.gen()).collect()
}

/// Nested arrays or objects `depth` deep.
fn nesting(rng: &mut StdRng, depth: usize) -> String {
    if rng.gen() {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    } else {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    }
}

/// A token that replaces a JSON value of the event textually, so it need not be valid JSON.
fn odd_value(rng: &mut StdRng) -> (String, &'static str) {
    match rng.gen_range(0..6) {
        0 => (
            ODD_NUMBERS.choose(rng).unwrap().to_string(),
            "huge or odd number",
        ),
        1 => (ODD_STRINGS.choose(rng).unwrap().to_string(), "odd string"),
        2 => {
            let len = *[1_000, 64, 65, 128, 129, 20_000, 70_000]
                .choose(rng)
                .unwrap();
            let unit = *["x", "é", "\\n", "\\u0041", "🦀"].choose(rng).unwrap();
            (format!("\"{}\"", unit.repeat(len)), "huge string")
        }
        3 => {
            let depth = *[10, 127, 128, 129, 1_000, 20_000].choose(rng).unwrap();
            (nesting(rng, depth), "deep nesting")
        }
        4 => {
            let v = *["null", "true", "[]", "{}", "0", "[\"a\"]", "{\"\":null}"]
                .choose(rng)
                .unwrap();
            (v.to_string(), "wrong type")
        }
        _ => (
            format!(
                "{{{}}}",
                (0..rng.gen_range(1..3000))
                    .map(|i| format!("\"k{i}\":{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            "many keys",
        ),
    }
}

/// A valid event with one field (or metadata key) replaced by an odd value, as text.
fn event_with_odd_value(rng: &mut StdRng, id: &str) -> (String, String) {
    let mut e = valid_event(rng, id);
    const MARK: &str = "\"__odd_value__\"";
    let place = if rng.gen_bool(0.4) {
        let key = *META_KEYS.choose(rng).unwrap();
        if !e["metadata"].is_object() {
            e["metadata"] = json!({});
        }
        e["metadata"][key] = json!("__odd_value__");
        format!("metadata.{key}")
    } else {
        let field = *FIELDS.choose(rng).unwrap();
        e[field] = json!("__odd_value__");
        field.to_string()
    };
    let (token, what) = odd_value(rng);
    (
        e.to_string().replace(MARK, &token),
        format!("{what} in {place}"),
    )
}

/// Byte-level damage to `bytes`.
fn damage(rng: &mut StdRng, mut bytes: Vec<u8>) -> (Vec<u8>, &'static str) {
    if bytes.is_empty() {
        return (random_bytes(rng, 64), "random bytes");
    }
    let what = match rng.gen_range(0..6) {
        0 => {
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] ^= 1 << rng.gen_range(0..8);
            }
            "flipped bits"
        }
        1 => {
            bytes.truncate(rng.gen_range(0..bytes.len()));
            "truncated"
        }
        2 => {
            let i = rng.gen_range(0..=bytes.len());
            let seq = INVALID_UTF8.choose(rng).unwrap();
            bytes.splice(i..i, seq.iter().copied());
            "invalid UTF-8 inserted"
        }
        3 => {
            let i = rng.gen_range(0..=bytes.len());
            let junk = random_bytes(rng, 16);
            bytes.splice(i..i, junk);
            "random bytes inserted"
        }
        4 => {
            let a = rng.gen_range(0..bytes.len());
            let b = rng.gen_range(a..=bytes.len().min(a + 32));
            bytes.drain(a..b);
            "bytes removed"
        }
        _ => {
            let a = rng.gen_range(0..bytes.len());
            let b = rng.gen_range(a..=bytes.len());
            let copy = bytes[a..b].to_vec();
            let i = rng.gen_range(0..=bytes.len());
            bytes.splice(i..i, copy);
            "range duplicated"
        }
    };
    (bytes, what)
}

/// An event body: valid, with an odd value, damaged, or not an event at all.
fn event_body(rng: &mut StdRng, id: &str) -> (Vec<u8>, String) {
    match rng.gen_range(0..10) {
        0..=2 => (valid_event(rng, id).to_string().into_bytes(), "valid event".into()),
        3..=5 => {
            let (text, what) = event_with_odd_value(rng, id);
            (text.into_bytes(), what)
        }
        6..=8 => {
            let valid = valid_event(rng, id).to_string().into_bytes();
            let (bytes, what) = damage(rng, valid);
            (bytes, what.into())
        }
        _ => match rng.gen_range(0..4) {
            0 => (random_bytes(rng, 512), "random bytes".into()),
            1 => (Vec::new(), "empty body".into()),
            2 => {
                let (token, what) = odd_value(rng);
                (token.into_bytes(), format!("{what} as the whole body"))
            }
            _ => (b"{\"event_id\":\"a\",\"event_id\":1,\"event_type\":\"x\",\"timestamp\":\"2025-12-16T10:00:00Z\"}".to_vec(), "duplicate keys".into()),
        },
    }
}

/// A batch body around several event bodies, sometimes damaged as a whole.
fn batch_body(
    rng: &mut StdRng,
    next_id: &mut dyn FnMut(&mut StdRng) -> String,
) -> (Vec<u8>, String) {
    let n = *[0, 1, 2, 5, MAX_BATCH, MAX_BATCH + 1].choose(rng).unwrap();
    let mut parts = Vec::with_capacity(n);
    let mut whats = Vec::new();
    for _ in 0..n {
        let id = next_id(rng);
        let (bytes, what) = if rng.gen_bool(0.6) {
            (
                valid_event(rng, &id).to_string().into_bytes(),
                "valid".to_string(),
            )
        } else {
            event_body(rng, &id)
        };
        parts.push(String::from_utf8_lossy(&bytes).into_owned());
        whats.push(what);
    }
    let body = match rng.gen_range(0..10) {
        0 => format!(
            "{{\"events\": {}}}",
            *["null", "{}", "\"x\"", "1"].choose(rng).unwrap()
        ),
        1 => format!("[{}]", parts.join(",")),
        _ => format!("{{\"events\": [{}]}}", parts.join(",")),
    };
    let what = format!("batch of {n} ({})", whats.join(", "));
    if rng.gen_bool(0.2) {
        let (bytes, damage_what) = damage(rng, body.into_bytes());
        (bytes, format!("{what}, then {damage_what}"))
    } else {
        (body.into_bytes(), what)
    }
}

/// A header value with visible ASCII, spaces, tabs and obs-text bytes, as HTTP allows.
fn header_value(rng: &mut StdRng) -> Vec<u8> {
    let len = *[0, 1, 10, 100, 4_000].choose(rng).unwrap();
    (0..len)
        .map(|_| loop {
            let b: u8 = rng.gen();
            if b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80 {
                break b;
            }
        })
        .collect()
}

fn random_path(rng: &mut StdRng) -> String {
    let fixed = [
        "/health",
        "/stats",
        "/metrics",
        "/analytics",
        "/dashboard",
        "/dlq",
        "/dlq?limit=-1&offset=abc",
        "/dlq?limit=99999999999999999999999",
        "/dlq?limit=0",
        "/dlq/replay",
        "/dlq/purge",
        "/webhook/events/",
        "//webhook//events",
        "/WEBHOOK/EVENTS",
        "/webhook/events?x=%ff%00",
        "/webhook/batch?events=1",
        "/webhook/%2e%2e/health",
        "/webhook",
        "/",
        "/%",
        "/favicon.ico",
    ];
    if rng.gen_bool(0.8) {
        fixed.choose(rng).unwrap().to_string()
    } else {
        let len = rng.gen_range(0..200);
        let segment: String = (0..len)
            .map(|_| format!("%{:02x}", rng.gen::<u8>()))
            .collect();
        format!("/{segment}")
    }
}

/// A malformed request head and body, for raw TCP.
fn raw_request(rng: &mut StdRng, path: &str, body: &[u8]) -> (Vec<u8>, String) {
    let n = body.len();
    let (head, what): (String, &str) = match rng.gen_range(0..10) {
        0 => (format!("POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", n + 100), "content-length above the body"),
        1 => (format!("POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", n / 2), "content-length below the body"),
        2 => (format!("POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", ["-1", "abc", "1, 2", "99999999999999999999999", ""].choose(rng).unwrap()), "invalid content-length"),
        3 => (format!("POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {n}\r\ncontent-length: {}\r\n\r\n", n + 1), "two content-lengths"),
        4 => (format!("POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"), "bad chunk size"),
        5 => (format!("POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ncontent-length: {n}\r\n\r\n{n:x}\r\n"), "chunked and content-length"),
        6 => (format!("{} {path} {}\r\ncontent-length: {n}\r\n\r\n", ["post", "P0ST", "", "GET /x"].choose(rng).unwrap(), ["HTTP/9.9", "HTTP/1", "", "HTTP/1.1 extra"].choose(rng).unwrap()), "bad request line"),
        7 => (format!("POST {path} HTTP/1.1\r\ncontent-type application/json\r\n folded: line\r\ncontent-length : {n}\r\n\r\n"), "bad header syntax"),
        8 => (format!("POST /{} HTTP/1.1\r\ncontent-length: {n}\r\n\r\n", "a".repeat(rng.gen_range(10_000..100_000))), "huge request line"),
        _ => {
            let head = format!("POST {path} HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {n}\r\n\r\n");
            let (bytes, _) = damage(rng, head.into_bytes());
            (String::from_utf8_lossy(&bytes).into_owned(), "damaged head")
        }
    };
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    (request, what.to_string())
}

/// Draws input number `i` of a worker.
fn generate(rng: &mut StdRng, worker: usize, i: usize, accepted_ids: &[String]) -> Input {
    let mut counter = 0;
    let mut next_id = |rng: &mut StdRng| {
        counter += 1;
        // Now and then an id seen before, so duplicates are exercised too.
        if !accepted_ids.is_empty() && rng.gen_bool(0.1) {
            accepted_ids.choose(rng).unwrap().clone()
        } else {
            format!("evt_fuzz_{worker}_{i}_{counter}")
        }
    };
    let path = match rng.gen_range(0..100) {
        0..=44 => EVENTS.to_string(),
        45..=79 => BATCH.to_string(),
        _ => random_path(rng),
    };
    let (body, mut what) = if path.starts_with(BATCH) {
        batch_body(rng, &mut next_id)
    } else {
        let id = next_id(rng);
        event_body(rng, &id)
    };
    let method = match rng.gen_range(0..100) {
        0..=84 => "POST",
        85..=89 => "GET",
        90 => "PUT",
        91 => "DELETE",
        92 => "PATCH",
        93 => "OPTIONS",
        94 => "HEAD",
        95 => "TRACE",
        _ => *["FOO", "post", "CONNECTX", "M-SEARCH"].choose(rng).unwrap(),
    }
    .to_string();
    let content_type = match rng.gen_range(0..100) {
        0..=74 => Some(JSON_TYPES.choose(rng).unwrap().as_bytes().to_vec()),
        75..=84 => Some(OTHER_TYPES.choose(rng).unwrap().as_bytes().to_vec()),
        85..=89 => None,
        _ => Some(header_value(rng)),
    };
    let mut headers = Vec::new();
    for _ in 0..rng.gen_range(0..4) {
        let name = match rng.gen_range(0..12) {
            0 => "webhook-id".to_string(),
            1 => "webhook-signature".to_string(),
            2 => "webhook-timestamp".to_string(),
            3 => "authorization".to_string(),
            4 => "accept".to_string(),
            5 => "accept-encoding".to_string(),
            6 => "content-encoding".to_string(),
            7 => "x-forwarded-for".to_string(),
            8 => "cookie".to_string(),
            9 => "expect".to_string(),
            _ => format!("x-fuzz-{}", rng.gen_range(0..1000)),
        };
        headers.push((name, header_value(rng)));
    }
    if rng.gen_bool(0.01) {
        // More headers than the server takes.
        for k in 0..150 {
            headers.push((format!("x-many-{k}"), b"1".to_vec()));
        }
        what.push_str(", 150 extra headers");
    }
    let raw = if rng.gen_bool(0.05) {
        let (bytes, raw_what) = raw_request(rng, &path, &body);
        what = format!("raw HTTP ({raw_what}) with {what}");
        Some(bytes)
    } else {
        None
    };
    Input {
        method,
        path,
        content_type,
        headers,
        body,
        raw,
        what,
    }
}

/// What one input got back.
enum Outcome {
    /// The server's status and, for ingest 2xx, the body.
    Answered(u16, Option<Value>),
    /// The server closed the connection without an answer (raw HTTP it could not parse, or a
    /// body it refused while it was still being sent).
    Closed,
}

async fn send(
    server: &ServerHandle,
    client: &reqwest::Client,
    input: &Input,
) -> Result<Outcome, String> {
    if let Some(raw) = &input.raw {
        return send_raw(server, raw).await;
    }
    let method = reqwest::Method::from_bytes(input.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut request = client
        .request(method, server.url(&input.path))
        .timeout(Duration::from_secs(20))
        .body(input.body.clone());
    if let Some(ct) = &input.content_type {
        let value = reqwest::header::HeaderValue::from_bytes(ct).map_err(|e| e.to_string())?;
        request = request.header(reqwest::header::CONTENT_TYPE, value);
    }
    for (name, value) in &input.headers {
        let value = reqwest::header::HeaderValue::from_bytes(value).map_err(|e| e.to_string())?;
        request = request.header(name.as_str(), value);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(format!("no answer within 20 s: {e}")),
        Err(e) if input.body.len() > MAX_BODY => {
            // Refused while still uploading: the server may answer 413 and close first.
            let _ = e;
            return Ok(Outcome::Closed);
        }
        Err(e) => return Err(format!("transport error: {e:?}")),
    };
    let status = response.status().as_u16();
    let on_ingest =
        input.method == "POST" && (route(&input.path) == EVENTS || route(&input.path) == BATCH);
    if on_ingest && (status == 200 || status == 202) {
        let body = response
            .json::<Value>()
            .await
            .map_err(|e| format!("{status} body: {e}"))?;
        return Ok(Outcome::Answered(status, Some(body)));
    }
    // Other bodies are not needed (and `/analytics/stream` never ends): dropping closes.
    Ok(Outcome::Answered(status, None))
}

async fn send_raw(server: &ServerHandle, raw: &[u8]) -> Result<Outcome, String> {
    let addr = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The server may refuse and close before taking it all; that is fine.
    let _ = stream.write_all(raw).await;
    let _ = stream.shutdown().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
    if read.is_err() {
        return Err("raw request: connection neither answered nor closed within 20 s".into());
    }
    let text = String::from_utf8_lossy(&out);
    let status_line = text.lines().next().unwrap_or_default();
    match status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
    {
        Some(status) if status_line.starts_with("HTTP/1.") => {
            // A damaged head can still make a valid request; its answer is checked like any.
            let body = text
                .split_once("\r\n\r\n")
                .and_then(|(_, body)| serde_json::from_str(body).ok());
            Ok(Outcome::Answered(status, body))
        }
        _ if out.is_empty() => Ok(Outcome::Closed),
        _ => Err(format!(
            "raw request: unreadable answer {:?}",
            &text[..text.len().min(200)]
        )),
    }
}

fn route(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

/// Whether the event's timestamp is within the allowed skew ahead of the clock (a flipped bit
/// in a year can move it centuries ahead: refused with 400).
fn not_in_the_future(event: &Event) -> bool {
    event
        .check_future_skew(chrono::Utc::now(), max_skew())
        .is_ok()
}

fn max_skew() -> Duration {
    pipeline_core::config::Config::defaults().max_future_skew
}

/// What the server should have done, from the validator's own verdict; `None` when the request
/// is not a plain well-formed JSON ingest request (then any 4xx is fine).
fn expected_status(input: &Input) -> Option<Vec<u16>> {
    let well_formed = input.raw.is_none()
        && input.method == "POST"
        && input.body.len() <= MAX_BODY
        && input
            .content_type
            .as_ref()
            .is_some_and(|ct| JSON_TYPES.iter().any(|t| t.as_bytes() == ct.as_slice()))
        && !input
            .headers
            .iter()
            .any(|(n, _)| n == "expect" || n.starts_with("x-many-"));
    if !well_formed {
        return None;
    }
    match route(&input.path) {
        EVENTS => Some(match Event::from_slice(&input.body) {
            Ok(event) if not_in_the_future(&event) => vec![200, 202],
            _ => vec![400],
        }),
        BATCH => Some(match webhook::parse_batch(&input.body, MAX_BATCH) {
            Ok(_) => vec![202],
            Err(e) => vec![e.status().as_u16()],
        }),
        _ => None,
    }
}

/// Checks one answer; returns the number of events it says were queued.
fn check(input: &Input, outcome: &Outcome) -> Result<u64, String> {
    let Outcome::Answered(status, body) = outcome else {
        return Ok(0);
    };
    let status = *status;
    if status >= 500 {
        return Err(format!("server error {status}"));
    }
    if let Some(expected) = expected_status(input) {
        if !expected.contains(&status) {
            return Err(format!("expected {expected:?}, got {status}"));
        }
    }
    if status != 202 {
        return Ok(0);
    }
    let body = body.as_ref().ok_or("202 without a JSON body")?;
    let endpoint = if input.raw.is_none() {
        route(&input.path)
    } else if body.get("results").is_some() {
        BATCH
    } else {
        EVENTS
    };
    match endpoint {
        EVENTS => {
            Event::from_slice(&input.body)
                .map_err(|e| format!("202 for an event that does not validate: {e}"))?;
            Ok(1)
        }
        BATCH => {
            let items = webhook::parse_batch(&input.body, MAX_BATCH)
                .map_err(|e| format!("202 for a batch the parser refuses: {e}"))?;
            let valid = items
                .iter()
                .filter(|i| {
                    i.as_ref()
                        .is_ok_and(|e| e.check_future_skew(chrono::Utc::now(), max_skew()).is_ok())
                })
                .count() as u64;
            let results = &body["results"];
            let accepted = results["accepted"].as_u64().unwrap_or(u64::MAX);
            let duplicates = results["duplicates"].as_u64().unwrap_or(u64::MAX);
            let errors = results["errors"].as_u64().unwrap_or(u64::MAX);
            if accepted.saturating_add(duplicates) != valid
                || errors != items.len() as u64 - valid
                || body["total_events"] != items.len()
            {
                return Err(format!(
                    "batch answer {body} for {valid} valid of {}",
                    items.len()
                ));
            }
            Ok(accepted)
        }
        other => Err(format!("202 from {other}")),
    }
}

/// The `event_id`s a 202/200 answer names, remembered for later duplicates.
fn remember_ids(input: &Input, outcome: &Outcome, ids: &mut Vec<String>) {
    if let Outcome::Answered(202 | 200, Some(body)) = outcome {
        if body.get("event_id").is_some() {
            if let Ok(event) = Event::from_slice(&input.body) {
                ids.push(event.id.as_str().to_string());
            }
        }
    }
}

#[derive(Default)]
struct WorkerReport {
    statuses: BTreeMap<String, usize>,
    queued: u64,
    failures: Vec<String>,
}

async fn worker(server: &ServerHandle, seed: u64, worker: usize) -> WorkerReport {
    let mut rng = StdRng::seed_from_u64(seed ^ (worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut report = WorkerReport::default();
    let mut ids = Vec::new();
    // One client (and so one pool of keep-alive connections) per worker, so an input's
    // connection was last used by the same worker's previous input.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut previous = String::from("none");
    for i in 0..INPUTS_PER_WORKER {
        let input = generate(&mut rng, worker, i, &ids);
        let sent = send(server, &client, &input).await;
        let this = format!(
            "{} {} ({}) -> {:?}",
            input.method,
            &input.path[..input.path.len().min(60)],
            input.what,
            sent.as_ref().map(|o| match o {
                Outcome::Answered(s, _) => s.to_string(),
                Outcome::Closed => "closed".into(),
            })
        );
        let checked = match sent {
            Ok(outcome) => {
                let key = match &outcome {
                    Outcome::Answered(s, _) => s.to_string(),
                    Outcome::Closed => "closed without answer".to_string(),
                };
                *report.statuses.entry(key).or_default() += 1;
                remember_ids(&input, &outcome, &mut ids);
                check(&input, &outcome)
            }
            Err(e) => Err(e),
        };
        match checked {
            Ok(queued) => report.queued += queued,
            Err(problem) => report.failures.push(
                format!(
                "seed {seed:#x} worker {worker} input {i}: {} {} ({}, {} body bytes): {problem}",
                input.method,
                &input.path[..input.path.len().min(80)],
                input.what,
                input.body.len(),
            ) + &format!("\n    after {previous}"),
            ),
        }
        previous = this;
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_random_and_mutated_requests_never_get_a_server_error() {
    let seed = std::env::var("HTTP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let mut config = test_config();
    config.http.max_body_bytes = MAX_BODY;
    config.http.max_batch_events = MAX_BATCH;
    let server = std::sync::Arc::new(ServerHandle::start_with(config).await);

    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let server = server.clone();
        workers.push(tokio::spawn(async move { worker(&server, seed, w).await }));
    }
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut queued = 0;
    let mut failures = Vec::new();
    for w in workers {
        let report = w.await.expect("worker does not panic");
        for (k, v) in report.statuses {
            *statuses.entry(k).or_default() += v;
        }
        queued += report.queued;
        failures.extend(report.failures);
    }
    let total: usize = statuses.values().sum();
    println!(
        "http fuzz: {total} inputs in {:.1?} (seed {seed:#x}), statuses {statuses:?}, {queued} events queued",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(total >= 10_000, "{total} inputs answered");
    assert!(!statuses.keys().any(|s| s.starts_with('5')), "{statuses:?}");

    assert_eq!(server.get("/health").await.status(), 200);
    assert_eq!(
        server.queue_depth().await,
        queued,
        "queue holds exactly the 202s"
    );
    let server = std::sync::Arc::into_inner(server).expect("workers are done");
    server
        .stop()
        .await
        .expect("serve ends cleanly after the barrage");
}

/// The head of each answer on one keep-alive connection, for raw requests.
async fn answer_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert_eq!(n, 1, "connection closed before the answer's head");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// Found by the fuzz loop: hyper closes a connection whose request body was left unread, and a
/// pooling client then sent its next request into the closed connection. The answer must say
/// the connection closes; answers that read the whole body keep the connection.
#[tokio::test]
async fn an_answer_given_before_the_body_is_read_says_the_connection_closes() {
    let server = ServerHandle::start().await;
    let addr = server.base.trim_start_matches("http://").to_string();

    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = common::event("evt_keep_alive").to_string();
    let request = format!(
        "POST /webhook/events HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    for _ in 0..2 {
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = answer_head(&mut stream).await;
        assert!(!head.contains("connection: close"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut rest = vec![0u8; length];
        stream.read_exact(&mut rest).await.unwrap();
    }

    // Refused on its headers while most of the body is still to come.
    for (path, content_type) in [
        ("/webhook/events", "text/plain"),
        ("/no/such/path", "application/json"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: {content_type}\r\n\
             content-length: 100000\r\n\r\n{{\"event_id\":"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = answer_head(&mut stream).await;
        assert!(answer.contains("connection: close"), "{path}: {answer}");
    }
}
