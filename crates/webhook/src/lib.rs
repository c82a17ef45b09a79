//! The webhook receiver: the HTTP API of docs/api.md on axum.
//!
//! [`serve`] takes its configuration, backend, listener and shutdown token as arguments, so the
//! binary, the orchestrator (in-process with the memory backend) and the tests (port 0) all run
//! the same server. Requirements and the trade-offs chosen:
//!
//! - A 202 means the event is stored: handlers answer only after [`Backend::enqueue`] returned.
//!   Idempotency is the backend's atomic enqueue, never a check-then-set here.
//! - The hot path is one backend round trip. Queue depth for load shedding is read from a
//!   cache refreshed in the background; the webhook's own counters are flushed in the
//!   background (see [`local_metrics`]).
//! - Every backend call is bounded by [`BACKEND_TIMEOUT`]: a dead or hung backend yields a 503
//!   with `Retry-After` within a second, never a hang, and the server recovers by itself.
//! - Every error body is JSON ([`error::ApiError`]); axum's plain-text rejections and bare
//!   statuses are rewritten by one response mapper.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use pipeline_core::backend::{Backend, BackendError, BackendResult};
use pipeline_core::config::Config;
use pipeline_core::logging::{EventLines, SummaryLevel};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::timeout::TimeoutLayer;

mod admin;
mod body;
pub mod cli;
mod coalesce;
pub mod dashboard;
pub mod error;
mod ingest;
pub mod local_metrics;
pub mod openapi;
mod own_metrics;
mod prometheus;
mod read;
mod server;
pub mod signature;
mod web_security;

use error::ApiError;
pub use ingest::{parse_batch, Judged, RefusedEvent};
use local_metrics::LocalMetrics;
use own_metrics::OwnMetrics;
use signature::{SignatureVerifier, WebhookSecret};

/// Longest any backend call may take before the request is answered 503. Below one second so
/// that a 503 arrives within 1 s even with the rest of the request's work (docs/api.md).
pub const BACKEND_TIMEOUT: Duration = Duration::from_millis(800);

/// Longest a whole request may take, body upload included (a slow client gets a 408).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of DAY15_REQUEST_HEAD_TIMEOUT_SECONDS: longest a client may take to send a request
/// head (request line and headers), counted from accept for a connection's first request.
/// Without it a client that connects and sends nothing, or trickles a header forever, holds a
/// task and a socket (slowloris); the request timeout only starts once the head is in.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// On shutdown, how long connections may take to write out the last answers and close once
/// no request is in flight any more; connections still open then are not waited for.
pub const CONNECTION_LINGER: Duration = Duration::from_millis(250);

/// How often the cached queue depth used for load shedding is refreshed from the backend.
pub const DEPTH_REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// After this long without an ingest request the depth refresh rests.
const DEPTH_QUIET_AFTER: Duration = Duration::from_secs(2);
/// A cached depth older than this is read again before an ingest request is judged by it.
const DEPTH_STALE_AFTER: Duration = Duration::from_secs(1);

/// Everything a handler needs, shared by all requests (one `Arc` clone per request).
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

struct Shared {
    /// The validated configuration (limits, tokens, backend name).
    config: Config,
    /// The queue and store shared with the consumers.
    backend: Arc<dyn Backend>,
    /// Present when DAY15_WEBHOOK_SECRET is set: every ingest request must be signed.
    verifier: Option<SignatureVerifier>,
    /// SHA-256 of DAY15_ADMIN_TOKEN; `None` = admin endpoints disabled (403). Comparing
    /// digests in constant time hides the token's length as well as its content.
    admin_token_digest: Option<[u8; 32]>,
    /// Counts not yet flushed to the backend.
    local: LocalMetrics,
    /// This process's own figures (HTTP requests, backend calls, process) for `/metrics`.
    own: OwnMetrics,
    /// Last known queue depth (refreshed in the background, bumped by our own accepts), so
    /// load shedding costs no backend round trip.
    queue_depth: AtomicU64,
    /// When `queue_depth` was last read from the backend (ms since `started`).
    depth_read_at: AtomicI64,
    /// When an ingest request last arrived (ms since `started`): the refresh runs only
    /// around ingest.
    last_ingest_at: AtomicI64,
    /// Wakes the depth refresh out of its quiet wait when ingest resumes.
    ingest_resumed: tokio::sync::Notify,
    /// Gathers concurrent single events into shared enqueue calls; started on first use,
    /// on the runtime that serves the requests.
    singles: std::sync::OnceLock<coalesce::Coalescer>,
    /// The budget of `Event received` / duplicate lines (DAY15_LOG_EVENTS_PER_SECOND).
    received_lines: EventLines,
    /// The budget of `Event rejected` lines, so a flood of bad events cannot flood the log.
    rejected_lines: EventLines,
    /// Unix second of the last capacity warning, so a flood of 429/503 logs once a second.
    last_capacity_warning: AtomicI64,
    /// For `uptime_seconds`.
    started: Instant,
    /// Fired when the server shuts down, so endless responses (the analytics stream) end and
    /// graceful shutdown does not wait on them.
    streams_stop: CancellationToken,
    /// Requests being handled, so shutdown waits for them but not for connections that carry
    /// no request (see [`serve`]).
    requests: TaskTracker,
}

