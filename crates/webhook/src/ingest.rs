//! `POST /webhook/events` and `POST /webhook/batch` (docs/api.md).
//!
//! Each request goes through the same gate — JSON Content-Type, body limit, signature over the
//! raw bytes, load shedding on the cached queue depth — before any parsing. Valid events get
//! `received_at` and are stored with one [`Backend::enqueue_delivery`] call per request (a whole
//! batch included; unsigned single events arriving together share one, see `coalesce.rs`),
//! whose atomic idempotency decides accepted or duplicate. A signed request
//! carries the mark of its `webhook-id` into that call, so a replayed delivery is answered as a
//! duplicate and stores nothing. The answer is sent only after that call succeeded.
//!
//! [`Backend::enqueue_delivery`]: pipeline_core::backend::Backend::enqueue_delivery

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use pipeline_core::backend::{DeliveryMark, EnqueueOutcome, QueuedEvent};
use pipeline_core::event::{
    batch_elements, format_received_at, Event, EventId, FieldProblem, ReceivedEvent,
    ValidationError,
};
use pipeline_core::logging::LogSafe;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::{body, AppState};

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted<'a> {
    status: &'static str,
    event_id: &'a str,
    queued_at: String,
    latency_ms: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Ignored<'a> {
    status: &'static str,
    reason: &'static str,
    event_id: &'a str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchResults {
    accepted: u64,
    duplicates: u64,
    errors: u64,
}

/// One refused event of a batch.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchError {
    index: usize,
    /// The event's `event_id` when it had a string one.
    event_id: Option<String>,
    error: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct BatchResponse {
    status: &'static str,
    results: BatchResults,
    total_events: usize,
    latency_ms: f64,
    error_details: Vec<BatchError>,
}

fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The delivery id of a signed request, for log lines about it.
fn delivery_id(mark: &Option<DeliveryMark>) -> String {
    mark.as_ref().map(|m| m.id().to_owned()).unwrap_or_default()
}

