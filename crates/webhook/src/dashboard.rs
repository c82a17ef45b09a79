//! `GET /dashboard` and `GET /analytics/stream` (docs/api.md).
//!
//! The page is self-contained on purpose (no CDN; the machine may be offline): it is compiled
//! into the binary and reads this same server. The stream pushes a fresh snapshot at most once
//! a second, only when something changed, so an idle dashboard costs one backend read a second
//! and no traffic.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use futures_util::stream::{self, Stream};
use pipeline_core::analytics::{AnalyticsSnapshot, StoredMetrics};
use pipeline_core::backend::Depths;
use pipeline_core::stats::PipelineStats;
use serde::Serialize;

use crate::AppState;

/// The page, embedded at build time.
const PAGE: &str = include_str!("../assets/dashboard.html");

/// Shortest time between two snapshots on one stream.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// One `snapshot` event of the stream.
#[derive(Serialize)]
struct Snapshot {
    analytics: AnalyticsSnapshot,
    stats: PipelineStats,
}

/// What the stream remembers between ticks.
struct StreamState {
    app: AppState,
    /// What was last sent; an unchanged reading sends nothing.
    last: Option<(StoredMetrics, Depths)>,
    /// False until the first tick, which is sent at once.
    started: bool,
}

/// `GET /analytics/stream`: Server-Sent Events named `snapshot` with
/// `{"analytics": …, "stats": …}`; one on connect, then at most once a second while something
/// changed. Ends when the server shuts down, so graceful shutdown never waits on a dashboard.
pub(crate) async fn stream(
    State(app): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let initial = StreamState {
        app,
        last: None,
        started: false,
    };
    let events = stream::unfold(initial, |mut st| async move {
        loop {
            if st.started {
                // Losing branch: the sleep is dropped; nothing is pending on it.
                tokio::select! {
                    _ = st.app.streams_stopped() => return None,
                    _ = tokio::time::sleep(STREAM_INTERVAL) => {}
                }
            }
            st.started = true;
            // A backend hiccup skips this tick; the dashboard keeps its last figures.
            let Ok(reading) = st.app.pipeline_figures().await else {
                continue;
            };
            if st.last.as_ref() == Some(&reading) {
                continue;
            }
            let (metrics, depths) = &reading;
            let snapshot = Snapshot {
                analytics: AnalyticsSnapshot::from_metrics(metrics, chrono::Utc::now()),
                stats: PipelineStats::from_metrics(st.app.backend().name(), metrics, *depths),
            };
            st.last = Some(reading);
            let event = Event::default()
                .event("snapshot")
                .json_data(&snapshot)
                .unwrap_or_else(|_| Event::default().comment("unserialisable snapshot"));
            return Some((Ok(event), st));
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
