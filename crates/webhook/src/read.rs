//! Read endpoints (docs/api.md): `/health`, `/stats`, `/metrics`, `/analytics`,
//! `/analytics/timeseries`, `/dlq`.
//!
//! Figures are pipeline-wide, read from the backend (so they include every webhook and
//! consumer), plus this process's counts not flushed yet. Every backend read is bounded by
//! [`BACKEND_TIMEOUT`](crate::BACKEND_TIMEOUT): a dead backend gives a 503, never a hang.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pipeline_core::analytics::timeseries::{RawParameters, Timeseries, TimeseriesQuery};
use pipeline_core::analytics::{AnalyticsSnapshot, StoredMetrics};
use pipeline_core::backend::{DeadLetter, Depths, Topology};
use pipeline_core::event::format_received_at;
use pipeline_core::stats::PipelineStats;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, RETRY_AFTER_SECONDS};
use crate::{prometheus, AppState};

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Healthy {
    status: &'static str,
    backend: &'static str,
    queue_depth: u64,
    dlq_depth: u64,
    timestamp: String,
    uptime_seconds: u64,
    /// Redis only: mode, partitions and the primaries that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<Topology>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Unhealthy {
    status: &'static str,
    reason: String,
    backend: &'static str,
    timestamp: String,
    uptime_seconds: u64,
    /// Redis only, when the topology was read: which primaries did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<Topology>,
}

/// `GET /health`: 200 when the backend answers, 503 with the reason when it does not.
#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "the backend answered", body = Healthy),
        (status = 503, description = "the backend did not answer", body = Unhealthy, headers(("Retry-After" = u64))),
    )
)]
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let backend = state.backend().clone();
    let checked = state
        .call("ping", async {
            backend.ping().await?;
            let topology = backend.topology().await?;
            // A primary that does not answer holds part of the queue: unhealthy, with the
            // topology saying which part, until the cluster promotes its replica.
            let depths = match &topology {
                Some(t) if t.primaries_reachable < t.primaries => None,
                _ => Some(backend.depths().await?),
            };
            Ok((depths, topology))
        })
        .await;
    let timestamp = format_received_at(chrono::Utc::now());
    let (reason, redis) = match checked {
        Ok((Some(depths), redis)) => {
            return Json(Healthy {
                status: "healthy",
                backend: backend.name(),
                queue_depth: depths.queue,
                dlq_depth: depths.dlq,
                timestamp,
                uptime_seconds: state.uptime_seconds(),
                redis,
            })
            .into_response()
        }
        Ok((None, redis)) => {
            let (reachable, primaries) = redis
                .as_ref()
                .map_or((0, 0), |t| (t.primaries_reachable, t.primaries));
            (
                format!("{reachable} of {primaries} Redis primaries answer; part of the queue is out of reach until the cluster promotes a replica"),
                redis,
            )
        }
        Err(e) => (e.to_string(), None),
    };
    let body = Unhealthy {
        status: "unhealthy",
        reason,
        backend: backend.name(),
        timestamp,
        uptime_seconds: state.uptime_seconds(),
        redis,
    };
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    response
}

impl AppState {
    /// Backend metrics and depths with this process's unflushed counts added, read under the
    /// flush lock so nothing is counted twice or missed (see [`crate::local_metrics`]).
    pub(crate) async fn pipeline_figures(&self) -> Result<(StoredMetrics, Depths), ApiError> {
        let read = async {
            let _guard = self.inner.local.flush_lock.lock().await;
            let backend = self.backend();
            let (metrics, depths) = tokio::join!(backend.metrics(), backend.depths());
            let mut metrics = metrics?;
            let depths = depths?;
            metrics.add(&self.inner.local.peek().increments());
            Ok((metrics, depths))
        };
        self.call("metrics", read).await
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StatsBody {
    #[serde(flatten)]
    stats: PipelineStats,
    uptime_seconds: u64,
}

/// `GET /stats`: [`PipelineStats`] plus this process's uptime.
#[utoipa::path(
    get,
    path = "/stats",
    responses((status = 200, description = "pipeline-wide figures", body = StatsBody))
)]
pub(crate) async fn stats(State(state): State<AppState>) -> Result<Response, ApiError> {
    let (metrics, depths) = state.pipeline_figures().await?;
    let stats = PipelineStats::from_metrics(state.backend().name(), &metrics, depths);
    Ok(Json(StatsBody {
        stats,
        uptime_seconds: state.uptime_seconds(),
    })
    .into_response())
}

/// `GET /metrics`: Prometheus text of the same figures; 404 when DAY15_METRICS_ENABLED=false.
#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 404, description = "`not_found`: DAY15_METRICS_ENABLED=false", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    if !state.config().http.metrics_enabled {
        return Err(ApiError::NotFound(
            "metrics are disabled (DAY15_METRICS_ENABLED=false)".into(),
        ));
    }
    let (metrics, depths) = state.pipeline_figures().await?;
    let stats = PipelineStats::from_metrics(state.backend().name(), &metrics, depths);
    let own = state.inner.own.snapshot();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let oldest_age = depths
        .oldest_at
        .map_or(0.0, |at| now_ms.saturating_sub(at).max(0) as f64 / 1000.0);
    let text = prometheus::render(&stats, &metrics, oldest_age, state.uptime_seconds(), &own);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

