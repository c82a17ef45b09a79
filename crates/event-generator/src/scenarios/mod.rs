//! The named scenarios (README, "Try it"; `event-generator --help` lists them). Each one sends
//! its events, then checks the outcome end to end: the HTTP answers it got and the change in the
//! pipeline-wide `/stats` counters, polled until the expected change appears or the deadline
//! passes.
//!
//! The counter checks compare deltas, so they assume no other traffic reaches the pipeline
//! while a scenario runs; an unexpected surplus is reported as such.

mod checks;
mod failures;
mod happy;
mod invalid;
mod report;

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::WebhookClient;
use crate::events::EventFactory;

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
        Scenario::Basic => happy::basic(ctx).await,
        Scenario::Idempotency => happy::idempotency(ctx).await,
        Scenario::Burst => happy::burst(ctx).await,
        Scenario::Batch => happy::batch(ctx).await,
        Scenario::Failures => failures::failures(ctx).await,
        Scenario::Invalid => invalid::invalid(ctx).await,
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

/// Runs the scenarios in order, printing each result as it comes (unless `json`), and returns
/// every outcome.
pub async fn run_many(ctx: &ScenarioContext, scenarios: &[Scenario], json: bool) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(scenarios.len());
    for scenario in scenarios {
        let outcome = run(ctx, *scenario).await;
        if !json {
            report::print_outcome(&outcome);
        }
        outcomes.push(outcome);
    }
    outcomes
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