/// The `event_id` a sender gave, for messages about an event that may be invalid.
fn id_hint(value: &Value) -> Option<String> {
    value
        .get("event_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

impl AppState {
    /// Answers a refused request, counting and logging it.
    fn refuse(&self, error: ApiError) -> Response {
        if error.is_rejection() {
            self.inner.local.rejected(1);
            if self.inner.rejected_lines.admit() {
                tracing::warn!("Event rejected: {error}");
            }
        } else if matches!(
            error.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            self.warn_capacity(&error);
        }
        error.into_response()
    }

    /// The checks every ingest request passes before its body is parsed. Returns the body
    /// and, for a signed request, the mark of its delivery id for the enqueue.
    async fn admit(&self, request: Request) -> Result<(Bytes, Option<DeliveryMark>), ApiError> {
        let (parts, body) = request.into_parts();
        body::require_json(&parts.headers)?;
        let bytes =
            body::read_limited(&parts.headers, body, self.config().http.max_body_bytes).await?;
        let mark = match &self.inner.verifier {
            Some(verifier) => {
                Some(verifier.verify(&parts.headers, &bytes, chrono::Utc::now().timestamp())?)
            }
            None => None,
        };
        let depth = self.depth_for_ingest().await;
        let max = self.config().http.max_queue_depth;
        if depth > max {
            return Err(ApiError::Overloaded { depth, max });
        }
        Ok((bytes, mark))
    }

    /// Our own accepts count towards the cached depth at once; the background refresh then
    /// replaces the estimate with the backend's figure.
    fn note_accepted(&self, n: u64) {
        if n > 0 {
            self.inner.queue_depth.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// `POST /webhook/events`.
#[utoipa::path(
    post,
    path = "/webhook/events",
    request_body(content = crate::openapi::Event, content_type = "application/json"),
    responses(
        (status = 202, description = "accepted and stored", body = Accepted),
        (status = 200, description = "duplicate `event_id` (or `webhook-id`): nothing stored", body = Ignored),
        (status = 400, description = "`invalid_json`, `invalid_event` or `unreadable_body`", body = crate::error::ErrorBody),
        (status = 401, description = "`invalid_signature`", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::error::ErrorBody),
        (status = 429, description = "`queue_full`", body = crate::error::ErrorBody, headers(("Retry-After" = u64))),
    )
)]
pub(crate) async fn post_event(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    match ingest_event(&state, request, started).await {
        Ok(response) => response,
        Err(error) => state.refuse(error),
    }
}

async fn ingest_event(
    state: &AppState,
    request: Request,
    started: Instant,
) -> Result<Response, ApiError> {
    let (bytes, mark) = state.admit(request).await?;
    let event = match std::str::from_utf8(&bytes)
        .ok()
        .and_then(ReceivedEvent::accept)
    {
        Some(event) => event,
        None => {
            let value: Value = serde_json::from_slice(&bytes).map_err(ApiError::invalid_json)?;
            let hint = id_hint(&value);
            Event::from_value(value)
                .map(ReceivedEvent::from)
                .map_err(|e| ApiError::invalid_event(e, hint.as_deref()))?
        }
    };
    let now = chrono::Utc::now();
    event
        .check_future_skew(now, state.config().max_future_skew)
        .map_err(|e| ApiError::invalid_event(e, Some(event.id.as_str())))?;
    let queued = QueuedEvent::received(&event, &format_received_at(now));

    let delivery = delivery_id(&mark);
    let outcome = match mark {
        None => state.singles().enqueue(queued).await?,
        Some(mark) => {
            let outcomes = state
                .call(
                    "enqueue",
                    state.backend().enqueue_delivery(vec![queued], Some(mark)),
                )
                .await?;
            let Some(&outcome) = outcomes.first() else {
                return Err(ApiError::Unavailable(
                    "backend returned no outcome for the event".into(),
                ));
            };
            outcome
        }
    };

    let local = &state.inner.local;
    local.received(1);
    let elapsed = started.elapsed();
    local.ingest_latency(elapsed);
    let latency_ms = millis(elapsed);
    let log = state.inner.received_lines.admit();
    Ok(match outcome {
        EnqueueOutcome::Accepted => {
            state.note_accepted(1);
            if log {
                tracing::info!(
                    "Event received: {} ({}) - latency: {latency_ms:.2}ms",
                    event.event_type,
                    event.id
                );
            }
            let body = Accepted {
                status: "accepted",
                event_id: event.id.as_str(),
                queued_at: format_received_at(chrono::Utc::now()),
                latency_ms,
            };
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        EnqueueOutcome::Duplicate => {
            if log {
                tracing::info!("Duplicate event ignored: {}", event.id);
            }
            let body = Ignored {
                status: "ignored",
                reason: "duplicate_event",
                event_id: event.id.as_str(),
            };
            (StatusCode::OK, Json(body)).into_response()
        }
        EnqueueOutcome::DuplicateDelivery => {
            if log {
                tracing::info!(
                    "Duplicate delivery ignored: {} (webhook-id {delivery})",
                    event.id
                );
            }
            let body = Ignored {
                status: "ignored",
                reason: "duplicate_delivery",
                event_id: event.id.as_str(),
            };
            (StatusCode::OK, Json(body)).into_response()
        }
    })
}

/// `POST /webhook/batch`.
#[utoipa::path(
    post,
    path = "/webhook/batch",
    request_body(content = crate::openapi::Batch, content_type = "application/json"),
    responses(
        (status = 202, description = "judged element by element", body = BatchResponse),
        (status = 400, description = "`invalid_json`, `invalid_batch` or `unreadable_body`", body = crate::error::ErrorBody),
        (status = 401, description = "`invalid_signature`", body = crate::error::ErrorBody),
        (status = 413, description = "`payload_too_large`", body = crate::error::ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = crate::error::ErrorBody),
        (status = 429, description = "`queue_full`", body = crate::error::ErrorBody, headers(("Retry-After" = u64))),
    )
)]
pub(crate) async fn post_batch(State(state): State<AppState>, request: Request) -> Response {
    let started = Instant::now();
    match ingest_batch(&state, request, started).await {
        Ok(response) => response,
        Err(error) => state.refuse(error),
    }
}

fn invalid_batch(field: &str, problem: &str) -> ApiError {
    let message = if field.is_empty() {
        format!("invalid batch: {problem}")
    } else {
        format!("invalid batch: {field} {problem}")
    };
    ApiError::bad_request("invalid_batch", field, problem, message)
}

/// The events array of a batch body, checked for shape and size.
fn batch_events(value: Value, max: usize) -> Result<Vec<Value>, ApiError> {
    let Value::Object(mut body) = value else {
        return Err(invalid_batch(
            "",
            "body must be a JSON object {\"events\": [...]}",
        ));
    };
    let events = match body.remove("events") {
        Some(Value::Array(events)) => events,
        None | Some(Value::Null) => {
            return Err(ApiError::BadRequest {
                code: "invalid_batch",
                message: "invalid batch: events is required".into(),
                details: vec![FieldProblem {
                    field: "events".into(),
                    problem: "is required".into(),
                }],
                missing: vec!["events".into()],
            })
        }
        Some(_) => return Err(invalid_batch("events", "must be an array of events")),
    };
    if events.is_empty() {
        return Err(invalid_batch("events", "must hold at least one event"));
    }
    if events.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "batch holds {} events, more than DAY15_MAX_BATCH_EVENTS ({max})",
            events.len()
        )));
    }
    Ok(events)
}

/// One element of a batch that failed validation.
#[derive(Debug)]
pub struct RefusedEvent {
    /// Position in the `events` array.
    pub index: usize,
    /// The element's `event_id` when it had a string one, to name it in the answer.
    pub event_id: Option<String>,
    pub error: ValidationError,
}

