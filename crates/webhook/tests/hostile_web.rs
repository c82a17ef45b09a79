//! What a hostile client can and cannot do to the browser-facing side: many dashboard streams
//! cost one backend read per tick and are capped, `/health` stays fast while they are open,
//! every answer carries the security headers, a foreign `Host` gets 421 when an allowlist is
//! set, and the DLQ listing needs the admin token once one is configured.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use common::{error_body, test_config, ServerHandle};
use pipeline_core::analytics::{Increment, StoredMetrics};
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{
    Backend, BackendOptions, BackendResult, DeadLetter, Delivery, DeliveryMark, Depths,
    DlqSelection, EnqueueOutcome, QueuedEvent, Settlement,
};
use pipeline_core::config::Config;
use pipeline_core::testkit::wait::eventually;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The memory backend, counting `metrics()` calls, optionally behind a small pool of
/// "connections" that every call needs and `metrics()` holds for a while: the shape of a real
/// backend whose reads compete with `/health`'s.
struct Instrumented {
    inner: MemoryBackend,
    metrics_calls: AtomicU64,
    /// Permits every call takes, and how long `metrics()` keeps its permit.
    pool: Option<(Semaphore, Duration)>,
}

impl Instrumented {
    fn counting() -> Arc<Self> {
        Arc::new(Instrumented {
            inner: MemoryBackend::new(BackendOptions::default()),
            metrics_calls: AtomicU64::new(0),
            pool: None,
        })
    }

    fn pooled(connections: usize, metrics_cost: Duration) -> Arc<Self> {
        Arc::new(Instrumented {
            inner: MemoryBackend::new(BackendOptions::default()),
            metrics_calls: AtomicU64::new(0),
            pool: Some((Semaphore::new(connections), metrics_cost)),
        })
    }

    fn metrics_calls(&self) -> u64 {
        self.metrics_calls.load(Ordering::SeqCst)
    }

    async fn connection(&self, hold: bool) {
        if let Some((pool, cost)) = &self.pool {
            let _permit = pool.acquire().await.expect("pool open");
            if hold {
                tokio::time::sleep(*cost).await;
            }
        }
    }
}

#[async_trait]
impl Backend for Instrumented {
    fn name(&self) -> &'static str {
        "instrumented"
    }
    async fn ping(&self) -> BackendResult<()> {
        self.connection(false).await;
        self.inner.ping().await
    }
    async fn enqueue_delivery(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        self.connection(false).await;
        self.inner.enqueue_delivery(events, mark).await
    }
    async fn claim_batch(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        self.inner.claim_batch(consumer, max, wait, cancel).await
    }
    async fn settle(&self, settlements: Vec<Settlement>) -> BackendResult<()> {
        self.inner.settle(settlements).await
    }
    async fn depths(&self) -> BackendResult<Depths> {
        self.connection(false).await;
        self.inner.depths().await
    }
    async fn dlq_list(&self, limit: usize, offset: usize) -> BackendResult<Vec<DeadLetter>> {
        self.connection(false).await;
        self.inner.dlq_list(limit, offset).await
    }
    async fn dlq_replay(&self, which: DlqSelection) -> BackendResult<u64> {
        self.inner.dlq_replay(which).await
    }
    async fn dlq_purge(&self) -> BackendResult<u64> {
        self.inner.dlq_purge().await
    }
    async fn record(&self, increments: Vec<Increment>) -> BackendResult<()> {
        self.connection(false).await;
        self.inner.record(increments).await
    }
    async fn metrics(&self) -> BackendResult<StoredMetrics> {
        self.metrics_calls.fetch_add(1, Ordering::SeqCst);
        self.connection(true).await;
        self.inner.metrics().await
    }

    async fn rollups(
        &self,
        aggregate: &str,
        granularity: pipeline_core::analytics::rollup::Granularity,
        from: i64,
        to: i64,
    ) -> BackendResult<pipeline_core::analytics::rollup::Buckets> {
        self.inner.rollups(aggregate, granularity, from, to).await
    }
}

/// An open `GET /analytics/stream` that has received its first snapshot.
struct Stream {
    /// Held, unread: the stream stays open until this is dropped.
    _response: reqwest::Response,
}

