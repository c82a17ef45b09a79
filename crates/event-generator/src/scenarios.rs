//! The named scenarios of SPEC §8. Each one sends its events, then checks the outcome end to
//! end: the HTTP answers it got and the change in the pipeline-wide `/stats` counters, polled
//! until the expected change appears or the deadline passes.
//!
//! The counter checks compare deltas, so they assume no other traffic reaches the pipeline
//! while a scenario runs; an unexpected surplus is reported as such.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use pipeline_core::stats::PipelineStats;

use crate::client::{WebhookClient, BATCH_PATH, EVENTS_PATH, JSON};
use crate::events::{EventFactory, EventKind};

/// How often `/stats` is read while waiting for the pipeline.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The scenarios, in the order `all` runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Basic,
    Idempotency,
    Burst,
    Batch,
    Failures,
    Invalid,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Basic,
        Scenario::Idempotency,
        Scenario::Burst,
        Scenario::Batch,
        Scenario::Failures,
        Scenario::Invalid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Basic => "basic",
            Scenario::Idempotency => "idempotency",
            Scenario::Burst => "burst",
            Scenario::Batch => "batch",
            Scenario::Failures => "failures",
            Scenario::Invalid => "invalid",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::Basic => "one event of each type, accepted and processed",
            Scenario::Idempotency => "the same event 3 times: accepted once, applied once",
            Scenario::Burst => "50 random events sent concurrently",
            Scenario::Batch => "20 events in one /webhook/batch request",
            Scenario::Failures => "a transient and a permanent handler failure",
            Scenario::Invalid => "malformed payloads are refused with 4xx, never 5xx",
        }
    }
}

/// The result of one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// What one scenario expected and what it saw.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub scenario: &'static str,
    pub verdict: Verdict,
    pub description: &'static str,
    pub expected: String,
    pub observed: String,
    /// Why a scenario failed or was skipped, when the two lines above do not say it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub elapsed_ms: u64,
}

/// What every scenario needs.
pub struct ScenarioContext {
    pub client: WebhookClient,
    /// Fixes event contents.
    pub seed: u64,
    /// Keeps event ids unique across runs.
    pub run_nonce: u64,
    /// How long to wait for the pipeline to process what was accepted.
    pub timeout: Duration,
    /// How long the failures scenario waits: at least `timeout`, more when the configured
    /// retry backoff needs longer to dead-letter an event.
    pub failures_timeout: Duration,
}

impl ScenarioContext {
    /// An event factory whose content depends on the seed and the scenario only.
    fn factory(&self, scenario: Scenario) -> EventFactory {
        let stream = Scenario::ALL
            .iter()
            .position(|s| *s == scenario)
            .unwrap_or(0) as u16;
        EventFactory::new(self.seed, self.run_nonce, 0x100 + stream)
    }
}

/// Runs one scenario; an error on the way (webhook gone, `/stats` unreadable) is a FAIL.
pub async fn run(ctx: &ScenarioContext, scenario: Scenario) -> Outcome {
    let started = Instant::now();
    let result = match scenario {
        Scenario::Basic => basic(ctx).await,
        Scenario::Idempotency => idempotency(ctx).await,
        Scenario::Burst => burst(ctx).await,
        Scenario::Batch => batch(ctx).await,
        Scenario::Failures => failures(ctx).await,
        Scenario::Invalid => invalid(ctx).await,
    };
    let (verdict, expected, observed, note) = match result {
        Ok(c) => (c.verdict, c.expected, c.observed, c.note),
        Err(e) => (
            Verdict::Fail,
            expected_of(scenario).to_string(),
            format!("error: {e:#}"),
            None,
        ),
    };
    Outcome {
        scenario: scenario.name(),
        verdict,
        description: scenario.description(),
        expected,
        observed,
        note,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// The expectation of each scenario, also shown when it could not run to the end.
fn expected_of(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Basic => "3× 202, processed +3",
        Scenario::Idempotency => {
            "202, 200, 200 in that order (the 200s say duplicate_event), duplicates +2, processed +1"
        }
        Scenario::Burst => "50× 202, processed +50",
        Scenario::Batch => "202 with results.accepted 20, duplicates 0, errors 0; processed +20",
        Scenario::Failures => {
            "2× 202; transient processed after retries (processed +1, retried >= +2); \
             permanent dead-lettered (dead_lettered +1) and listed by /dlq"
        }
        Scenario::Invalid => "4xx for every malformed payload, no 5xx",
    }
}

/// A scenario's finding before timing is added.
struct Check {
    verdict: Verdict,
    expected: String,
    observed: String,
    note: Option<String>,
}

impl Check {
    fn new(pass: bool, scenario: Scenario, observed: String) -> Check {
        Check {
            verdict: if pass { Verdict::Pass } else { Verdict::Fail },
            expected: expected_of(scenario).to_string(),
            observed,
            note: None,
        }
    }

    fn with_note(mut self, note: Option<String>) -> Check {
        self.note = note;
        self
    }
}

/// How the counters moved since a scenario started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Delta {
    accepted: u64,
    duplicates: u64,
    processed: u64,
    failed: u64,
    retried: u64,
    dead_lettered: u64,
}