impl AppState {
    /// Builds the state; fails only on an unusable DAY15_WEBHOOK_SECRET.
    pub fn new(config: Config, backend: Arc<dyn Backend>) -> Result<Self, signature::SecretError> {
        let verifier = match config.http.webhook_secret.as_deref() {
            Some(secret) => Some(SignatureVerifier::new(
                WebhookSecret::parse(secret)?,
                config.http.signature_tolerance,
            )),
            None => None,
        };
        let admin_token_digest = config
            .http
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(admin::digest);
        let per_second = config.logging.events_per_second;
        Ok(AppState {
            inner: Arc::new(Shared {
                singles: std::sync::OnceLock::new(),
                received_lines: EventLines::new(per_second, "events received", SummaryLevel::Info),
                rejected_lines: EventLines::new(
                    per_second,
                    "events rejected",
                    SummaryLevel::Warning,
                ),
                config,
                backend,
                verifier,
                admin_token_digest,
                local: LocalMetrics::default(),
                own: OwnMetrics::default(),
                queue_depth: AtomicU64::new(0),
                depth_read_at: AtomicI64::new(0),
                last_ingest_at: AtomicI64::new(0),
                ingest_resumed: tokio::sync::Notify::new(),
                last_capacity_warning: AtomicI64::new(0),
                started: Instant::now(),
                streams_stop: CancellationToken::new(),
                requests: TaskTracker::new(),
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The dispatcher of unsigned single events (see [`coalesce`]).
    fn singles(&self) -> &coalesce::Coalescer {
        self.inner
            .singles
            .get_or_init(|| coalesce::Coalescer::start(self.clone()))
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Resolves once the server is shutting down.
    pub(crate) fn streams_stopped(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.inner.streams_stop.cancelled()
    }

    fn uptime_seconds(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }

    /// Refreshes the cached queue depth from the backend.
    async fn refresh_depth(&self) -> Result<(), ApiError> {
        let depths = self.call("depths", self.backend().depths()).await?;
        self.inner
            .queue_depth
            .store(depths.queue, Ordering::Relaxed);
        self.inner
            .depth_read_at
            .store(self.millis_since_start(), Ordering::Relaxed);
        Ok(())
    }

    /// The queue depth load shedding compares with `DAY15_MAX_QUEUE_DEPTH`: the cached one,
    /// read again first when it is older than [`DEPTH_STALE_AFTER`] (the first request after
    /// a quiet spell, while the background refresh rested). Wakes that refresh.
    pub(crate) async fn depth_for_ingest(&self) -> u64 {
        let now = self.millis_since_start();
        self.inner.last_ingest_at.store(now, Ordering::Relaxed);
        self.inner.ingest_resumed.notify_one();
        let read_at = self.inner.depth_read_at.load(Ordering::Relaxed);
        if now - read_at > DEPTH_STALE_AFTER.as_millis() as i64 {
            // A failure keeps the last value; the enqueue reports an outage itself (503).
            let _ = self.refresh_depth().await;
        }
        self.inner.queue_depth.load(Ordering::Relaxed)
    }

    /// Whether no ingest request arrived for [`DEPTH_QUIET_AFTER`].
    fn ingest_is_quiet(&self) -> bool {
        let last = self.inner.last_ingest_at.load(Ordering::Relaxed);
        self.millis_since_start() - last > DEPTH_QUIET_AFTER.as_millis() as i64
    }

    /// A monotonic clock for the depth cache's timestamps.
    fn millis_since_start(&self) -> i64 {
        self.inner.started.elapsed().as_millis() as i64
    }

    /// Writes unflushed local counts to the backend; on failure they stay local for the next
    /// attempt.
    pub async fn flush(&self) -> Result<(), ApiError> {
        let _guard = self.inner.local.flush_lock.lock().await;
        let counts = self.inner.local.take();
        if counts.is_empty() {
            return Ok(());
        }
        match self
            .call("record", self.backend().record(counts.increments()))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                self.inner.local.restore(&counts);
                Err(e)
            }
        }
    }

    /// Logs a 429/503 at most once a second: under overload a line per request would only
    /// add to the load.
    fn warn_capacity(&self, error: &ApiError) {
        let now = chrono::Utc::now().timestamp();
        let last = self.inner.last_capacity_warning.load(Ordering::Relaxed);
        if now != last
            && self
                .inner
                .last_capacity_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!("Refusing requests ({}): {error}", error.status().as_u16());
        }
    }
}

impl AppState {
    /// [`backend_call`], timed and counted under `operation` in this process's figures
    /// (`day15_backend_call_duration_seconds`, `day15_backend_errors_total`,
    /// `day15_backend_up`).
    pub(crate) async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = BackendResult<T>>,
    ) -> Result<T, ApiError> {
        let started = Instant::now();
        let result = backend_call(call).await;
        self.inner
            .own
            .record_backend_call(operation, started.elapsed(), result.is_ok());
        result
    }
}

/// Runs one backend call under [`BACKEND_TIMEOUT`]; failures and timeouts become a 503.
pub(crate) async fn backend_call<T>(
    call: impl Future<Output = BackendResult<T>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(BACKEND_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(ApiError::backend(e)),
        Err(_) => Err(ApiError::backend(BackendError::Unavailable(format!(
            "no answer within {} ms",
            BACKEND_TIMEOUT.as_millis()
        )))),
    }
}

/// The whole HTTP API on `state`.
pub fn router(state: AppState) -> Router {
    let streams = dashboard::StreamHub::new(state.config().http.max_sse_clients);
    let allowed_hosts = web_security::AllowedHosts::from_config(state.config());
    let app = Router::new()
        .route("/webhook/events", post(ingest::post_event))
        .route("/webhook/batch", post(ingest::post_batch))
        .route("/health", get(read::health))
        .route("/stats", get(read::stats))
        .route("/metrics", get(read::metrics))
        .route("/analytics", get(read::analytics))
        .route("/analytics/timeseries", get(read::timeseries))
        .route("/dlq", get(read::dlq_list))
        .route("/dlq/replay", post(admin::replay))
        .route("/dlq/purge", post(admin::purge))
        .route("/analytics/stream", get(dashboard::stream))
        .route("/dashboard", get(dashboard::page))
        .route("/openapi.json", get(openapi::spec))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(streams))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Outermost, so it also sees the timeout's bare 408.
        .layer(axum::middleware::map_response(json_errors));
    // Before any handler, inside the body check so a refused POST's connection is closed.
    let app = match allowed_hosts {
        Some(allowed) => app.layer(axum::middleware::from_fn_with_state(
            allowed,
            web_security::allowed_hosts,
        )),
        None => app,
    };
    app
        // Sees every answer, routing errors included.
        .layer(axum::middleware::from_fn(body::close_when_body_unread))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            track_request,
        ))
        // Outermost: every answer, whoever made it, carries the headers.
        .layer(axum::middleware::from_fn(web_security::security_headers))
        .with_state(state)
}

