//! A server that answers 202 to every request and does nothing else: the yardstick for the
//! load generator's own ceiling.
//!
//! ```text
//! cargo run --release --example trivial_server -- 5099 &
//! event-generator load --url http://127.0.0.1:5099 --rate 0 --duration 10 --concurrency 32
//! ```

use axum::http::StatusCode;
use axum::Router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse()?,
        None => 5099,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("trivial server on http://{}", listener.local_addr()?);
    let app = Router::new().fallback(|| async { StatusCode::ACCEPTED });
    axum::serve(listener, app).await?;
    Ok(())
}
