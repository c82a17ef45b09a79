//! Accepting connections and keeping each one within its bounds.
//!
//! The webhook is internet-facing, so every connection is bounded by the server, not by the
//! client's good will:
//!
//! - From accept to a complete request head at most the head timeout, silent sockets included
//!   (hyper's own header timeout only starts at the first byte); later heads on a kept-alive
//!   connection are bounded by hyper's timer from their first byte.
//! - A connection with no request in flight is closed once idle for the keep-alive timeout. A
//!   request counts as in flight from its complete head until its answer is written out (the
//!   response body dropped), so long streaming answers are never cut off as idle.
//! - At most `max_connections` at once: beyond it a new connection is closed right after
//!   accept, so the refused client learns at once and the descriptors stay with the clients
//!   being served.
//! - Accept errors (out of file descriptors and the like) back off from 50 ms doubling to 1 s
//!   and are logged at most once a second with a count.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use pipeline_core::config::HttpConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::CONNECTION_LINGER;

/// First pause after a failed accept; doubles with each further failure in a row.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(50);

/// Longest pause after a failed accept.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Shortest interval between two log lines about the same trouble (accept errors, refused
/// connections): a flood of them must not flood the log too.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The bounds every connection is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// From accept to the first complete request head; also hyper's timer for later heads.
    pub head_timeout: Duration,
    /// Idle time with no request in flight after which a connection is closed.
    pub keepalive_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub(crate) fn from_config(http: &HttpConfig) -> Self {
        ConnectionLimits {
            head_timeout: http.request_head_timeout,
            keepalive_timeout: http.keepalive_timeout,
            max_connections: http.max_connections,
        }
    }
}