impl Delta {
    fn between(before: &PipelineStats, after: &PipelineStats) -> Delta {
        Delta {
            accepted: after.accepted.saturating_sub(before.accepted),
            duplicates: after.duplicates.saturating_sub(before.duplicates),
            processed: after.processed.saturating_sub(before.processed),
            failed: after.failed.saturating_sub(before.failed),
            retried: after.retried.saturating_sub(before.retried),
            dead_lettered: after.dead_lettered.saturating_sub(before.dead_lettered),
        }
    }
}

/// Reads `/stats` until `done` holds for the change since `before` or `timeout` passes.
/// Returns the last change seen and whether `done` held. Unreadable stats are retried until
/// the deadline; only if they never came back is that an error.
async fn wait_for(
    client: &WebhookClient,
    before: &PipelineStats,
    timeout: Duration,
    done: impl Fn(&Delta) -> bool,
) -> anyhow::Result<(Delta, bool)> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match client.stats().await {
            Ok(now) => {
                let delta = Delta::between(before, &now);
                if done(&delta) {
                    return Ok((delta, true));
                }
                last = Some(delta);
            }
            Err(e) if Instant::now() >= deadline => match last {
                Some(delta) => return Ok((delta, false)),
                None => return Err(e),
            },
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return Ok((last.unwrap_or_default(), false));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `"3× 202"` or `"2× 202, 1× 400"`, in order of status.
fn tally(statuses: &[u16]) -> String {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for s in statuses {
        *counts.entry(*s).or_default() += 1;
    }
    if counts.is_empty() {
        return "no answers".into();
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n}× {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A note for a processed surplus, which can only come from traffic other than ours.
fn surplus_note(got: u64, want: u64) -> Option<String> {
    (got > want).then(|| {
        format!(
            "processed grew by {got}, more than the {want} events sent: is other traffic \
             reaching the pipeline, or was an event applied twice?"
        )
    })
}

fn timeout_note(waited: bool, timeout: Duration) -> Option<String> {
    (!waited).then(|| {
        format!(
            "the pipeline did not get there within {:.0} s (--timeout): are consumers running?",
            timeout.as_secs_f64()
        )
    })
}

async fn basic(ctx: &ScenarioContext) -> anyhow::Result<Check> {
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

async fn idempotency(ctx: &ScenarioContext) -> anyhow::Result<Check> {
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

async fn burst(ctx: &ScenarioContext) -> anyhow::Result<Check> {
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

async fn batch(ctx: &ScenarioContext) -> anyhow::Result<Check> {
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

/// An event asking the consumer to fail as `simulate` says (SPEC §6.3).
fn failing_event(factory: &mut EventFactory, kind: EventKind, simulate: &str) -> (String, Vec<u8>) {
    let event = factory.event(kind);
    let mut value = event.to_value();
    value["metadata"]["simulate_failure"] = json!(simulate);
    (
        event.event_id,
        serde_json::to_vec(&value).unwrap_or_default(),
    )
}

async fn failures(ctx: &ScenarioContext) -> anyhow::Result<Check> {
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

/// One malformed request and the status a webhook following SPEC §5 answers.
struct BadRequest {
    name: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    /// What the SPEC prescribes; any 4xx still passes, this only informs.
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

async fn invalid(ctx: &ScenarioContext) -> anyhow::Result<Check> {
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
                "{} → {status} (SPEC suggests {})",
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

/// Runs the scenarios in order, printing each result as it comes (unless `json`), and returns
/// every outcome.
pub async fn run_many(ctx: &ScenarioContext, scenarios: &[Scenario], json: bool) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(scenarios.len());
    for scenario in scenarios {
        let outcome = run(ctx, *scenario).await;
        if !json {
            print_outcome(&outcome);
        }
        outcomes.push(outcome);
    }
    outcomes
}

fn print_outcome(o: &Outcome) {
    println!(
        "{}  {:<12} {} ({:.2} s)",
        o.verdict.label(),
        o.scenario,
        o.description,
        o.elapsed_ms as f64 / 1000.0
    );
    println!("      expected: {}", o.expected);
    println!("      observed: {}", o.observed);
    if let Some(note) = &o.note {
        println!("      note:     {note}");
    }
}

/// Counts of each verdict, and the exit status they mean (0 unless something failed).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Summary {
    pub fn of(outcomes: &[Outcome]) -> Summary {
        let count = |v| outcomes.iter().filter(|o| o.verdict == v).count();
        Summary {
            passed: count(Verdict::Pass),
            failed: count(Verdict::Fail),
            skipped: count(Verdict::Skip),
        }
    }

    pub fn exit_code(&self) -> i32 {
        if self.failed > 0 {
            pipeline_core::runtime::exit::FAILURE
        } else {
            pipeline_core::runtime::exit::OK
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_groups_statuses_in_order() {
        assert_eq!(tally(&[202, 400, 202]), "2× 202, 1× 400");
        assert_eq!(tally(&[]), "no answers");
    }

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

    #[test]
    fn a_failed_scenario_makes_the_exit_status_1_and_a_skip_does_not() {
        let outcome = |verdict| Outcome {
            scenario: "x",
            verdict,
            description: "",
            expected: String::new(),
            observed: String::new(),
            note: None,
            elapsed_ms: 0,
        };
        let ok = [outcome(Verdict::Pass), outcome(Verdict::Skip)];
        assert_eq!(Summary::of(&ok).exit_code(), 0);
        let bad = [outcome(Verdict::Pass), outcome(Verdict::Fail)];
        assert_eq!(Summary::of(&bad).exit_code(), 1);
    }
}
