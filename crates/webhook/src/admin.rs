//! Admin endpoints: `POST /dlq/replay` and `POST /dlq/purge` (docs/api.md).
//!
//! Both need `Authorization: Bearer $DAY15_ADMIN_TOKEN`. With no token configured they answer
//! 403 whatever is sent, so an unconfigured install never exposes them. `GET /dlq`, which shows
//! event contents, needs the same token once one is configured (and stays open without one).
//! The token is compared as SHA-256 digests in constant time (`subtle`), which leaks neither
//! its content nor length.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pipeline_core::backend::DlqSelection;
use pipeline_core::event::EventId;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::{body, AppState};

pub(crate) fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AppState {
    /// 403 when admin endpoints are disabled, 401 unless the bearer token matches.
    fn authorize_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = &self.inner.admin_token_digest else {
            return Err(ApiError::AdminDisabled);
        };
        check_bearer(headers, expected)
    }

    /// For reads of event contents (`GET /dlq`): open when no admin token is configured,
    /// else 401 unless the bearer token matches.
    pub(crate) fn authorize_reader(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match &self.inner.admin_token_digest {
            Some(expected) => check_bearer(headers, expected),
            None => Ok(()),
        }
    }
}

/// 401 unless `headers` carry `Authorization: Bearer <token>` whose digest is `expected`,
/// compared in constant time.
fn check_bearer(headers: &HeaderMap, expected: &[u8; 32]) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(ApiError::Unauthorized)?;
    if bool::from(digest(presented).ct_eq(expected)) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Replayed {
    replayed: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Purged {
    purged: u64,
}

fn invalid_replay(field: &str, problem: &str) -> ApiError {
    let message = format!(
        "replay needs {{\"event_ids\": [...]}} or {{\"all\": true}}: {}{problem}",
        if field.is_empty() {
            String::new()
        } else {
            format!("{field} ")
        }
    );
    ApiError::bad_request("invalid_request", field, problem, message)
}

/// What a replay body asks for.
fn selection(value: Value) -> Result<DlqSelection, ApiError> {
    let Value::Object(body) = value else {
        return Err(invalid_replay("", "body must be a JSON object"));
    };
    let all = match body.get("all") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid_replay("all", "must be a boolean")),
    };
    let ids = match body.get("event_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut ids = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let id = item
                    .as_str()
                    .ok_or("must be a string")
                    .and_then(EventId::parse)
                    .map_err(|problem| invalid_replay(&format!("event_ids[{i}]"), problem))?;
                ids.push(id);
            }
            Some(ids)
        }
        Some(_) => return Err(invalid_replay("event_ids", "must be an array of event ids")),
    };
    match (all, ids) {
        (true, None) => Ok(DlqSelection::All),
        (false, Some(ids)) => Ok(DlqSelection::Ids(ids)),
        (true, Some(_)) => Err(invalid_replay("", "give either event_ids or all, not both")),
        (false, None) => Err(invalid_replay("", "nothing selected")),
    }
}

/// `POST /dlq/replay`: moves the selected dead letters back to the queue, attempts reset.
#[utoipa::path(
    post,
    path = "/dlq/replay",
    security(("admin_token" = [])),
    request_body(content = crate::openapi::ReplayRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "dead letters moved back to the queue", body = Replayed),
        (status = 400, description = "`invalid_json` or `invalid_request`", body = crate::error::ErrorBody),
        (status = 401, description = "`unauthorized`", body = crate::error::ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "`admin_disabled`", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn replay(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    state.authorize_admin(&parts.headers)?;
    body::require_json(&parts.headers)?;
    let bytes =
        body::read_limited(&parts.headers, body, state.config().http.max_body_bytes).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(ApiError::invalid_json)?;
    let which = selection(value)?;
    let replayed = state
        .call("dlq_replay", state.backend().dlq_replay(which))
        .await?;
    tracing::info!("DLQ replay: {replayed} events moved back to the queue");
    Ok(Json(Replayed { replayed }).into_response())
}

/// `POST /dlq/purge`: deletes every dead letter.
#[utoipa::path(
    post,
    path = "/dlq/purge",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "dead letters deleted", body = Purged),
        (status = 401, description = "`unauthorized`", body = crate::error::ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "`admin_disabled`", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn purge(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize_admin(&headers)?;
    let purged = state.call("dlq_purge", state.backend().dlq_purge()).await?;
    tracing::warn!("DLQ purge: {purged} dead-lettered events deleted");
    Ok(Json(Purged { purged }).into_response())
}
