//! The failures scenario: a transient handler failure that retries recover and a permanent one
//! that ends in the dead-letter queue.

use std::fmt::Write as _;

use serde_json::json;

use super::checks::{tally, timeout_note, wait_for, Check};
use super::{expected_of, Scenario, ScenarioContext, Verdict};
use crate::client::{EVENTS_PATH, JSON};
use crate::events::{EventFactory, EventKind};

/// An event asking the consumer to fail as `simulate` says (`metadata.simulate_failure` in
/// docs/api.md, "Events").
fn failing_event(factory: &mut EventFactory, kind: EventKind, simulate: &str) -> (String, Vec<u8>) {
    let event = factory.event(kind);
    let mut value = event.to_value();
    value["metadata"]["simulate_failure"] = json!(simulate);
    (
        event.event_id,
        serde_json::to_vec(&value).unwrap_or_default(),
    )
}

pub(super) async fn failures(ctx: &ScenarioContext) -> anyhow::Result<Check> {
    let client = &ctx.client;
    let mut factory = ctx.factory(Scenario::Failures);
    let (_, transient) = failing_event(&mut factory, EventKind::UsageTracked, "transient:2");
    let (permanent_id, permanent) =
        failing_event(&mut factory, EventKind::SubscriptionCreated, "permanent");
    let before = client.stats().await?;
    let statuses = vec![
        client
            .post(EVENTS_PATH, transient, JSON)
            .await?
            .status
            .as_u16(),
        client
            .post(EVENTS_PATH, permanent, JSON)
            .await?
            .status
            .as_u16(),
    ];
    if statuses != [202, 202] {
        return Ok(Check::new(
            false,
            Scenario::Failures,
            format!("{} (expected both accepted)", tally(&statuses)),
        ));
    }
    // Settled: the transient one processed and the permanent one parked, or both processed
    // (fault injection off), or both parked (too few retries configured).
    let (delta, reached) = wait_for(client, &before, ctx.failures_timeout, |d| {
        (d.processed >= 1 && d.dead_lettered >= 1) || d.processed >= 2 || d.dead_lettered >= 2
    })
    .await?;
    let mut observed = format!(
        "{}; processed +{}, failed +{}, retried +{}, dead_lettered +{}",
        tally(&statuses),
        delta.processed,
        delta.failed,
        delta.retried,
        delta.dead_lettered
    );
    if delta.processed >= 2 && delta.failed == 0 && delta.retried == 0 {
        return Ok(Check {
            verdict: Verdict::Skip,
            expected: expected_of(Scenario::Failures).to_string(),
            observed,
            note: Some(
                "fault injection is off: both events were processed at their first attempt. \
                 Start the consumers with DAY15_FAULT_INJECTION=true to run this scenario."
                    .into(),
            ),
        });
    }
    let mut note = timeout_note(reached, ctx.failures_timeout);
    if delta.dead_lettered >= 2 {
        note = Some(
            "the transient event was dead-lettered too: DAY15_MAX_RETRIES must be at least 2"
                .into(),
        );
    }
    let settled_as_specified = delta.processed == 1 && delta.dead_lettered == 1;
    let listed = if settled_as_specified {
        let listed = client.dlq_contains(&permanent_id).await?;
        let _ = write!(
            observed,
            "; /dlq {} {permanent_id}",
            if listed { "lists" } else { "does not list" }
        );
        listed
    } else {
        false
    };
    let pass = settled_as_specified && delta.retried >= 2 && listed;
    Ok(Check::new(pass, Scenario::Failures, observed).with_note(note))
}
