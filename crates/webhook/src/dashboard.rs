//! `GET /dashboard` and `GET /analytics/stream` (docs/api.md).
//!
//! The page is self-contained on purpose (no CDN; the machine may be offline): it is compiled
//! into the binary and reads this same server. Its inline script and style are allowed by
//! their hashes in the page's Content-Security-Policy (see [`crate::web_security`]).
//!
//! Streams are cheap per client by design: one [`StreamHub`] reads the figures once a tick for
//! every open stream and publishes the snapshot into a `watch` channel, which each stream only
//! awaits. The reader runs only while a stream is open, so an idle webhook does no reads, and
//! N dashboards cost the backend what one does. At most `DAY15_MAX_SSE_CLIENTS` streams are
//! open at once (429 beyond), so streams cannot take the webhook's memory; `/health` and the
//! other endpoints share nothing with them but the runtime.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use futures_util::stream;
use pipeline_core::analytics::{AnalyticsSnapshot, StoredMetrics};
use pipeline_core::backend::Depths;
use pipeline_core::stats::PipelineStats;
use serde::Serialize;
use tokio::sync::watch;

use crate::error::RETRY_AFTER_SECONDS;
use crate::AppState;

/// The page, embedded at build time.
pub(crate) const PAGE: &str = include_str!("../assets/dashboard.html");

/// Shortest time between two snapshots on one stream; also how often the figures are read
/// while a stream is open.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

#[utoipa::path(
    get,
    path = "/dashboard",
    responses((status = 200, description = "the dashboard page", body = String, content_type = "text/html"))
)]
pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// One `snapshot` event of the stream.
#[derive(Serialize)]
struct Snapshot {
    analytics: AnalyticsSnapshot,
    stats: PipelineStats,
}

/// The one reader of the figures for every open stream, and the count of open streams.
pub(crate) struct StreamHub {
    /// Most streams open at once (DAY15_MAX_SSE_CLIENTS).
    max_clients: usize,
    /// The newest snapshot event; `None` until the reader's first reading, so a stream never
    /// shows figures from before it was opened by more than one tick.
    latest: watch::Sender<Option<Event>>,
    /// A `std` mutex: held for a few instructions, never across an `.await`.
    clients: Mutex<Clients>,
}

/// Guarded together so that the reader's "no stream left, stop" and a new stream's "start a
/// reader if none runs" cannot interleave.
#[derive(Default)]
struct Clients {
    /// Streams open now.
    open: usize,
    /// Whether the reader task runs.
    reader_running: bool,
}

/// A stream's place in the count; frees it when the stream is dropped (client gone, server
/// stopping), whichever way that happens.
struct StreamSlot {
    hub: Arc<StreamHub>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut clients = self.hub.clients();
        clients.open = clients.open.saturating_sub(1);
    }
}

impl StreamHub {
    pub(crate) fn new(max_clients: usize) -> Arc<Self> {
        Arc::new(StreamHub {
            max_clients,
            latest: watch::Sender::new(None),
            clients: Mutex::new(Clients::default()),
        })
    }

    fn clients(&self) -> MutexGuard<'_, Clients> {
        // Nothing under the lock can panic halfway through an update, so a poisoned lock
        // still holds consistent counts.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a new stream, starting the reader if none runs; `None` when every
    /// slot is taken.
    fn join(
        self: &Arc<Self>,
        app: &AppState,
    ) -> Option<(StreamSlot, watch::Receiver<Option<Event>>)> {
        let mut clients = self.clients();
        if clients.open >= self.max_clients {
            return None;
        }
        clients.open += 1;
        if !clients.reader_running {
            clients.reader_running = true;
            // What the last reader published may be old; the new one reads at once.
            self.latest.send_replace(None);
            tokio::spawn(read_loop(self.clone(), app.clone()));
        }
        let mut receiver = self.latest.subscribe();
        // The current snapshot, if any, is the stream's first event.
        receiver.mark_changed();
        Some((StreamSlot { hub: self.clone() }, receiver))
    }
}

/// The reader: once a tick while a stream is open, reads the figures and publishes them when
/// they changed. Ends when the last stream is gone or the server stops.
async fn read_loop(hub: Arc<StreamHub>, app: AppState) {
    let mut tick = tokio::time::interval(STREAM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<(StoredMetrics, Depths)> = None;
    loop {
        // Losing branch: the pending tick is dropped; nothing waits on it.
        let stopping = tokio::select! {
            _ = app.streams_stopped() => true,
            _ = tick.tick() => false,
        };
        {
            let mut clients = hub.clients();
            if stopping || clients.open == 0 {
                clients.reader_running = false;
                return;
            }
        }
        // A backend hiccup skips this tick; the dashboards keep their last figures.
        let Ok(reading) = app.pipeline_figures().await else {
            continue;
        };
        if last.as_ref() == Some(&reading) {
            continue;
        }
        let (metrics, depths) = &reading;
        let snapshot = Snapshot {
            analytics: AnalyticsSnapshot::from_metrics(metrics, chrono::Utc::now()),
            stats: PipelineStats::from_metrics(app.backend().name(), metrics, *depths),
        };
        let event = Event::default()
            .event("snapshot")
            .json_data(&snapshot)
            .unwrap_or_else(|_| Event::default().comment("unserialisable snapshot"));
        hub.latest.send_replace(Some(event));
        last = Some(reading);
    }
}

/// What one stream holds between events.
struct StreamState {
    app: AppState,
    snapshots: watch::Receiver<Option<Event>>,
    /// Dropped with the stream, which frees the slot.
    _slot: StreamSlot,
}

/// The 429 for a stream beyond DAY15_MAX_SSE_CLIENTS.
fn too_many_streams(max: usize) -> Response {
    let body = serde_json::json!({
        "error": "too_many_streams",
        "message": format!(
            "{max} analytics streams are open, the most allowed (DAY15_MAX_SSE_CLIENTS); retry later or poll /analytics and /stats"
        ),
    });
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

/// `GET /analytics/stream`: Server-Sent Events named `snapshot` with
/// `{"analytics": …, "stats": …}`; one on connect, then at most once a second while something
/// changed. Ends when the server shuts down, so graceful shutdown never waits on a dashboard.
/// 429 with `Retry-After` while DAY15_MAX_SSE_CLIENTS streams are open.
#[utoipa::path(
    get,
    path = "/analytics/stream",
    responses(
        (status = 200, description = "Server-Sent Events named `snapshot`", body = String, content_type = "text/event-stream"),
        (status = 429, description = "`too_many_streams`", body = crate::error::ErrorBody, headers(("Retry-After" = u64))),
    )
)]
pub(crate) async fn stream(
    State(app): State<AppState>,
    Extension(hub): Extension<Arc<StreamHub>>,
) -> Response {
    let Some((slot, snapshots)) = hub.join(&app) else {
        return too_many_streams(hub.max_clients);
    };
    let initial = StreamState {
        app,
        snapshots,
        _slot: slot,
    };
    let events = stream::unfold(initial, |mut st| async move {
        loop {
            // Losing branch: the pending `changed` is dropped; the next call sees any change.
            tokio::select! {
                _ = st.app.streams_stopped() => return None,
                changed = st.snapshots.changed() => changed.ok()?,
            }
            let current = st.snapshots.borrow_and_update().clone();
            if let Some(event) = current {
                return Some((Ok::<_, Infallible>(event), st));
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
