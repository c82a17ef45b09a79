//! Reading request bodies: Content-Type check and size limit, with our JSON errors.
//!
//! Bodies are read as raw bytes here rather than through axum's `Json`/`Bytes` extractors
//! (and their `DefaultBodyLimit`), because the signature must be checked over the exact bytes
//! before any parsing, and because a refusal must be counted and answered in our format. The
//! limit works like tower-http's `RequestBodyLimitLayer`: a declared `Content-Length` above it
//! is refused before reading, and a body that turns out longer than declared or than the limit
//! is cut off at the limit.
//!
//! A request answered before its body was read to the end (415, 413, 404, 405, …) leaves the
//! rest of that body on the connection, so hyper closes the connection after the answer. Unless
//! the answer says so, a client that pools connections sends its next request on that
//! connection and gets a transport error instead of an answer. [`close_when_body_unread`]
//! therefore marks such answers `Connection: close`.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Version};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use http_body_util::LengthLimitError;

use crate::error::ApiError;

/// True for `application/json` and `application/*+json`, parameters (charset) allowed.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5
                && subtype.as_bytes()[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"))
}

/// 415 unless the request says it carries JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if is_json(headers) {
        return Ok(());
    }
    let got = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    Err(ApiError::UnsupportedMediaType(match got {
        Some(t) => format!("Content-Type must be application/json, got {t:?}"),
        None => "Content-Type must be application/json (header missing)".to_string(),
    }))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "request body is larger than DAY15_MAX_BODY_BYTES ({limit} bytes)"
    ))
}

/// Reads the whole body, refusing more than `limit` bytes with a 413.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(err) = source {
            if err.is::<LengthLimitError>() {
                return too_large(limit);
            }
            source = err.source();
        }
        ApiError::bad_request(
            "unreadable_body",
            "",
            format!("the request body could not be read: {e}"),
            "the request body could not be read",
        )
    })
}

/// A request body that records when it has been read to the end.
struct EndTracked {
    inner: Body,
    /// Set once the last frame has been taken.
    ended: Arc<AtomicBool>,
}

impl HttpBody for EndTracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.ended.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: answers to HTTP/1 requests whose body was not read to the end carry
/// `Connection: close`, so clients do not reuse a connection the server is about to close.
pub async fn close_when_body_unread(request: Request, next: Next) -> Response {
    if request.version() > Version::HTTP_11 || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let ended = Arc::new(AtomicBool::new(false));
    let tracked = ended.clone();
    let request = request.map(|inner| {
        Body::new(EndTracked {
            inner,
            ended: tracked,
        })
    });
    let mut response = next.run(request).await;
    if !ended.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_type(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
        h
    }

    #[test]
    fn json_content_types_are_recognised() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/cloudevents+json",
        ] {
            assert!(is_json(&with_type(ok)), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "json",
            "application/+json",
            "",
        ] {
            assert!(!is_json(&with_type(bad)), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
