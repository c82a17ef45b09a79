//! The scenarios where everything goes right: single events, a repeated one, a concurrent
//! burst and a batch, each expected to be accepted and processed exactly once.

use std::fmt::Write as _;
use std::time::Instant;

use serde_json::Value;

use super::checks::{surplus_note, tally, timeout_note, wait_for, Check};
use super::{Scenario, ScenarioContext};
use crate::client::{BATCH_PATH, EVENTS_PATH, JSON};
use crate::events::EventKind;

pub(super) async fn basic(ctx: &ScenarioContext) -> anyhow::Result<Check> {
    let client = &ctx.client;
    let mut factory = ctx.factory(Scenario::Basic);
    let before = client.stats().await?;
    let mut statuses = Vec::new();
    for kind in EventKind::ALL {
        let reply = client
            .post(EVENTS_PATH, factory.event(kind).to_bytes(), JSON)
            .await?;
        statuses.push(reply.status.as_u16());
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count() as u64;
    let (delta, reached) =
        wait_for(client, &before, ctx.timeout, |d| d.processed >= accepted).await?;
    let pass = accepted == 3 && delta.processed == 3;
    let note = surplus_note(delta.processed, 3).or(timeout_note(reached, ctx.timeout));
    Ok(Check::new(
        pass,
        Scenario::Basic,
        format!("{}, processed +{}", tally(&statuses), delta.processed),
    )
    .with_note(note))
}

pub(super) async fn idempotency(ctx: &ScenarioContext) -> anyhow::Result<Check> {
    let client = &ctx.client;
    let event = ctx.factory(Scenario::Idempotency).random_event().to_bytes();
    let before = client.stats().await?;
    let mut statuses = Vec::new();
    let mut duplicate_bodies_ok = true;
    let mut first_wrong_body = None;
    for attempt in 0..3 {
        let reply = client.post(EVENTS_PATH, event.clone(), JSON).await?;
        statuses.push(reply.status.as_u16());
        if attempt > 0 {
            let body = reply.json().unwrap_or(Value::Null);
            let ok = reply.status == 200
                && body["status"] == "ignored"
                && body["reason"] == "duplicate_event";
            if !ok && first_wrong_body.is_none() {
                first_wrong_body = Some(reply.body_text());
            }
            duplicate_bodies_ok &= ok;
        }
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count() as u64;
    let (delta, reached) =
        wait_for(client, &before, ctx.timeout, |d| d.processed >= accepted).await?;
    let pass = statuses == [202, 200, 200]
        && duplicate_bodies_ok
        && delta.duplicates == 2
        && delta.processed == 1;
    let in_order: Vec<String> = statuses.iter().map(u16::to_string).collect();
    let mut observed = format!(
        "{} in that order, duplicates +{}, processed +{}",
        in_order.join(", "),
        delta.duplicates,
        delta.processed
    );
    if let Some(body) = first_wrong_body {
        let _ = write!(observed, "; a repeat answered {body}");
    }
    let note = surplus_note(delta.processed, 1).or(timeout_note(reached, ctx.timeout));
    Ok(Check::new(pass, Scenario::Idempotency, observed).with_note(note))
}

pub(super) async fn burst(ctx: &ScenarioContext) -> anyhow::Result<Check> {
    const EVENTS: usize = 50;
    let client = &ctx.client;
    let mut factory = ctx.factory(Scenario::Burst);
    let bodies: Vec<Vec<u8>> = (0..EVENTS)
        .map(|_| factory.random_event().to_bytes())
        .collect();
    let before = client.stats().await?;
    let started = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for body in bodies {
        let client = client.clone();
        sends.spawn(async move { client.post(EVENTS_PATH, body, JSON).await });
    }
    let mut statuses = Vec::with_capacity(EVENTS);
    while let Some(joined) = sends.join_next().await {
        statuses.push(joined??.status.as_u16());
    }
    let sent_in = started.elapsed();
    let accepted = statuses.iter().filter(|s| **s == 202).count() as u64;
    let (delta, reached) =
        wait_for(client, &before, ctx.timeout, |d| d.processed >= accepted).await?;
    let processed_in = started.elapsed();
    let pass = accepted == EVENTS as u64 && delta.processed == EVENTS as u64;
    let note = surplus_note(delta.processed, EVENTS as u64).or(timeout_note(reached, ctx.timeout));
    Ok(Check::new(
        pass,
        Scenario::Burst,
        format!(
            "{} in {:.3} s, processed +{} after {:.3} s",
            tally(&statuses),
            sent_in.as_secs_f64(),
            delta.processed,
            processed_in.as_secs_f64()
        ),
    )
    .with_note(note))
}

pub(super) async fn batch(ctx: &ScenarioContext) -> anyhow::Result<Check> {
    const EVENTS: u64 = 20;
    let client = &ctx.client;
    let body = ctx.factory(Scenario::Batch).batch_body(EVENTS as usize);
    let before = client.stats().await?;
    let reply = client.post(BATCH_PATH, body, JSON).await?;
    let answer = reply.json().unwrap_or(Value::Null);
    let results = &answer["results"];
    let count = |key: &str| results[key].as_u64();
    let accepted = count("accepted").unwrap_or(0);
    let (delta, reached) =
        wait_for(client, &before, ctx.timeout, |d| d.processed >= accepted).await?;
    let pass = reply.status == 202
        && count("accepted") == Some(EVENTS)
        && count("duplicates") == Some(0)
        && count("errors") == Some(0)
        && delta.processed == EVENTS;
    let answer_text = if results.is_object() {
        format!(
            "results.accepted {}, duplicates {}, errors {}",
            results["accepted"], results["duplicates"], results["errors"]
        )
    } else {
        format!("body {}", reply.body_text())
    };
    let note = surplus_note(delta.processed, EVENTS).or(timeout_note(reached, ctx.timeout));
    Ok(Check::new(
        pass,
        Scenario::Batch,
        format!(
            "{} with {answer_text}; processed +{}",
            reply.status.as_u16(),
            delta.processed
        ),
    )
    .with_note(note))
}
