//! Reading request bodies: Content-Type check and size limit, with our JSON errors.
//!
//! Bodies are read as raw bytes here rather than through axum's `Json`/`Bytes` extractors
//! (and their `DefaultBodyLimit`), because the signature must be checked over the exact bytes
//! before any parsing, and because a refusal must be counted and answered in our format. The
//! limit works like tower-http's `RequestBodyLimitLayer`: a declared `Content-Length` above it
//! is refused before reading, and a body that turns out longer than declared or than the limit
//! is cut off at the limit.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
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