/// Middleware: counts the request as in flight until its answer is ready, then counts it by
/// route template (`other` when none matched, so 404 paths never become label values) and
/// status in this process's figures.
async fn track_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let response = state.inner.requests.track_future(next.run(request)).await;
    state.inner.own.record_request(
        route.as_deref().unwrap_or(own_metrics::OTHER_ROUTE),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(format!("no endpoint at {}", request.uri().path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Rewrites any error response that is not JSON (axum rejections, tower-http limits) into our
/// JSON error for the same status.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        response
    } else {
        ApiError::from_status(status).into_response()
    }
}

/// Serves the API on `listener` until `shutdown` fires, then stops accepting, finishes the
/// requests in flight, flushes the local counters and returns.
pub async fn serve(
    config: Config,
    backend: Arc<dyn Backend>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = AppState::new(config, backend).context("invalid webhook configuration")?;
    let address = listener
        .local_addr()
        .context("cannot read the listen address")?;
    announce(&state, address);

    // Background tasks outlive the HTTP server by design: they stop only after the last
    // in-flight request finished, so its counts are flushed.
    let background = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(refresh_depth_loop(state.clone(), background.clone()));
    tasks.spawn(flush_loop(state.clone(), background.clone()));
    tasks.close();

    let streams_stop = state.inner.streams_stop.clone();
    let shutdown_requested = shutdown.clone();
    let stopping = async move {
        shutdown.cancelled().await;
        streams_stop.cancel();
    };
    let limits = server::ConnectionLimits::from_config(&state.config().http);
    let mut graceful = std::pin::pin!(server::accept_loop(
        listener,
        router(state.clone()),
        limits,
        stopping,
    ));
    // Graceful shutdown alone waits for every open connection, also one that never sent a
    // whole request (pre-opened by a client, or stalled mid-head), which can be forever.
    // Requests in flight are waited for (each is bounded by REQUEST_TIMEOUT, and the analytics
    // stream ends on `streams_stop`); connections without a request are not.
    let requests_done = async {
        shutdown_requested.cancelled().await;
        state.inner.requests.close();
        state.inner.requests.wait().await;
    };
    let served = tokio::select! {
        // Every connection closed: the usual end. `requests_done` is simply dropped.
        served = &mut graceful => served,
        // Every request has its answer: connections get a moment to write it out and close;
        // then the serve future is dropped (the listener closes), and connections still open
        // end when their clients leave or the process exits.
        () = requests_done => tokio::time::timeout(CONNECTION_LINGER, graceful)
            .await
            .unwrap_or(Ok(())),
    };

    background.cancel();
    tasks.wait().await;
    if let Err(e) = state.flush().await {
        tracing::warn!("Could not write the last counters to the backend: {e}");
    }
    tracing::info!("Webhook receiver stopped");
    served.context("HTTP server failed")
}

fn announce(state: &AppState, address: SocketAddr) {
    let config = state.config();
    tracing::info!(
        "Webhook receiver listening on http://{address} (backend: {}, signatures: {}, admin endpoints: {})",
        state.backend().name(),
        if state.inner.verifier.is_some() { "required" } else { "off" },
        if state.inner.admin_token_digest.is_some() { "on" } else { "off" },
    );
    if !address.ip().is_loopback() && config.http.webhook_secret.is_none() {
        tracing::warn!(
            "Listening on {address}, beyond loopback, without DAY15_WEBHOOK_SECRET: anyone who can reach this port can submit events"
        );
    }
}

/// Refreshes the cached depth every [`DEPTH_REFRESH_INTERVAL`] while events arrive, and rests
/// once none did for [`DEPTH_QUIET_AFTER`] (a webhook at rest reads nothing), until the next
/// ingest request wakes it.
async fn refresh_depth_loop(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(DEPTH_REFRESH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // On stop the pending tick or wait is dropped; nothing is lost.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A failure keeps the last value; ingest reports the outage itself (503).
        let _ = state.refresh_depth().await;
        if state.ingest_is_quiet() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = state.inner.ingest_resumed.notified() => {}
            }
        }
    }
}