/// Accepts connections until `stop` resolves, then asks each open connection to finish its
/// request and close, and resolves once all of them did.
///
/// Our own loop rather than `axum::serve`, for what axum does not expose: hyper's header read
/// timeout (a timer on the connection builder), the per-connection deadlines, the connection
/// limit and the accept backoff.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_errors = AcceptErrors::default();
    let mut refusals = Throttled::default();
    let mut stop = std::pin::pin!(stop);
    loop {
        // Losing branches: a pending accept or backoff pause is dropped; the listener closes
        // with this function.
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_errors.succeeded();
                    stream
                }
                Err(e) => {
                    let pause = accept_errors.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => continue,
                        () = &mut stop => break,
                    }
                }
            },
            () = &mut stop => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closed right away: the client sees the end of the connection at once rather
            // than waiting in the backlog for a timeout.
            drop(stream);
            if let Some(more) = refusals.record() {
                tracing::warn!(
                    "Refusing connections: {} open, DAY15_MAX_CONNECTIONS reached{}",
                    limits.max_connections,
                    more_suffix(more)
                );
            }
            continue;
        };
        let builder = builder.clone();
        let app = app.clone();
        let closing = closing.clone();
        connections.spawn(async move {
            serve_connection(builder, stream, app, limits, closing).await;
            drop(slot);
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Drives one connection to its end: the client closes it, a deadline armed while no request
/// is in flight passes, or shutdown (`closing`) lets its last request finish.
async fn serve_connection(
    builder: Builder<TokioExecutor>,
    stream: TcpStream,
    app: Router,
    limits: ConnectionLimits,
    closing: CancellationToken,
) {
    // Responses are small and written at once; do not let Nagle delay them.
    let _ = stream.set_nodelay(true);
    let (activity, mut in_flight) = watch::channel(0usize);
    let service = ConnectionService {
        app,
        activity: Arc::new(activity),
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);
    // Until the first request arrives the head timeout runs from accept; after a request the
    // keep-alive timeout runs from its end; once shutting down, only a short linger.
    let mut idle_limit = limits.head_timeout;
    let mut shutting_down = false;
    loop {
        let idle = *in_flight.borrow_and_update() == 0;
        // Losing branches: the sleep is re-armed on the next turn (a request started or
        // ended, so idleness starts over); `changed` and `cancelled` lose nothing.
        tokio::select! {
            _ = connection.as_mut() => return,
            changed = in_flight.changed() => {
                if changed.is_err() {
                    // Every service clone is gone: hyper is finishing the connection.
                    let _ = connection.await;
                    return;
                }
                if !shutting_down {
                    idle_limit = limits.keepalive_timeout;
                }
            }
            () = tokio::time::sleep(idle_limit), if idle => {
                if shutting_down {
                    return;
                }
                // Idle past its limit: no request is lost by closing it. Told first, so an
                // HTTP/2 client gets its GOAWAY, then given a moment to go.
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
                idle_limit = CONNECTION_LINGER;
            }
            () = closing.cancelled(), if !shutting_down => {
                connection.as_mut().graceful_shutdown();
                shutting_down = true;
                idle_limit = CONNECTION_LINGER;
            }
        }
    }
}

/// The per-connection service: the API, counting each request in flight until its response
/// body is dropped (written out or abandoned).
#[derive(Clone)]
struct ConnectionService {
    app: Router,
    /// Requests in flight on this connection.
    activity: Arc<watch::Sender<usize>>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnectionService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let guard = InFlight::start(self.activity.clone());
        let app = self.app.clone();
        Box::pin(async move {
            let response = app.oneshot(request.map(Body::new)).await?;
            Ok(response.map(|body| {
                Body::new(InFlightBody {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// One request in flight on its connection, until dropped.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn start(activity: Arc<watch::Sender<usize>>) -> Self {
        activity.send_modify(|n| *n += 1);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request in flight while it is being written.
struct InFlightBody {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts events and says when one may be logged: the first at once, then at most one per
/// [`LOG_INTERVAL`], carrying how many were not logged since.
#[derive(Default)]
struct Throttled {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    /// Records one event; `Some(n)` when it is to be logged, `n` being the events not logged
    /// since the last line.
    fn record(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last_logged {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

fn more_suffix(more: u64) -> String {
    if more == 0 {
        String::new()
    } else {
        format!("; {more} more in the last second")
    }
}

/// Accept failures in a row: the backoff and the throttled log line.
#[derive(Default)]
struct AcceptErrors {
    /// Failures since the last successful accept.
    in_a_row: u32,
    log: Throttled,
}

impl AcceptErrors {
    /// Logs the failure if due; returns how long to pause before accepting again.
    fn failed(&mut self, error: &std::io::Error) -> Duration {
        if let Some(more) = self.log.record() {
            tracing::warn!("Cannot accept connections: {error}{}", more_suffix(more));
        }
        let pause = ACCEPT_BACKOFF_FIRST
            .saturating_mul(1 << self.in_a_row.min(16))
            .min(ACCEPT_BACKOFF_MAX);
        self.in_a_row = self.in_a_row.saturating_add(1);
        pause
    }

    /// An accept succeeded: the next failure starts the backoff over.
    fn succeeded(&mut self) {
        self.in_a_row = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_head_timeout_is_the_documented_one() {
        let config = pipeline_core::config::Config::defaults();
        let limits = ConnectionLimits::from_config(&config.http);
        assert_eq!(limits.head_timeout, crate::HEADER_READ_TIMEOUT);
    }

    #[test]
    fn accept_backoff_doubles_to_a_second_and_starts_over_after_a_success() {
        let mut errors = AcceptErrors::default();
        let e = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<u128> = (0..8).map(|_| errors.failed(&e).as_millis()).collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        errors.succeeded();
        assert_eq!(errors.failed(&e), ACCEPT_BACKOFF_FIRST);
    }

    #[test]
    fn a_flood_is_logged_once_with_its_count() {
        let mut log = Throttled::default();
        assert_eq!(log.record(), Some(0));
        assert_eq!((0..5).filter_map(|_| log.record()).count(), 0);
        assert_eq!(log.unlogged, 5);
    }
}
