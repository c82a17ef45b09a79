//! The OpenAPI 3.1 contract of the HTTP API, generated from the handlers' own types.
//!
//! Every route of [`crate::router`] is listed with every status it can answer and its body;
//! the answers every route can give (408, 421, 503) are added to each operation by
//! [`CommonAnswers`]. The document is served at `GET /openapi.json` and committed as
//! `docs/openapi.json` (`cargo run -p webhook --example openapi` rewrites it; a test fails when
//! the two differ).

use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{SchemaType, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    Array, ArrayBuilder, ContentBuilder, HeaderBuilder, Object, ObjectBuilder, Ref, ResponseBuilder,
};
use utoipa::{Modify, OpenApi, ToSchema};

/// One event, as `POST /webhook/events` takes it (docs/api.md, Events). Documentation only:
/// the handler judges the raw JSON itself so that it can report every problem at once.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Event {
    /// The idempotency key: 1 to 128 printable ASCII characters, no whitespace.
    #[schema(pattern = "^[!-~]{1,128}$", min_length = 1, max_length = 128)]
    event_id: String,
    /// An ASCII letter, then letters, digits or `_` `.` `:` `-`; 64 characters at most.
    #[schema(
        pattern = "^[A-Za-z][A-Za-z0-9_.:-]{0,63}$",
        min_length = 1,
        max_length = 64
    )]
    event_type: String,
    /// An RFC 3339 date-time, the event time the rollups bucket by; at most
    /// DAY15_MAX_FUTURE_SKEW_SECONDS (default 300) ahead of the webhook's clock.
    #[schema(format = DateTime)]
    timestamp: String,
    /// At most 128 characters, no control characters.
    #[schema(pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$", max_length = 128)]
    user_id: Option<String>,
    /// Free keys; the known keys of the known event types are checked (docs/api.md).
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The body of `POST /webhook/batch`: 1 to DAY15_MAX_BATCH_EVENTS (default 1000; more
/// answer 413) elements. Each element is judged as one event; one that is not a valid event
/// is reported in the answer's `error_details` and does not stop the others, so any JSON value
/// is a well-formed element.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Batch {
    #[schema(min_items = 1, value_type = Vec<Value>)]
    events: Vec<serde_json::Value>,
}

/// `metric` of `GET /analytics/timeseries`. Documentation only: the handler parses the raw
/// string itself so that a bad value gets a 400 naming the parameter.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum TimeseriesMetric {
    Events,
    Signups,
    Subscriptions,
    MrrAdded,
    UsageEvents,
    UsageQuantity,
    ActiveUsers,
}

/// `granularity` of `GET /analytics/timeseries`.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum TimeseriesGranularity {
    Minute,
    Hour,
    Day,
}

/// `group_by` of `GET /analytics/timeseries`: `type` (events), `source` or `country`
/// (signups), `plan` (subscriptions, mrr_added), `feature` (usage_events, usage_quantity).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub(crate) enum TimeseriesDimension {
    Type,
    Source,
    Country,
    Plan,
    Feature,
}

/// The body of `POST /dlq/replay`: exactly one of `event_ids` or `"all": true`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum ReplayRequest {
    /// These dead letters (ids not in the DLQ are skipped).
    #[schema(title = "by_ids")]
    ByIds {
        #[schema(schema_with = event_ids)]
        event_ids: Vec<String>,
        /// Absent, `null` or `false`.
        #[schema(schema_with = false_or_null)]
        all: Option<bool>,
    },
    /// Every dead letter (`false` selects nothing and is refused).
    #[schema(title = "all")]
    All {
        #[schema(schema_with = always_true)]
        all: bool,
        /// Absent or `null`.
        #[schema(schema_with = null)]
        event_ids: Option<()>,
    },
}

/// `event_ids` of a replay: ids with the rule of an event's `event_id`.
fn event_ids() -> Array {
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[!-~]{1,128}$"))
                .build(),
        )
        .build()
}

fn false_or_null() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Boolean, Type::Null]))
        .enum_values(Some([
            serde_json::Value::Bool(false),
            serde_json::Value::Null,
        ]))
        .build()
}

fn null() -> Object {
    ObjectBuilder::new().schema_type(Type::Null).build()
}

fn always_true() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Boolean)
        .enum_values(Some([true]))
        .build()
}

/// `offset` of `/dlq`: any integer the server's `usize` holds (not only `int64`).
pub(crate) fn dlq_offset() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .description(Some("Dead letters to skip (default 0)."))
        .minimum(Some(0))
        .maximum(Some(u64::MAX))
        .build()
}

/// The contract: every route of [`crate::router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "day15 webhook",
        description = "HTTP API of the analytics pipeline's webhook receiver (docs/api.md)."
    ),
    paths(
        crate::ingest::post_event,
        crate::ingest::post_batch,
        crate::read::health,
        crate::read::stats,
        crate::read::metrics,
        crate::read::analytics,
        crate::read::timeseries,
        crate::dashboard::stream,
        crate::dashboard::page,
        crate::read::dlq_list,
        crate::admin::replay,
        crate::admin::purge,
        spec,
    ),
    components(schemas(
        crate::error::ErrorBody,
        TimeseriesMetric,
        TimeseriesGranularity,
        TimeseriesDimension
    )),
    modifiers(&CommonAnswers, &AdminToken)
)]
pub struct ApiDoc;

/// `Authorization: Bearer <DAY15_ADMIN_TOKEN>` of the admin routes (and `/dlq` once the token
/// is set).
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("DAY15_ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

/// Adds the answers every route can give (docs/api.md, "Answers every route can give").
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            // Routes that never call the backend cannot answer its 503; /health has its own.
            let backend = !matches!(
                path.as_str(),
                "/health" | "/dashboard" | "/analytics/stream" | "/openapi.json"
            );
            for operation in [item.get.as_mut(), item.post.as_mut()]
                .into_iter()
                .flatten()
            {
                add(
                    operation,
                    "408",
                    "`request_timeout`: the request took longer than 10 s",
                    false,
                );
                add(
                    operation,
                    "421",
                    "`misdirected_request`: `Host` not in DAY15_ALLOWED_HOSTS",
                    false,
                );
                if backend {
                    add(operation, "503", "`backend_unavailable`", true);
                }
            }
        }
    }
}

fn add(operation: &mut Operation, status: &str, description: &str, retry_after: bool) {
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).build())
                .description(Some("always 1 (seconds)"))
                .build(),
        );
    }
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert(response.build().into());
}

/// The contract as pretty-printed JSON with a final newline, as committed in docs/openapi.json.
pub fn json() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the contract: {e}\"}}"));
    text.push('\n');
    text
}

/// `GET /openapi.json`: this contract.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API", body = Object))
)]
pub(crate) async fn spec() -> Response {
    Json(ApiDoc::openapi()).into_response()
}
