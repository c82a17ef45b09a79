//! `GET /dashboard`: an HTML page of the analytics (SPEC §8).
//!
//! Self-contained on purpose (no CDN; the machine may be offline): the page is compiled into
//! the binary and reads the JSON endpoints of this same server.

use axum::response::Html;

/// The page, embedded at build time.
const PAGE: &str = include_str!("dashboard.html");

pub(crate) async fn page() -> Html<&'static str> {
    Html(PAGE)
}