/// `GET /analytics`: the aggregates (docs/api.md, `GET /analytics`).
#[utoipa::path(
    get,
    path = "/analytics",
    responses((status = 200, description = "the analytics aggregates", body = AnalyticsSnapshot))
)]
pub(crate) async fn analytics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = state.call("metrics", state.backend().metrics()).await?;
    Ok(Json(AnalyticsSnapshot::from_metrics(
        &metrics,
        chrono::Utc::now(),
    ))
    .into_response())
}

/// Raw query of `/analytics/timeseries`; every rule is checked by hand so a bad value gets a
/// 400 naming its parameter.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TimeseriesParams {
    /// What is counted.
    #[param(value_type = crate::openapi::TimeseriesMetric)]
    metric: Option<String>,
    /// The buckets' width.
    #[param(value_type = crate::openapi::TimeseriesGranularity)]
    granularity: Option<String>,
    /// Start of the range, RFC 3339 (the bucket holding it is the first).
    #[param(value_type = String, format = DateTime)]
    from: Option<String>,
    /// End of the range, RFC 3339, exclusive; not before `from`.
    #[param(value_type = String, format = DateTime)]
    to: Option<String>,
    /// The dimension to split each bucket by, where the metric has it.
    #[param(value_type = Option<crate::openapi::TimeseriesDimension>)]
    group_by: Option<String>,
    /// IANA time zone that hour and day buckets are aligned in (default `UTC`).
    tz: Option<String>,
}

/// `GET /analytics/timeseries`: one metric per bucket of event time (docs/api.md).
#[utoipa::path(
    get,
    path = "/analytics/timeseries",
    params(TimeseriesParams),
    responses(
        (status = 200, description = "every bucket of the range, oldest first", body = Timeseries),
        (status = 400, description = "`invalid_parameter`: `details` names the parameter", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn timeseries(
    State(state): State<AppState>,
    params: Result<Query<TimeseriesParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request("invalid_parameter", "", e.body_text(), e.body_text())
    })?;
    let raw = RawParameters {
        metric: params.metric.as_deref(),
        granularity: params.granularity.as_deref(),
        from: params.from.as_deref(),
        to: params.to.as_deref(),
        group_by: params.group_by.as_deref(),
        tz: params.tz.as_deref(),
    };
    let query = TimeseriesQuery::parse(&raw, &state.config().rollup_retention, chrono::Utc::now())
        .map_err(|p| {
            let message = format!("{}: {}", p.parameter, p.problem);
            ApiError::bad_request("invalid_parameter", p.parameter, p.problem, message)
        })?;
    let series = state
        .call("rollups", query.run(state.backend().as_ref()))
        .await?;
    Ok(Json(series).into_response())
}

/// Default and largest page of `/dlq`.
pub const DLQ_DEFAULT_LIMIT: usize = 50;
pub const DLQ_MAX_LIMIT: usize = 1000;

/// Raw query of `/dlq`; numbers are parsed by hand so a bad value gets a clear 400.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DlqParams {
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Dead letters to skip (default 0).
    #[param(schema_with = crate::openapi::dlq_offset)]
    offset: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct DlqPage {
    entries: Vec<DeadLetter>,
    total: u64,
    limit: usize,
    offset: usize,
}

fn parse_param(
    name: &str,
    value: Option<&str>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => {
            let problem = if *range.end() == usize::MAX {
                format!("must be an integer >= {}", range.start())
            } else {
                format!(
                    "must be an integer from {} to {}",
                    range.start(),
                    range.end()
                )
            };
            Err(ApiError::bad_request(
                "invalid_parameter",
                name,
                problem.clone(),
                format!("{name}={text:?}: {problem}"),
            ))
        }
    }
}

/// `GET /dlq?limit=&offset=`: dead letters, oldest first. They hold whole events (e-mail
/// addresses and the like), so with DAY15_ADMIN_TOKEN set the bearer token is required (401).
#[utoipa::path(
    get,
    path = "/dlq",
    // Open while DAY15_ADMIN_TOKEN is unset.
    security((), ("admin_token" = [])),
    params(DlqParams),
    responses(
        (status = 200, description = "dead letters, oldest first", body = DlqPage),
        (status = 400, description = "`invalid_parameter`", body = crate::error::ErrorBody),
        (status = 401, description = "`unauthorized` (only while DAY15_ADMIN_TOKEN is set)", body = crate::error::ErrorBody, headers(("WWW-Authenticate" = String))),
    )
)]
pub(crate) async fn dlq_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<DlqParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    state.authorize_reader(&headers)?;
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request("invalid_parameter", "", e.body_text(), e.body_text())
    })?;
    let limit = parse_param(
        "limit",
        params.limit.as_deref(),
        DLQ_DEFAULT_LIMIT,
        1..=DLQ_MAX_LIMIT,
    )?;
    let offset = parse_param("offset", params.offset.as_deref(), 0, 0..=usize::MAX)?;
    let backend = state.backend();
    let (entries, depths) = state
        .call("dlq_list", async {
            let (entries, depths) = tokio::join!(backend.dlq_list(limit, offset), backend.depths());
            Ok((entries?, depths?))
        })
        .await?;
    Ok(Json(DlqPage {
        entries,
        total: depths.dlq,
        limit,
        offset,
    })
    .into_response())
}