/// Opens a stream on its own connection and waits for the first `snapshot` event; the status
/// when the server refused it.
async fn open_stream(server: &ServerHandle) -> Result<Stream, reqwest::Response> {
    // A client per stream: each stream holds its connection for as long as it is open.
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut response = client
        .get(server.url("/analytics/stream"))
        .send()
        .await
        .unwrap();
    if response.status() != 200 {
        return Err(response);
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("event: snapshot") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, response.chunk())
            .await
            .expect("a first snapshot within 10 s")
            .expect("stream readable")
            .expect("stream not ended");
        seen.extend_from_slice(&chunk);
    }
    Ok(Stream {
        _response: response,
    })
}

async fn open_streams(server: &ServerHandle, n: usize) -> Vec<Stream> {
    let opened = futures_util::future::join_all((0..n).map(|_| open_stream(server))).await;
    opened
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|r| panic!("stream {i} refused: {}", r.status())))
        .collect()
}

#[tokio::test]
async fn many_streams_share_one_backend_read_per_tick_and_none_without_streams() {
    let backend = Instrumented::counting();
    let server = ServerHandle::start_on(test_config(), backend.clone()).await;
    let streams = open_streams(&server, 20).await;

    let before = backend.metrics_calls();
    // A measurement window, not a synchronisation: reads are counted over 3 ticks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reads = backend.metrics_calls() - before;
    assert!(
        reads <= 5,
        "20 streams over 3 s caused {reads} backend reads; one reader reads once a tick"
    );

    // The streams leave: the reader stops once it notices, and reads no more.
    drop(streams);
    let mut last = backend.metrics_calls();
    let mut quiet_since = Instant::now();
    eventually(
        "backend reads to stop with no stream open",
        Duration::from_secs(20),
        || {
            let now = backend.metrics_calls();
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
            let quiet_for = quiet_since.elapsed();
            async move { (quiet_for >= Duration::from_millis(2500)).then_some(()) }
        },
    )
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_beyond_the_limit_gets_429_and_a_slot_frees_when_a_client_leaves() {
    let config = test_config();
    let max = config.http.max_sse_clients;
    assert_eq!(max, 100, "the documented default");
    let server = ServerHandle::start_on(config, Instrumented::counting()).await;
    let mut streams = open_streams(&server, max).await;

    let refused = match open_stream(&server).await {
        Ok(_) => panic!("stream {} was accepted beyond the limit of {max}", max + 1),
        Err(r) => r,
    };
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = error_body(refused).await;
    assert_eq!(body["error"], "too_many_streams");

    // One client leaves: its slot is free again, and only that one.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    let reopened = loop {
        if let Ok(stream) = open_stream(&server).await {
            break stream;
        }
        assert!(
            Instant::now() < deadline,
            "the slot of a closed stream was never freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let again = open_stream(&server).await;
    assert_eq!(again.err().map(|r| r.status().as_u16()), Some(429));
    drop(streams);
    drop(reopened);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn health_stays_200_and_fast_with_the_most_streams_open() {
    // Four backend connections; a figures read holds one for 100 ms. A read per stream per
    // second would need ten times what the pool has, and /health would queue behind them.
    let backend = Instrumented::pooled(4, Duration::from_millis(100));
    let config = test_config();
    let max = config.http.max_sse_clients;
    let server = ServerHandle::start_on(config, backend.clone()).await;
    let streams = open_streams(&server, max).await;

    for i in 0..15 {
        let started = Instant::now();
        let r = server.get("/health").await;
        let took = started.elapsed();
        assert_eq!(r.status(), 200, "health check {i} with {max} streams open");
        assert!(
            took < Duration::from_millis(500),
            "health check {i} took {took:?} with {max} streams open"
        );
        // Spread the checks over a few ticks of the streams.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(streams);
    server.stop().await.unwrap();
}

/// The four headers every answer carries.
fn assert_security_headers(what: &str, r: &reqwest::Response) {
    let h = r.headers();
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
}

/// The source of the `'sha256-…'` CSP entry for `text`.
fn csp_hash(text: &str) -> String {
    let digest = sha2::Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let mut config = test_config();
    config.http.admin_token = Some("t0ken".into());
    let server = ServerHandle::start_with(config).await;

    let page = server.get("/dashboard").await;
    assert_eq!(page.status(), 200);
    assert_security_headers("/dashboard", &page);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let html = page.text().await.unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(!csp.contains("'unsafe-inline'"), "{csp}");
    assert!(!csp.contains('*'), "{csp}");
    // The page's own inline script and style are allowed, by hash.
    let script = html
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .expect("the page has an inline script")
        .0;
    let style = html
        .split_once("<style>")
        .and_then(|(_, rest)| rest.split_once("</style>"))
        .expect("the page has an inline style")
        .0;
    let script_src = csp
        .split(';')
        .find(|d| d.trim().starts_with("script-src"))
        .expect("a script-src");
    assert!(script_src.contains(&csp_hash(script)), "{csp}");
    assert!(csp.contains(&csp_hash(style)), "{csp}");

    for path in ["/health", "/stats", "/analytics", "/no/such/path"] {
        let r = server.get(path).await;
        assert_security_headers(path, &r);
        assert_eq!(
            r.headers()["content-security-policy"],
            "default-src 'none'; frame-ancestors 'none'",
            "{path}"
        );
    }
    let r = server
        .client
        .delete(server.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_security_headers("405", &r);

    // The DLQ shows event contents: never cached, also when refused.
    for token in [None, Some("t0ken")] {
        let mut request = server.client.get(server.url("/dlq"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let r = request.send().await.unwrap();
        assert_security_headers("/dlq", &r);
        assert_eq!(r.headers()["cache-control"], "no-store", "{token:?}");
    }
    let r = server
        .client
        .post(server.url("/dlq/purge"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_security_headers("/dlq/purge", &r);
    assert_eq!(r.headers()["cache-control"], "no-store");
    server.stop().await.unwrap();
}

/// Sends `head` (request line and headers, without the final blank line) on a fresh
/// connection; returns the status and body.
async fn raw_request(server: &ServerHandle, head: &str) -> (u16, String) {
    let address = server.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn allowlisted(hosts: &[&str]) -> Config {
    let mut config = test_config();
    config.http.allowed_hosts = hosts.iter().map(|h| h.to_string()).collect();
    config
}

#[tokio::test]
async fn a_host_not_allowed_gets_421_on_every_endpoint() {
    let server = ServerHandle::start_with(allowlisted(&["dash.example.com"])).await;
    for path in [
        "/health",
        "/dashboard",
        "/analytics",
        "/analytics/stream",
        "/dlq",
    ] {
        for host in ["rebound.attacker.example", "rebound.attacker.example:5015"] {
            let (status, body) =
                raw_request(&server, &format!("GET {path} HTTP/1.1\r\nHost: {host}")).await;
            assert_eq!(status, 421, "{path} with Host {host}");
            let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON error");
            assert_eq!(body["error"], "misdirected_request", "{body}");
        }
    }
    let (status, _) = raw_request(
        &server,
        "POST /webhook/events HTTP/1.1\r\nHost: rebound.attacker.example\r\nContent-Type: application/json\r\nContent-Length: 2",
    )
    .await;
    assert_eq!(status, 421);
    // HTTP/1.0 without a Host header names no host at all.
    let (status, _) = raw_request(&server, "GET /health HTTP/1.0").await;
    assert_eq!(status, 421);

    // Listed names, with any port and case, and the server's own address are answered.
    for host in [
        "dash.example.com",
        "DASH.example.com:5015",
        "127.0.0.1:5015",
    ] {
        let (status, _) =
            raw_request(&server, &format!("GET /health HTTP/1.1\r\nHost: {host}")).await;
        assert_eq!(status, 200, "Host {host}");
    }
    let r = server.get("/health").await;
    assert_eq!(
        r.status(),
        200,
        "the own address, as the orchestrator polls it"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn without_an_allowlist_any_host_is_answered() {
    let server = ServerHandle::start().await;
    let (status, _) = raw_request(&server, "GET /health HTTP/1.1\r\nHost: anything.example").await;
    assert_eq!(status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn dlq_listing_needs_the_admin_token_once_one_is_configured() {
    let mut config = test_config();
    config.http.admin_token = Some("t0ken".into());
    let server = ServerHandle::start_with(config).await;
    for token in [None, Some("wrong"), Some(""), Some("t0ken-and-more")] {
        let mut request = server.client.get(server.url("/dlq?limit=10"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "{token:?}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(error_body(r).await["error"], "unauthorized");
    }
    let r = server
        .client
        .get(server.url("/dlq?limit=10"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page["total"], 0);
    server.stop().await.unwrap();

    // Without a token configured the listing stays open, as it always was.
    let open = ServerHandle::start().await;
    assert_eq!(open.get("/dlq").await.status(), 200);
    open.stop().await.unwrap();
}
