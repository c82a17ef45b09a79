//! The invalid scenario: malformed requests that the webhook must refuse with a 4xx, never a
//! 5xx.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::checks::{tally, Check};
use super::{Scenario, ScenarioContext};
use crate::client::{BATCH_PATH, EVENTS_PATH, JSON};
use crate::events::{EventFactory, EventKind};

/// One malformed request and the status a webhook following docs/api.md ("Errors") answers.
struct BadRequest {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    /// What docs/api.md prescribes; any 4xx still passes, this only informs.
    typical: u16,
}

fn malformed_requests(factory: &mut EventFactory) -> Vec<BadRequest> {
    let valid = factory.event(EventKind::SubscriptionCreated).to_value();
    let with = |key: &str, value: Value| {
        let mut v = valid.clone();
        v[key] = value;
        serde_json::to_vec(&v).unwrap_or_default()
    };
    let without = |key: &str| {
        let mut v = valid.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove(key);
        }
        serde_json::to_vec(&v).unwrap_or_default()
    };
    let with_meta = |key: &str, value: Value| {
        let mut v = valid.clone();
        v["metadata"][key] = value;
        serde_json::to_vec(&v).unwrap_or_default()
    };
    let events = |name: &'static str| BadRequest {
        name,
        path: EVENTS_PATH,
        content_type: JSON,
        body: Vec::new(),
        typical: 400,
    };
    vec![
        BadRequest {
            body: br#"{"event_id": "evt_1", "event_type": "#.to_vec(),
            ..events("truncated JSON")
        },
        BadRequest {
            body: b"this is not json".to_vec(),
            ..events("plain text body")
        },
        BadRequest {
            body: Vec::new(),
            ..events("empty body")
        },
        BadRequest {
            body: serde_json::to_vec(&json!([valid.clone()])).unwrap_or_default(),
            ..events("JSON array instead of an object")
        },
        BadRequest {
            body: b"{}".to_vec(),
            ..events("empty object (every required field missing)")
        },
        BadRequest {
            body: without("event_id"),
            ..events("missing event_id")
        },
        BadRequest {
            body: without("timestamp"),
            ..events("missing timestamp")
        },
        BadRequest {
            body: with("event_id", json!(12345)),
            ..events("event_id is a number")
        },
        BadRequest {
            body: with("event_id", json!("evt with spaces")),
            ..events("event_id contains whitespace")
        },
        BadRequest {
            body: with("timestamp", json!("yesterday at noon")),
            ..events("timestamp is not RFC 3339")
        },
        BadRequest {
            body: with("metadata", json!("premium")),
            ..events("metadata is a string")
        },
        BadRequest {
            body: with_meta("amount", json!("99.99")),
            ..events("amount is a string")
        },
        BadRequest {
            body: with_meta("billing_cycle", json!("weekly")),
            ..events("billing_cycle is not monthly/annual")
        },
        BadRequest {
            content_type: "text/plain",
            body: serde_json::to_vec(&valid).unwrap_or_default(),
            typical: 415,
            ..events("valid event sent as text/plain")
        },
        BadRequest {
            path: BATCH_PATH,
            body: br#"{"events": []}"#.to_vec(),
            ..events("empty batch")
        },
        BadRequest {
            path: BATCH_PATH,
            body: serde_json::to_vec(&json!([valid])).unwrap_or_default(),
            ..events("batch without the events wrapper")
        },
    ]
}

pub(super) async fn invalid(ctx: &ScenarioContext) -> anyhow::Result<Check> {
    let client = &ctx.client;
    let requests = malformed_requests(&mut ctx.factory(Scenario::Invalid));
    let total = requests.len();
    let mut statuses = Vec::with_capacity(total);
    let mut wrong = Vec::new();
    let mut unusual = Vec::new();
    for request in requests {
        let reply = client
            .post(request.path, request.body, request.content_type)
            .await?;
        let status = reply.status.as_u16();
        statuses.push(status);
        if !(400..500).contains(&status) {
            wrong.push(format!("{} → {status} {}", request.name, reply.body_text()));
        } else if status != request.typical {
            unusual.push(format!(
                "{} → {status} (docs/api.md: {})",
                request.name, request.typical
            ));
        }
    }
    let mut observed = format!("{} for {total} payloads", tally(&statuses));
    if !wrong.is_empty() {
        let _ = write!(observed, "; not 4xx: {}", wrong.join("; "));
    }
    let note = (!unusual.is_empty()).then(|| unusual.join("; "));
    Ok(Check::new(wrong.is_empty(), Scenario::Invalid, observed).with_note(note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_a_dozen_malformed_payloads_none_of_them_valid() {
        let requests = malformed_requests(&mut EventFactory::new(1, 1, 1));
        assert!(requests.len() >= 12);
        for r in requests
            .iter()
            .filter(|r| r.path == EVENTS_PATH && r.content_type == JSON)
        {
            assert!(
                pipeline_core::event::Event::from_slice(&r.body).is_err(),
                "{} is valid",
                r.name
            );
        }
    }
}
