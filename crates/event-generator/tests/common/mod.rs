//! A small fake webhook implementing just enough of the webhook API to exercise the generator, and a
//! helper that runs the built `event-generator` binary against it.
//!
//! The fake "processes" every accepted event at once (unless told not to), honours
//! `metadata.simulate_failure` when fault injection is on, and checks Standard Webhooks
//! signatures with the `standard-webhooks` crate when it has a secret.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use standard_webhooks::{Headers, Secret};
use tokio_util::sync::CancellationToken;

use pipeline_core::event::Event;
use pipeline_core::stats::PipelineStats;

/// How the fake behaves.
#[derive(Clone)]
pub struct FakeOptions {
    /// Count accepted events as processed at once (a working pipeline).
    pub count_processed: bool,
    /// Honour `metadata.simulate_failure` like consumers with DAY15_FAULT_INJECTION=true.
    pub fault_injection: bool,
    /// Remember event ids and answer repeats with 200 duplicate_event.
    pub dedupe: bool,
    /// Status answered to an invalid event (a broken webhook answers 500).
    pub invalid_status: StatusCode,
    /// HMAC key; when set, every POST must be signed with it.
    pub secret_key: Option<Vec<u8>>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            count_processed: true,
            fault_injection: true,
            dedupe: true,
            invalid_status: StatusCode::BAD_REQUEST,
            secret_key: None,
        }
    }
}

/// What the fake has seen, for assertions.
#[derive(Default)]
pub struct Observed {
    pub signatures_verified: AtomicU64,
    pub signatures_rejected: AtomicU64,
    pub posts: AtomicU64,
}

struct FakeState {
    options: FakeOptions,
    /// No `.await` happens under these locks.
    seen: Mutex<HashSet<String>>,
    stats: Mutex<PipelineStats>,
    dlq: Mutex<Vec<Value>>,
    observed: Arc<Observed>,
}

/// A running fake; stops when dropped.
pub struct FakeWebhook {
    pub url: String,
    pub observed: Arc<Observed>,
    stop: CancellationToken,
}

impl Drop for FakeWebhook {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeWebhook {
    pub async fn start(options: FakeOptions) -> FakeWebhook {
        let observed = Arc::new(Observed::default());
        let state = Arc::new(FakeState {
            options,
            seen: Mutex::default(),
            stats: Mutex::new(PipelineStats {
                backend: "fake".into(),
                ..PipelineStats::default()
            }),
            dlq: Mutex::default(),
            observed: observed.clone(),
        });
        let app = Router::new()
            .route(
                "/health",
                get(|| async { Json(json!({"status": "healthy"})) }),
            )
            .route("/stats", get(stats))
            .route("/dlq", get(dlq))
            .route("/webhook/events", post(events))
            .route("/webhook/batch", post(batch))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .unwrap();
        });
        FakeWebhook {
            url: format!("http://{addr}"),
            observed,
            stop,
        }
    }
}

fn error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({"error": code, "message": code}))).into_response()
}