/// Parses a `POST /webhook/batch` body: the whole request is refused (400/413) when it is not
/// a JSON object with 1..=`max_events` events; otherwise every element is judged on its own,
/// in order. Pure (no clock, no backend), so it can be fuzzed and property-tested directly.
///
/// The common body is judged without a JSON tree ([`ReceivedEvent::accept`]); whatever that
/// leaves open is judged by the tree parser and validator, whose answers are the contract.
pub fn parse_batch(bytes: &[u8], max_events: usize) -> Result<Vec<Judged<'_>>, ApiError> {
    if let Some(judged) = std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| judge_elements(text, max_events))
    {
        return Ok(judged);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(ApiError::invalid_json)?;
    let events = batch_events(value, max_events)?;
    Ok(events
        .into_iter()
        .enumerate()
        .map(|(index, value)| judge_tree(index, value))
        .collect())
}

/// One element of a batch, judged.
pub type Judged<'a> = Result<ReceivedEvent<'a>, RefusedEvent>;

/// Every element of a plainly shaped batch, each accepted without a tree where it can be;
/// `None` when the body as a whole needs the tree parser's word (a JSON error anywhere).
fn judge_elements(text: &str, max_events: usize) -> Option<Vec<Judged<'_>>> {
    batch_elements(text, max_events)?
        .into_iter()
        .enumerate()
        .map(|(index, raw)| match ReceivedEvent::accept(raw.get()) {
            Some(event) => Some(Ok(event)),
            None => serde_json::from_str::<Value>(raw.get())
                .ok()
                .map(|value| judge_tree(index, value)),
        })
        .collect()
}

/// One element judged by the tree validator.
fn judge_tree(index: usize, value: Value) -> Judged<'static> {
    let event_id = id_hint(&value);
    Event::from_value(value)
        .map(ReceivedEvent::from)
        .map_err(|error| RefusedEvent {
            index,
            event_id,
            error,
        })
}

async fn ingest_batch(
    state: &AppState,
    request: Request,
    started: Instant,
) -> Result<Response, ApiError> {
    let (bytes, mark) = state.admit(request).await?;
    let judged = parse_batch(&bytes, state.config().http.max_batch_events)?;
    let total_events = judged.len();

    let now = chrono::Utc::now();
    let mut queued = Vec::with_capacity(total_events);
    let received_at = format_received_at(now);
    let mut kinds: Vec<(Cow<str>, EventId)> = Vec::with_capacity(total_events);
    let mut error_details = Vec::new();
    let max_skew = state.config().max_future_skew;
    for (index, item) in judged.into_iter().enumerate() {
        let item = item.and_then(|event| match event.check_future_skew(now, max_skew) {
            Ok(()) => Ok(event),
            Err(error) => Err(RefusedEvent {
                index,
                event_id: Some(event.id.to_string()),
                error,
            }),
        });
        match item {
            Ok(event) => {
                queued.push(QueuedEvent::received(&event, &received_at));
                kinds.push((event.event_type, event.id));
            }
            Err(refused) => {
                let error = refused.error.summary();
                if state.inner.rejected_lines.admit() {
                    tracing::warn!(
                        "Event rejected: batch index {} ({}): {error}",
                        refused.index,
                        LogSafe(refused.event_id.as_deref().unwrap_or("no event_id"))
                    );
                }
                error_details.push(BatchError {
                    index: refused.index,
                    event_id: refused.event_id,
                    error,
                });
            }
        }
    }

    let delivery = delivery_id(&mark);
    let outcomes = if queued.is_empty() {
        Vec::new()
    } else {
        state
            .call("enqueue", state.backend().enqueue_delivery(queued, mark))
            .await?
    };
    if outcomes.len() != kinds.len() {
        return Err(ApiError::Unavailable(format!(
            "backend returned {} outcomes for {} events",
            outcomes.len(),
            kinds.len()
        )));
    }

    let elapsed = started.elapsed();
    let latency_ms = millis(elapsed);
    let (mut accepted, mut duplicates) = (0u64, 0u64);
    let lines = &state.inner.received_lines;
    for ((event_type, id), outcome) in kinds.iter().zip(&outcomes) {
        let log = lines.admit();
        match outcome {
            EnqueueOutcome::Accepted => {
                accepted += 1;
                if log {
                    tracing::info!(
                        "Event received: {event_type} ({id}) - latency: {latency_ms:.2}ms"
                    );
                }
            }
            EnqueueOutcome::Duplicate => {
                duplicates += 1;
                if log {
                    tracing::info!("Duplicate event ignored: {id}");
                }
            }
            EnqueueOutcome::DuplicateDelivery => {
                duplicates += 1;
                if log {
                    tracing::info!("Duplicate delivery ignored: {id} (webhook-id {delivery})");
                }
            }
        }
    }
    let errors = error_details.len() as u64;
    let local = &state.inner.local;
    local.received(accepted + duplicates);
    local.rejected(errors);
    local.ingest_latency(elapsed);
    state.note_accepted(accepted);

    let body = BatchResponse {
        status: "processed",
        results: BatchResults {
            accepted,
            duplicates,
            errors,
        },
        total_events,
        latency_ms,
        error_details,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
