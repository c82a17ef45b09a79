//! The one error type of the HTTP API and its single mapping to a status code and JSON body.
//!
//! Every refusal the server sends — from a handler, from a limit, from axum's own routing —
//! ends up as [`ApiError`], so every error a client sees has the shape docs/api.md documents:
//! `{"error": "<code>", "message": "<human text>", "details": [...], "missing": [...]}`.
//! Input problems are always 4xx; only the backend being unreachable gives a 5xx (503, with
//! `Retry-After`), and nothing here ever answers 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pipeline_core::backend::BackendError;
use pipeline_core::event::{FieldProblem, ValidationError};
use serde::Serialize;

/// Seconds a client is asked to wait after a 429 or 503.
pub const RETRY_AFTER_SECONDS: u64 = 1;

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or a parameter is malformed or fails validation (400).
    #[error("{message}")]
    BadRequest {
        /// Machine-readable code: `invalid_json`, `invalid_event`, `invalid_batch`, …
        code: &'static str,
        message: String,
        /// One entry per problem, so a sender can fix all of them at once.
        details: Vec<FieldProblem>,
        /// Required fields that were absent.
        missing: Vec<String>,
    },
    /// Webhook signature missing, malformed, wrong or expired (401).
    #[error("{0}")]
    InvalidSignature(String),
    /// Admin endpoint called without the right bearer token (401).
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// Admin endpoint called while no admin token is configured (403).
    #[error("admin endpoints are disabled: DAY15_ADMIN_TOKEN is not set")]
    AdminDisabled,
    /// No such route (404); `/metrics` also answers this when metrics are disabled.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, the method does not (405).
    #[error("method not allowed on this path")]
    MethodNotAllowed,
    /// The request did not complete within the request timeout (408).
    #[error("the request did not complete in time")]
    Timeout,
    /// Body or batch larger than the configured limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Content-Type is not JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Deliberate load shedding: the queue is deeper than DAY15_MAX_QUEUE_DEPTH (429).
    #[error("queue depth {depth} is above DAY15_MAX_QUEUE_DEPTH={max}; retry later")]
    Overloaded { depth: u64, max: u64 },
    /// The backend failed or did not answer in time (503). Nothing is confirmed: a call that
    /// timed out may still complete (a SQLite writer commits a job already handed to it), so
    /// the message says the event may have been stored and that a resend is safe.
    #[error(
        "{0}; the event may or may not have been stored: resending it with the same event_id \
         is safe (a stored one is answered as a duplicate)"
    )]
    Unavailable(String),
    /// Any other status produced below the handlers, kept as it was (see [`ApiError::from_status`]).
    #[error("{1}")]
    Other(StatusCode, String),
}

impl ApiError {
    /// A 400 about one field (`field` empty = the whole body).
    pub fn bad_request(
        code: &'static str,
        field: &str,
        problem: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
            details: vec![FieldProblem {
                field: field.to_string(),
                problem: problem.into(),
            }],
            missing: Vec::new(),
        }
    }

    /// A body that is not JSON at all (including invalid UTF-8 and nesting past the limit).
    pub fn invalid_json(err: serde_json::Error) -> Self {
        let problem = format!("body is not valid JSON: {err}");
        ApiError::bad_request("invalid_json", "", problem.clone(), problem)
    }

    /// An event that fails the event rules of docs/api.md; `event_id` names it in the message when it could be read.
    pub fn invalid_event(err: ValidationError, event_id: Option<&str>) -> Self {
        let message = match event_id {
            Some(id) => format!("event {id} is invalid: {}", err.summary()),
            None => format!("event is invalid: {}", err.summary()),
        };
        ApiError::BadRequest {
            code: "invalid_event",
            message,
            details: err.details,
            missing: err.missing,
        }
    }

    /// A backend call that failed or timed out.
    pub fn backend(err: BackendError) -> Self {
        ApiError::Unavailable(err.to_string())
    }

    /// The JSON form of a bare status produced outside our handlers (axum rejections, limits,
    /// timeouts), so no plain-text error ever leaves the server.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => ApiError::NotFound("no such endpoint".into()),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::REQUEST_TIMEOUT => ApiError::Timeout,
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("request body is too large".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType("Content-Type must be application/json".into())
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                ApiError::Unavailable("service temporarily unavailable".into())
            }
            other => ApiError::Other(
                other,
                other
                    .canonical_reason()
                    .unwrap_or("request refused")
                    .to_string(),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidSignature(_) | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::AdminDisabled => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Other(status, _) => *status,
        }
    }

    /// The `error` field of the body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::InvalidSignature(_) => "invalid_signature",
            ApiError::Unauthorized => "unauthorized",
            ApiError::AdminDisabled => "admin_disabled",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Timeout => "request_timeout",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Overloaded { .. } => "queue_full",
            ApiError::Unavailable(_) => "backend_unavailable",
            ApiError::Other(status, _) if status.is_server_error() => "server_error",
            ApiError::Other(..) => "bad_request",
        }
    }

    /// True for a refusal of the sender's input (counted as `rejected`), false for refusals
    /// about capacity or availability, which the sender is expected to retry.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            ApiError::BadRequest { .. }
                | ApiError::InvalidSignature(_)
                | ApiError::PayloadTooLarge(_)
                | ApiError::UnsupportedMediaType(_)
        )
    }
}

/// The body of every error answer (docs/api.md, Errors).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody<'a> {
    /// Machine-readable code, e.g. `invalid_event`.
    error: &'static str,
    /// For people; may change between versions.
    message: String,
    /// On 400 answers: one entry per problem.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Option<Vec<FieldProblem>>)]
    details: &'a [FieldProblem],
    /// On 400 answers: required fields that were absent.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Option<Vec<String>>)]
    missing: &'a [String],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (details, missing): (&[FieldProblem], &[String]) = match &self {
            ApiError::BadRequest {
                details, missing, ..
            } => (details, missing),
            _ => (&[], &[]),
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            details,
            missing,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            StatusCode::UNAUTHORIZED if matches!(self, ApiError::Unauthorized) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_of_input_is_a_4xx_and_capacity_refusals_carry_retry_after() {
        let input = [
            ApiError::bad_request("invalid_json", "", "x", "x"),
            ApiError::InvalidSignature("x".into()),
            ApiError::PayloadTooLarge("x".into()),
            ApiError::UnsupportedMediaType("x".into()),
        ];
        for e in input {
            assert!(e.status().is_client_error(), "{e:?}");
            assert!(e.is_rejection());
        }
        for e in [
            ApiError::Overloaded { depth: 2, max: 1 },
            ApiError::Unavailable("down".into()),
        ] {
            let r = e.into_response();
            assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        }
    }

    #[test]
    fn a_503_never_claims_that_nothing_was_stored_and_says_a_resend_is_safe() {
        let message =
            ApiError::backend(BackendError::Unavailable("no answer within 800 ms".into()))
                .to_string();
        assert!(
            message.starts_with("backend unavailable: no answer within 800 ms; "),
            "{message}"
        );
        assert!(
            message.contains("may or may not have been stored"),
            "{message}"
        );
        assert!(message.contains("same event_id is safe"), "{message}");
    }
}