/// Standard Webhooks check of a request, with the webhook's default tolerance of 300 s.
fn signature_ok(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let Ok(secret) = Secret::from_bytes(key) else {
        return false;
    };
    let received = Headers::from_fn(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    secret
        .verify(received, body, now, Duration::from_secs(300))
        .is_ok()
}

/// Signature and content-type gates shared by both POST endpoints.
fn gate(state: &FakeState, headers: &HeaderMap, body: &[u8]) -> Option<Response> {
    state.observed.posts.fetch_add(1, Ordering::Relaxed);
    if let Some(key) = &state.options.secret_key {
        if signature_ok(key, headers, body) {
            state
                .observed
                .signatures_verified
                .fetch_add(1, Ordering::Relaxed);
        } else {
            state
                .observed
                .signatures_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Some(error(StatusCode::UNAUTHORIZED, "invalid_signature"));
        }
    }
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (!json).then(|| error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"))
}

enum Judged {
    Accepted,
    Duplicate,
    Invalid(String),
}

/// Validates, dedupes and "processes" one event.
fn judge(state: &FakeState, value: Value) -> (Judged, String) {
    let event = match Event::from_value(value) {
        Ok(e) => e,
        Err(e) => return (Judged::Invalid(e.summary()), String::new()),
    };
    let id = event.id.to_string();
    let mut stats = state.stats.lock().unwrap();
    stats.received += 1;
    if state.options.dedupe && !state.seen.lock().unwrap().insert(id.clone()) {
        stats.duplicates += 1;
        return (Judged::Duplicate, id);
    }
    stats.accepted += 1;
    if state.options.count_processed {
        let simulate = event
            .metadata()
            .and_then(|m| m.get("simulate_failure"))
            .and_then(Value::as_str)
            .filter(|_| state.options.fault_injection);
        match simulate {
            Some("permanent") => {
                stats.failed += 4;
                stats.retried += 3;
                stats.dead_lettered += 1;
                stats.dlq_depth += 1;
                state.dlq.lock().unwrap().push(json!({
                    "event_id": id, "event": event.body, "failure_reason": "max_retries_exceeded",
                    "error": "simulated permanent failure", "attempts": 4
                }));
            }
            Some(s) if s.starts_with("transient:") => {
                let n: u64 = s["transient:".len()..].parse().unwrap_or(0);
                stats.failed += n;
                stats.retried += n;
                stats.processed += 1;
            }
            _ => stats.processed += 1,
        }
    }
    (Judged::Accepted, id)
}

async fn events(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = gate(&state, &headers, &body) {
        return refused;
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error(state.options.invalid_status, "invalid_json"),
    };
    match judge(&state, value) {
        (Judged::Accepted, id) => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "accepted", "event_id": id})),
        )
            .into_response(),
        (Judged::Duplicate, id) => (
            StatusCode::OK,
            Json(json!({"status": "ignored", "reason": "duplicate_event", "event_id": id})),
        )
            .into_response(),
        (Judged::Invalid(_), _) => error(state.options.invalid_status, "validation_failed"),
    }
}

async fn batch(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = gate(&state, &headers, &body) {
        return refused;
    }
    let events = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut o)) => match o.remove("events") {
            Some(Value::Array(events)) if !events.is_empty() => events,
            _ => return error(state.options.invalid_status, "validation_failed"),
        },
        _ => return error(state.options.invalid_status, "invalid_json"),
    };
    let total = events.len();
    let (mut accepted, mut duplicates, mut errors) = (0, 0, 0);
    for event in events {
        match judge(&state, event).0 {
            Judged::Accepted => accepted += 1,
            Judged::Duplicate => duplicates += 1,
            Judged::Invalid(_) => errors += 1,
        }
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "processed", "total_events": total,
            "results": {"accepted": accepted, "duplicates": duplicates, "errors": errors}})),
    )
        .into_response()
}

async fn stats(State(state): State<Arc<FakeState>>) -> Json<PipelineStats> {
    Json(state.stats.lock().unwrap().clone())
}

#[derive(serde::Deserialize)]
struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
}

async fn dlq(State(state): State<Arc<FakeState>>, Query(page): Query<Page>) -> Json<Value> {
    let all = state.dlq.lock().unwrap();
    let entries: Vec<Value> = all
        .iter()
        .skip(page.offset.unwrap_or(0))
        .take(page.limit.unwrap_or(100))
        .cloned()
        .collect();
    Json(json!({"total": all.len(), "entries": entries}))
}

/// What one run of the binary produced.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `event-generator` with `args`, isolated from the caller's DAY15_* settings and
/// `config/.env`, plus `env`.
pub async fn run_generator(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_event-generator"));
    command
        .args(args)
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .kill_on_drop(true);
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("DAY15_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("event-generator finished within 2 minutes")
        .expect("event-generator ran");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}
