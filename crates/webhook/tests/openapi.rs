//! The OpenAPI contract (docs/openapi.json, `GET /openapi.json`): the committed file is the
//! generated one, the server serves it, and the disagreements the schema fuzzer found between
//! the contract and the handlers stay fixed.

mod common;

use common::{test_config, ServerHandle};
use serde_json::{json, Value};

const TOKEN: &str = "openapi-test-token";

fn contract() -> Value {
    serde_json::from_str(&webhook::openapi::json()).expect("the contract is JSON")
}

#[test]
fn openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == webhook::openapi::json(),
        "docs/openapi.json differs from the contract the handlers declare: \
         run `cargo run -p webhook --example openapi` and commit the result"
    );
}

#[test]
fn contract_is_openapi_3_1_and_lists_every_route() {
    let doc = contract();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes = [
        ("/webhook/events", "post"),
        ("/webhook/batch", "post"),
        ("/health", "get"),
        ("/stats", "get"),
        ("/metrics", "get"),
        ("/analytics", "get"),
        ("/analytics/timeseries", "get"),
        ("/analytics/stream", "get"),
        ("/dashboard", "get"),
        ("/dlq", "get"),
        ("/dlq/replay", "post"),
        ("/dlq/purge", "post"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in routes {
        let responses = &doc["paths"][path][method]["responses"];
        assert!(responses.is_object(), "{method} {path} is not documented");
        // Every route can answer 408 and 421 (docs/api.md, answers every route can give).
        for status in ["408", "421"] {
            assert!(
                responses[status].is_object(),
                "{method} {path} lacks {status}"
            );
        }
    }
    assert_eq!(
        doc["paths"].as_object().map(|p| p.len()),
        Some(routes.len())
    );
}

#[tokio::test]
async fn the_server_serves_the_contract() {
    let server = ServerHandle::start().await;
    let response = server.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, contract());
}

/// Found by the fuzzer: `offset` was declared `int64`, but the server takes any `usize`
/// (a large offset is an empty page, not an error).
#[tokio::test]
async fn a_dlq_offset_beyond_int64_is_a_valid_empty_page() {
    let schema = &contract()["paths"]["/dlq"]["get"]["parameters"][1]["schema"];
    assert_eq!(schema["maximum"], json!(u64::MAX));
    assert!(schema.get("format").is_none(), "{schema}");
    let server = ServerHandle::start().await;
    let page = server.get("/dlq?offset=9223372036854775808").await;
    assert_eq!(page.status(), 200);
    let page: Value = page.json().await.unwrap();
    assert_eq!(page["entries"], json!([]));
}

/// Found by the fuzzer: a batch element that is not a valid event is reported in the answer,
/// not refused with the request, so the contract accepts any element.
#[tokio::test]
async fn a_batch_of_invalid_elements_is_judged_not_refused() {
    let items = &contract()["components"]["schemas"]["Batch"]["properties"]["events"]["items"];
    assert_eq!(items, &json!({}));
    let server = ServerHandle::start().await;
    let body = json!({"events": [0, {"event_id": "x", "timestamp": "C", "event_type": "a"}]});
    let response = server.post("/webhook/batch", &body).await;
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"]["errors"], 2);
}

/// Found by the fuzzer: `{"all": true}` with any other `event_ids` than `null` (or a selection
/// by ids with `"all": true`) is refused, so the contract's two forms exclude each other.
#[tokio::test]
async fn a_replay_selection_names_exactly_one_form() {
    let forms = &contract()["components"]["schemas"]["ReplayRequest"]["oneOf"];
    assert_eq!(forms[0]["properties"]["all"]["enum"], json!([false, null]));
    assert_eq!(forms[1]["properties"]["all"]["enum"], json!([true]));
    assert_eq!(forms[1]["properties"]["event_ids"]["type"], "null");
    let mut config = test_config();
    config.http.admin_token = Some(TOKEN.into());
    let server = ServerHandle::start_with(config).await;
    let replay = |body: Value| {
        server
            .client
            .post(server.url("/dlq/replay"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    for refused in [
        json!({"all": true, "event_ids": 2.7e16}),
        json!({"all": true, "event_ids": []}),
        json!({"all": false}),
    ] {
        assert_eq!(
            replay(refused.clone()).await.unwrap().status(),
            400,
            "{refused}"
        );
    }
    for accepted in [
        json!({"all": true, "event_ids": null}),
        json!({"event_ids": ["evt_1"], "all": false}),
    ] {
        assert_eq!(
            replay(accepted.clone()).await.unwrap().status(),
            200,
            "{accepted}"
        );
    }
}
