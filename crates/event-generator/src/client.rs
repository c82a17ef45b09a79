//! The HTTP side: one pooled `reqwest` client per run, requests signed when a secret is set,
//! and the reads (`/stats`, `/dlq`) that scenarios and `--verify` check outcomes with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::CONTENT_TYPE;
use reqwest::{StatusCode, Url};

use pipeline_core::stats::PipelineStats;
use standard_webhooks::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};

use crate::signing::Signer;

pub const EVENTS_PATH: &str = "/webhook/events";
pub const BATCH_PATH: &str = "/webhook/batch";
pub const JSON: &str = "application/json";

/// How long the up-front reachability check may take, so a stopped webhook is reported in
/// well under three seconds.
pub const PROBE_CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(2000);
/// Longest any single request may take before it counts as a timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Turns the user's `--url` (or the configured default) into the base URL requests go to.
///
/// `localhost` is replaced by `127.0.0.1`: the webhook listens on IPv4 loopback by default and
/// resolving `localhost` to `::1` first would make every connection fail or wait.
pub fn resolve_base_url(url: &str) -> anyhow::Result<Url> {
    let mut parsed = Url::parse(url).with_context(|| format!("invalid --url {url:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!("invalid --url {url:?}: only http:// and https:// are supported");
    }
    if parsed.host_str().is_none() {
        anyhow::bail!("invalid --url {url:?}: no host");
    }
    if parsed.host_str() == Some("localhost") {
        parsed
            .set_host(Some("127.0.0.1"))
            .with_context(|| format!("invalid --url {url:?}"))?;
    }
    let trimmed = parsed.path().trim_end_matches('/').to_string();
    parsed.set_path(&trimmed);
    Ok(parsed)
}

/// A status and body, read completely so the connection goes back to the pool.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    /// Kept as bytes so that a non-JSON answer can still be shown.
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The body as text for messages, shortened.
    pub fn body_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut short: String = text.chars().take(200).collect();
        if short.len() < text.len() {
            short.push('…');
        }
        short
    }
}

/// A client bound to one webhook. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct WebhookClient {
    /// Pooled keep-alive connections shared by every task of the run.
    http: reqwest::Client,
    /// `scheme://host:port[/prefix]` without a trailing slash.
    base: Url,
    /// Present when requests must carry a Standard Webhooks signature.
    signer: Option<Arc<Signer>>,
    /// Makes `webhook-id`s unique across runs.
    message_nonce: u64,
    /// Makes `webhook-id`s unique within a run.
    message_counter: Arc<AtomicU64>,
    /// Sent as a bearer token on reads, so `GET /dlq` works on a webhook that protects it.
    admin_token: Option<String>,
}

impl WebhookClient {
    /// `pool` is how many idle connections to keep: the number of concurrent senders.
    pub fn new(base: Url, signer: Option<Signer>, pool: usize) -> anyhow::Result<WebhookClient> {
        let http = reqwest::Client::builder()
            // A proxy from the environment must never sit between the generator and a local
            // webhook: it would distort every figure.
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(pool.max(1))
            .connect_timeout(PROBE_CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(WebhookClient {
            http,
            base,
            signer: signer.map(Arc::new),
            message_nonce: rand::random(),
            message_counter: Arc::new(AtomicU64::new(0)),
            admin_token: None,
        })
    }

    /// Reads carry `Authorization: Bearer <token>` (DAY15_ADMIN_TOKEN protects `GET /dlq`).
    pub fn with_admin_token(mut self, token: Option<String>) -> Self {
        self.admin_token = token.filter(|t| !t.is_empty());
        self
    }

    /// The base URL as shown to users: `http://127.0.0.1:5015`, without a trailing slash.
    pub fn base_text(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }

    /// The absolute URL of `path` (which starts with `/` and may carry a `?query`).
    pub fn endpoint(&self, path: &str) -> Url {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let mut url = self.base.clone();
        url.set_path(&format!(
            "{}{}",
            self.base.path().trim_end_matches('/'),
            path
        ));
        url.set_query(query);
        url
    }

    /// A POST of `body`, signed when a secret is set; the caller sends it.
    pub fn post_request(
        &self,
        url: Url,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> reqwest::RequestBuilder {
        let mut request = self.http.post(url).header(CONTENT_TYPE, content_type);
        if let Some(signer) = &self.signer {
            let n = self.message_counter.fetch_add(1, Ordering::Relaxed);
            let id = format!("msg_{:016x}{n:08x}", self.message_nonce);
            let headers = signer.headers(id, &body);
            request = request
                .header(ID_HEADER, headers.id)
                .header(TIMESTAMP_HEADER, headers.timestamp)
                .header(SIGNATURE_HEADER, headers.signature);
        }
        request.body(body)
    }

    /// POSTs `body` to `path` and reads the whole reply.
    pub async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> Result<Reply, reqwest::Error> {
        let response = self
            .post_request(self.endpoint(path), body, content_type)
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?.to_vec();
        Ok(Reply { status, body })
    }

    /// GETs `path` and parses the JSON answer; a non-2xx answer is an error.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let url = self.endpoint(path);
        let mut request = self.http.get(url.clone());
        if let Some(token) = &self.admin_token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {}", describe_error(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("GET {url}: reading the body"))?;
        if !status.is_success() {
            anyhow::bail!(
                "GET {url} answered {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
        }
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: body is not JSON"))
    }

    /// The pipeline-wide counters of `GET /stats`.
    pub async fn stats(&self) -> anyhow::Result<PipelineStats> {
        let value = self.get_json("/stats").await?;
        serde_json::from_value(value).context("GET /stats: unexpected document")
    }

    /// Whether `event_id` is listed by `GET /dlq`, paging through every entry.
    pub async fn dlq_contains(&self, event_id: &str) -> anyhow::Result<bool> {
        const PAGE: usize = 500;
        const MAX_PAGES: usize = 200;
        let mut offset = 0;
        for _ in 0..MAX_PAGES {
            let page = self
                .get_json(&format!("/dlq?limit={PAGE}&offset={offset}"))
                .await?;
            if contains_string(&page, event_id) {
                return Ok(true);
            }
            let listed = first_array_len(&page);
            if listed < PAGE {
                return Ok(false);
            }
            offset += listed;
        }
        Ok(false)
    }

    /// Checks that something answers HTTP at the base URL, quickly.
    pub async fn probe(&self) -> Result<(), Unreachable> {
        let url = self.endpoint("/health");
        let attempt = async {
            let probe = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(PROBE_CONNECT_TIMEOUT)
                .timeout(PROBE_TIMEOUT)
                .build()
                .map_err(|e| describe_error(&e))?;
            // Any HTTP answer, even an error status, means the webhook is there.
            probe
                .get(url.clone())
                .send()
                .await
                .map(drop)
                .map_err(|e| describe_error(&e))
        };
        match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Unreachable {
                url: self.base_text(),
                reason,
            }),
            Err(_) => Err(Unreachable {
                url: self.base_text(),
                reason: format!("no answer within {} ms", PROBE_TIMEOUT.as_millis()),
            }),
        }
    }
}