/// Writes the local counts every [`local_metrics::FLUSH_INTERVAL`] while there are any, and
/// rests while nothing is counted (a webhook at rest writes nothing), until the next count.
async fn flush_loop(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(local_metrics::FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        // On stop the pending tick or wait is dropped; `serve` flushes once more after the
        // server ends.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if state.inner.local.nothing_pending() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = state.inner.local.counted.notified() => {}
            }
            // Let the first interval's counts gather before writing them.
            tick.reset();
            continue;
        }
        match state.flush().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("Counters are written to the backend again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("Cannot write counters to the backend, keeping them: {e}");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[tokio::test]
    async fn bare_error_statuses_become_json_errors() {
        for status in [
            StatusCode::REQUEST_TIMEOUT,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNPROCESSABLE_ENTITY,
        ] {
            let bare = Response::builder()
                .status(status)
                .body(Body::from("plain text"))
                .unwrap();
            let mapped = json_errors(bare).await;
            assert_eq!(mapped.status(), status);
            assert_eq!(mapped.headers()[header::CONTENT_TYPE], "application/json");
            let bytes = axum::body::to_bytes(mapped.into_body(), 4096)
                .await
                .unwrap();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(
                body["error"].is_string() && body["message"].is_string(),
                "{body}"
            );
        }
        let ok = Response::new(Body::from("fine"));
        assert_eq!(json_errors(ok).await.status(), StatusCode::OK);
    }
}
