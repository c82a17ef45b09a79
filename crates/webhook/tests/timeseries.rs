//! `GET /analytics/timeseries` over HTTP: every parameter rule, zero buckets, group_by, the
//! sum against the totals, `tz` alignment across the October change in Europe/Berlin, and the
//! refusal of events too far in the future.
mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{error_body, ServerHandle};
use pipeline_core::analytics::rollup::Retention;
use pipeline_core::analytics::{effect_of, Bounds};
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{BackendOptions, Settlement};
use pipeline_core::event::Event;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn signup(id: &str, when: DateTime<Utc>, source: &str) -> Value {
    json!({
        "event_id": id,
        "event_type": "user_signup",
        "user_id": format!("user_{id}"),
        "timestamp": when.to_rfc3339(),
        "metadata": {"source": source, "country": "DE"}
    })
}

/// Posts the events, then applies every queued one as a consumer would.
async fn ingest_and_apply(server: &ServerHandle, events: Vec<Value>) {
    let r = server
        .post("/webhook/batch", &json!({ "events": events }))
        .await;
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    loop {
        let got = server
            .backend
            .claim_batch(
                "test",
                500,
                Duration::from_millis(50),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        let settlements = got
            .into_iter()
            .map(|d| {
                let event = Event::from_slice(d.payload.as_bytes()).unwrap();
                let effect = Some(effect_of(&event, Utc::now()));
                Settlement::Ack {
                    delivery: d,
                    effect,
                }
            })
            .collect();
        server.backend.settle(settlements).await.unwrap();
    }
}

async fn series(server: &ServerHandle, query: &str) -> Value {
    server
        .get_json(&format!("/analytics/timeseries?{query}"))
        .await
}

/// The 400 of a query, and the parameter its details name.
async fn refused(server: &ServerHandle, query: &str) -> (Value, String) {
    let r = server.get(&format!("/analytics/timeseries?{query}")).await;
    assert_eq!(r.status(), 400, "{query}");
    let body = error_body(r).await;
    assert_eq!(body["error"], "invalid_parameter", "{body}");
    let field = body["details"][0]["field"].as_str().unwrap().to_string();
    (body, field)
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test]
async fn every_bucket_is_present_and_sums_match_the_totals() {
    let server = ServerHandle::start().await;
    let now = Utc::now();
    let day = chrono::Duration::days(1);
    let events = vec![
        signup("a", now - day * 2, "organic"),
        signup("b", now - day * 2, "ads"),
        signup("c", now - day * 2, "organic"),
        signup("d", now, "ads"),
    ];
    ingest_and_apply(&server, events).await;
    let from = iso(now - day * 4);
    let to = iso(now + chrono::Duration::minutes(1));
    let got = series(
        &server,
        &format!("metric=signups&granularity=day&from={from}&to={to}"),
    )
    .await;
    assert_eq!(got["metric"], "signups");
    assert_eq!(got["granularity"], "day");
    assert_eq!(got["group_by"], Value::Null);
    let buckets = got["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 5, "{got}");
    let values: Vec<u64> = buckets
        .iter()
        .map(|b| b["value"].as_u64().unwrap())
        .collect();
    assert_eq!(values, [0, 0, 3, 0, 1]);
    let first = at(buckets[0]["start"].as_str().unwrap());
    assert_eq!(first.timestamp() % 86_400, 0, "UTC midnight");

    let by_source = series(
        &server,
        &format!("metric=signups&granularity=day&from={from}&to={to}&group_by=source"),
    )
    .await;
    let b = &by_source["buckets"][2]["values"];
    assert_eq!(
        (b["organic"].as_u64(), b["ads"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(by_source["buckets"][0]["values"], json!({}));

    let totals = server.get_json("/analytics").await;
    let hourly = series(
        &server,
        &format!("metric=signups&granularity=hour&from={from}&to={to}&group_by=country"),
    )
    .await;
    let sum: u64 = hourly["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["values"]["DE"].as_u64())
        .sum();
    assert_eq!(sum, totals["signups"]["by_country"]["DE"].as_u64().unwrap());

    let users = series(
        &server,
        &format!("metric=active_users&granularity=day&from={from}&to={to}"),
    )
    .await;
    assert_eq!(users["buckets"][2]["value"], 3);
}

#[tokio::test]
async fn every_parameter_rule_answers_400_naming_the_parameter() {
    let server = ServerHandle::start().await;
    let now = Utc::now();
    let from = iso(now - chrono::Duration::hours(2));
    let to = iso(now);
    let ok = format!("granularity=hour&from={from}&to={to}");
    let cases = [
        (ok.clone(), "metric"),
        (format!("metric=nope&{ok}"), "metric"),
        (format!("metric=events&from={from}&to={to}"), "granularity"),
        (
            format!("metric=events&granularity=week&from={from}&to={to}"),
            "granularity",
        ),
        (format!("metric=events&granularity=hour&to={to}"), "from"),
        (
            format!("metric=events&granularity=hour&from=yesterday&to={to}"),
            "from",
        ),
        (format!("metric=events&granularity=hour&from={from}"), "to"),
        (
            format!("metric=events&granularity=hour&from={to}&to={from}"),
            "from",
        ),
        (format!("metric=events&{ok}&group_by=plan"), "group_by"),
        (
            format!("metric=active_users&{ok}&group_by=type"),
            "group_by",
        ),
        (format!("metric=events&{ok}&tz=Mars/Olympus"), "tz"),
        // 10,001 minutes.
        (
            format!(
                "metric=events&granularity=minute&from={}&to={to}",
                iso(now - chrono::Duration::minutes(10_000))
            ),
            "to",
        ),
        // The minute rollup keeps 48 hours.
        (
            format!(
                "metric=events&granularity=minute&from={}&to={to}",
                iso(now - chrono::Duration::hours(50))
            ),
            "from",
        ),
        // The hour rollup keeps 90 days.
        (
            format!(
                "metric=events&granularity=hour&from={}&to={to}",
                iso(now - chrono::Duration::days(100))
            ),
            "from",
        ),
    ];
    for (query, parameter) in cases {
        let (body, field) = refused(&server, &query).await;
        assert_eq!(field, parameter, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(parameter),
            "{body}"
        );
    }
    // A day a year back is still kept by the day rollup.
    let year = iso(now - chrono::Duration::days(365));
    let got = series(
        &server,
        &format!("metric=events&granularity=day&from={year}&to={to}"),
    )
    .await;
    assert!(got["buckets"].as_array().unwrap().len() >= 365);
}

/// Europe/Berlin leaves summer time on the last Sunday of October (2026-10-25, 03:00 CEST
/// becomes 02:00 CET): that local day lasts 25 hours and the hour 02:00 happens twice.
#[tokio::test]
async fn tz_aligns_days_and_hours_across_the_october_change() {
    // Hour buckets kept ten years, so these fixed dates stay within retention.
    let retention = Retention {
        hour_seconds: 3_650 * 86_400,
        ..Retention::default()
    };
    let mut config = common::test_config();
    config.rollup_retention = retention;
    let backend = Arc::new(MemoryBackend::new(BackendOptions {
        bounds: Bounds {
            rollup_retention: retention,
            ..Bounds::default()
        },
        ..BackendOptions::default()
    }));
    let server = ServerHandle::start_on(config, backend).await;
    let events = vec![
        // 00:30 local on the 25th (22:30 UTC on the 24th): the 25th in Berlin.
        signup("early", at("2026-10-24T22:30:00Z"), "organic"),
        // The first 02:30 (CEST) and the second 02:30 (CET).
        signup("first", at("2026-10-25T00:30:00Z"), "organic"),
        signup("second", at("2026-10-25T01:30:00Z"), "organic"),
        // 23:30 CET on the 25th (22:30 UTC): still the 25th in Berlin.
        signup("late", at("2026-10-25T22:30:00Z"), "organic"),
        // 00:30 CET on the 26th.
        signup("next", at("2026-10-25T23:30:00Z"), "organic"),
    ];
    ingest_and_apply(&server, events).await;
    let days = series(
        &server,
        "metric=signups&granularity=day&tz=Europe/Berlin\
         &from=2026-10-24T00:00:00%2B02:00&to=2026-10-27T00:00:00%2B01:00",
    )
    .await;
    assert_eq!(days["tz"], "Europe/Berlin");
    let got: Vec<(String, u64)> = days["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["start"].as_str().unwrap().to_string(),
                b["value"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("2026-10-24T00:00:00+02:00".to_string(), 0),
            ("2026-10-25T00:00:00+02:00".to_string(), 4),
            ("2026-10-26T00:00:00+01:00".to_string(), 1),
        ]
    );
    // The same range in UTC splits differently.
    let utc = series(
        &server,
        "metric=signups&granularity=day&from=2026-10-24T00:00:00Z&to=2026-10-26T00:00:00Z",
    )
    .await;
    let utc_values: Vec<u64> = utc["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["value"].as_u64().unwrap())
        .collect();
    assert_eq!(utc_values, [1, 4]);

    let hours = series(
        &server,
        "metric=signups&granularity=hour&tz=Europe/Berlin\
         &from=2026-10-25T02:00:00%2B02:00&to=2026-10-25T03:00:00%2B01:00",
    )
    .await;
    assert_eq!(
        hours["buckets"],
        json!([
            {"start": "2026-10-25T02:00:00+02:00", "value": 1},
            {"start": "2026-10-25T02:00:00+01:00", "value": 1},
        ])
    );
}

#[tokio::test]
async fn an_event_too_far_in_the_future_is_refused_naming_timestamp() {
    let server = ServerHandle::start().await;
    let ahead = Utc::now() + chrono::Duration::minutes(10);
    let r = server
        .post("/webhook/events", &signup("future", ahead, "organic"))
        .await;
    assert_eq!(r.status(), 400);
    let body = error_body(r).await;
    assert_eq!(body["details"][0]["field"], "timestamp", "{body}");
    // Within the allowed skew (300 s) it is accepted.
    let soon = Utc::now() + chrono::Duration::seconds(60);
    let r = server
        .post("/webhook/events", &signup("soon", soon, "organic"))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    // In a batch, only the future element is refused.
    let r = server
        .post(
            "/webhook/batch",
            &json!({"events": [signup("ok", Utc::now(), "ads"), signup("later", ahead, "ads")]}),
        )
        .await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error_details"][0]["index"], 1, "{body}");
    assert!(body["error_details"][0]["error"]
        .as_str()
        .unwrap()
        .contains("timestamp"));
}