/// The webhook did not answer at all.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot reach the webhook at {url}: {reason}")]
pub struct Unreachable {
    pub url: String,
    pub reason: String,
}

/// An error with its causes, e.g. `error sending request: … : Connection refused (os error 111)`.
pub fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The kind of a transport failure, for "errors by kind" in load reports.
pub fn error_kind(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else if error.is_body() || error.is_decode() {
        "body"
    } else if error.is_request() {
        "request"
    } else {
        "other"
    }
}

/// Whether any string anywhere in `value` equals `needle`.
fn contains_string(value: &serde_json::Value, needle: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s == needle,
        serde_json::Value::Array(items) => items.iter().any(|v| contains_string(v, needle)),
        serde_json::Value::Object(map) => map.values().any(|v| contains_string(v, needle)),
        _ => false,
    }
}

/// How many entries a list page holds: the page itself if it is an array, else its first
/// array-valued field.
fn first_array_len(value: &serde_json::Value) -> usize {
    match value {
        serde_json::Value::Array(items) => items.len(),
        serde_json::Value::Object(map) => map
            .values()
            .find_map(|v| v.as_array().map(Vec::len))
            .unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_is_pinned_to_ipv4_loopback_and_trailing_slash_dropped() {
        let url = resolve_base_url("http://localhost:5015/").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:5015/");
        let client = WebhookClient::new(url, None, 1).unwrap();
        assert_eq!(
            client.endpoint("/webhook/events").as_str(),
            "http://127.0.0.1:5015/webhook/events"
        );
    }

    #[test]
    fn a_path_prefix_is_kept() {
        let url = resolve_base_url("http://example.test:8080/pipeline/").unwrap();
        let client = WebhookClient::new(url, None, 1).unwrap();
        assert_eq!(
            client.endpoint("/stats").as_str(),
            "http://example.test:8080/pipeline/stats"
        );
        assert_eq!(
            client.endpoint("/dlq?limit=5&offset=10").as_str(),
            "http://example.test:8080/pipeline/dlq?limit=5&offset=10"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        assert!(resolve_base_url("not a url").is_err());
        assert!(resolve_base_url("ftp://host/").is_err());
    }

    #[test]
    fn dlq_pages_are_searched_whatever_their_shape() {
        let page = serde_json::json!({"total": 2, "entries": [
            {"event_id": "evt_1", "event": {"event_id": "evt_1"}},
            {"event_id": "evt_2"}
        ]});
        assert!(contains_string(&page, "evt_2"));
        assert!(!contains_string(&page, "evt_3"));
        assert_eq!(first_array_len(&page), 2);
        assert_eq!(first_array_len(&serde_json::json!([1, 2, 3])), 3);
    }
}

/// The `results` of a `/webhook/batch` answer (missing fields read as 0).
#[derive(Debug, Default, serde::Deserialize)]
pub struct BatchAnswer {
    #[serde(default)]
    pub results: BatchResults,
}

/// How many of a batch's events were accepted, duplicates, or refused.
#[derive(Debug, Default, serde::Deserialize)]
pub struct BatchResults {
    #[serde(default)]
    pub accepted: u64,
    #[serde(default)]
    pub duplicates: u64,
    #[serde(default)]
    pub errors: u64,
}
