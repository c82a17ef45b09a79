//! What protects browsers from this server being used against them: security headers on
//! every answer, and the `Host` allowlist.
//!
//! - Every answer carries `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`,
//!   `Referrer-Policy: no-referrer` and a Content-Security-Policy. The dashboard page's policy
//!   allows its own inline script and style by their SHA-256 hashes (computed from the page at
//!   first use, so they cannot go stale), everything else only from this origin, and no
//!   framing; every other answer gets `default-src 'none'`. The DLQ and admin answers, which
//!   carry event contents, also get `Cache-Control: no-store`.
//! - With `DAY15_ALLOWED_HOSTS` set, a request whose `Host` (port aside) is neither listed nor
//!   the webhook's own address is answered 421, so a page on another site whose name was
//!   rebound to this machine (DNS rebinding) cannot read the dashboard or the API. The own
//!   address (the one the orchestrator and the event generator use) cannot be rebound: a
//!   browser only sends it when its user typed it.

use std::sync::{Arc, LazyLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use pipeline_core::config::Config;
use sha2::{Digest, Sha256};

/// The policy of every answer but the dashboard page: nothing may load, nothing may frame it.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The policy of the dashboard page (see [`page_csp`]), built once. A page the policy cannot
/// be written for (never the embedded one: a test checks it) gets [`API_CSP`], which fails
/// closed.
pub static PAGE_CSP: LazyLock<HeaderValue> = LazyLock::new(|| {
    HeaderValue::from_str(&page_csp(crate::dashboard::PAGE))
        .unwrap_or(HeaderValue::from_static(API_CSP))
});

/// The dashboard's policy: its inline `<script>` and `<style>` blocks and `style` attributes
/// allowed by hash, fetches and the stream to this origin only, no plugins, no framing, no
/// form posts, no `<base>` redirection. The favicon is a `data:` URL.
pub fn page_csp(page: &str) -> String {
    let scripts = hashes(blocks(page, "<script>", "</script>"));
    let styles = hashes(blocks(page, "<style>", "</style>"));
    let style_attributes = hashes(style_attributes(page));
    let mut style_src = format!("style-src 'self' {styles}");
    if !style_attributes.is_empty() {
        style_src.push_str(&format!(" 'unsafe-hashes' {style_attributes}"));
    }
    format!(
        "default-src 'self'; script-src 'self' {scripts}; {style_src}; img-src 'self' data:; \
         object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The text between each `open` and the next `close`.
fn blocks<'a>(page: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    let mut found = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

/// The values of `style="…"` attributes in the markup (outside the scripts, which build
/// elements through the DOM and are not subject to it).
fn style_attributes(page: &str) -> Vec<&str> {
    let mut markup = page;
    let mut found = Vec::new();
    loop {
        let (before, after) = match markup.split_once("<script>") {
            Some((before, after)) => (before, Some(after)),
            None => (markup, None),
        };
        found.extend(blocks(before, "style=\"", "\""));
        let Some(after) = after else { break };
        match after.split_once("</script>") {
            Some((_, rest)) => markup = rest,
            None => break,
        }
    }
    found.sort_unstable();
    found.dedup();
    found
}

/// `'sha256-…'` sources for `texts`, space-separated.
fn hashes(texts: Vec<&str>) -> String {
    texts
        .into_iter()
        .map(|text| {
            format!(
                "'sha256-{}'",
                BASE64.encode(Sha256::digest(text.as_bytes()))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Middleware: the security headers on every answer, whoever produced it.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let sensitive = request.uri().path().starts_with("/dlq");
    let mut response = next.run(request).await;
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let headers = response.headers_mut();
    let csp = if is_html {
        PAGE_CSP.clone()
    } else {
        HeaderValue::from_static(API_CSP)
    };
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if sensitive {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The host names a request may address, or none for "any".
#[derive(Debug)]
pub(crate) struct AllowedHosts {
    /// Normalised as [`normalise_host`] does; the configured list plus the own address.
    names: Vec<String>,
}

impl AllowedHosts {
    /// `None` when DAY15_ALLOWED_HOSTS is empty: every host is answered.
    pub(crate) fn from_config(config: &Config) -> Option<Arc<Self>> {
        if config.http.allowed_hosts.is_empty() {
            return None;
        }
        let mut names = config.http.allowed_hosts.clone();
        let own = config.webhook_url();
        let own_host = own
            .strip_prefix("http://")
            .and_then(|rest| rest.parse::<axum::http::uri::Authority>().ok())
            .map(|authority| normalise_host(authority.host()));
        names.extend(own_host);
        Some(Arc::new(AllowedHosts { names }))
    }

    fn allows(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.names.contains(&host)
    }
}

/// Lowercase, without IPv6 brackets or a trailing dot, as the configured names are stored.
fn normalise_host(host: &str) -> String {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.trim_end_matches('.').to_ascii_lowercase()
}

/// The host a request addresses, port aside: the URI's authority (HTTP/2, absolute-form) or
/// else the `Host` header.
fn requested_host(request: &Request) -> Option<String> {
    if let Some(host) = request.uri().host() {
        return Some(host.to_string());
    }
    host_header(request.headers())
}

fn host_header(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::HOST)?.to_str().ok()?;
    let authority = value.trim().parse::<axum::http::uri::Authority>().ok()?;
    Some(authority.host().to_string())
}

/// Middleware: 421 with a JSON error for a host not in [`AllowedHosts`].
pub(crate) async fn allowed_hosts(
    State(allowed): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    match requested_host(&request) {
        Some(host) if allowed.allows(&host) => next.run(request).await,
        host => {
            let message = match host {
                Some(host) => {
                    format!("this server does not answer for host {host:?} (DAY15_ALLOWED_HOSTS)")
                }
                None => "the request names no host; DAY15_ALLOWED_HOSTS requires one".into(),
            };
            let body = serde_json::json!({"error": "misdirected_request", "message": message});
            (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_policy_hashes_each_inline_block_of_the_dashboard() {
        let page = crate::dashboard::PAGE;
        let csp = page_csp(page);
        let sources = csp.matches("'sha256-").count();
        let expected = blocks(page, "<script>", "</script>").len()
            + blocks(page, "<style>", "</style>").len()
            + style_attributes(page).len();
        assert_eq!(sources, expected, "{csp}");
        // Every inline script of the page is a bare `<script>`, so each one is hashed.
        assert_eq!(
            page.matches("<script").count(),
            blocks(page, "<script>", "</script>").len()
        );
        assert!(!csp.contains("'unsafe-inline'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(PAGE_CSP.to_str().ok(), Some(csp.as_str()));
    }

    #[test]
    fn style_attributes_inside_scripts_are_not_hashed() {
        let page = "<p style=\"a\"></p><script>x('style=\"b\"')</script><i style=\"c\"></i><i style=\"a\"></i>";
        assert_eq!(style_attributes(page), ["a", "c"]);
        let hash = hashes(vec!["alert(1)"]);
        // echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64
        assert_eq!(
            hash,
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
    }

    #[test]
    fn hosts_compare_without_case_brackets_or_trailing_dot() {
        let mut config = Config::defaults();
        config.http.allowed_hosts = vec!["dash.example.com".into(), "::1".into()];
        let allowed = AllowedHosts::from_config(&config).unwrap();
        for host in [
            "Dash.Example.COM",
            "dash.example.com.",
            "[::1]",
            "127.0.0.1",
        ] {
            assert!(allowed.allows(host), "{host}");
        }
        for host in ["evil.example", "dash.example.com.evil", "localhost"] {
            assert!(!allowed.allows(host), "{host}");
        }
        assert!(AllowedHosts::from_config(&Config::defaults()).is_none());
    }
}
