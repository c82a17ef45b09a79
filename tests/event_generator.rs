//! End-to-end: the built `event-generator` against the real pipeline (orchestrator, webhook
//! and consumer on a temp SQLite file): every scenario passes and exits 0, `failures` is
//! skipped without fault injection, an unreachable webhook is exit 2, and a short verified load
//! run drains completely without errors.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const START: Duration = Duration::from_secs(30);
/// Longest one generator run may take here: its own end-to-end waits are 30 s at most.
const RUN: Duration = Duration::from_secs(60);

/// A finished generator run: its exit code and everything it printed.
struct Run {
    code: Option<i32>,
    output: String,
}

impl Run {
    /// The verdict lines, e.g. `PASS  basic`, without the description that follows.
    fn verdicts(&self) -> Vec<String> {
        self.output
            .lines()
            .filter(|l| {
                ["PASS  ", "FAIL  ", "SKIP  "]
                    .iter()
                    .any(|v| l.starts_with(v))
            })
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("  "))
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}, output:\n{}", self.code, self.output)
    }
}

/// Runs `event-generator` with the pipeline's settings and waits for it to exit.
fn generator(p: &Pipeline, args: &[&str], within: Duration) -> Run {
    let mut run = p.spawn("event-generator", args);
    let status = run.wait_timeout(within);
    let output = run.output();
    let Some(status) = status else {
        panic!("event-generator {args:?} still running after {within:?}; output:\n{output}");
    };
    Run {
        code: status.code(),
        output,
    }
}

/// A running pipeline; `fault_injection` turns on `metadata.simulate_failure` (docs/guarantees.md)
/// with quick retries.
fn start_pipeline(fault_injection: bool) -> (Pipeline, Proc) {
    let mut p = Pipeline::sqlite();
    p.set("DAY15_BATCH_TIMEOUT_SECONDS", "0.2");
    if fault_injection {
        p.set("DAY15_FAULT_INJECTION", "true")
            .set("DAY15_RETRY_DELAY_SECONDS", "0.05")
            .set("DAY15_MAX_RETRIES", "3");
    }
    let orchestrator = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    (p, orchestrator)
}

#[test]
fn every_scenario_passes_against_the_real_pipeline_and_exits_0() {
    let (p, _orchestrator) = start_pipeline(true);
    let url = p.url("");
    let mut failures = Vec::new();
    for scenario in [
        "basic",
        "idempotency",
        "burst",
        "batch",
        "failures",
        "invalid",
    ] {
        let run = generator(&p, &[scenario, "--url", &url, "--seed", "15"], RUN);
        let passed = run.code == Some(0) && run.verdicts() == [format!("PASS  {scenario}")];
        if !passed {
            failures.push(format!("`event-generator {scenario}`: {run}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\npipeline log:\n{}",
        failures.join("\n"),
        p.log()
    );

    // `all` runs the six in turn against the same pipeline, each judged on its own change.
    let run = generator(&p, &["all", "--url", &url, "--json"], RUN);
    assert_eq!(run.code, Some(0), "{run}");
    let doc = json_document(&run.output).unwrap_or_else(|| panic!("no JSON document: {run}"));
    let verdicts: Vec<(&str, &str)> = doc["scenarios"]
        .as_array()
        .unwrap_or_else(|| panic!("no scenarios: {run}"))
        .iter()
        .map(|s| {
            (
                s["scenario"].as_str().unwrap_or("?"),
                s["verdict"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("basic", "pass"),
            ("idempotency", "pass"),
            ("burst", "pass"),
            ("batch", "pass"),
            ("failures", "pass"),
            ("invalid", "pass"),
        ],
        "{run}"
    );
}

#[test]
fn failures_without_fault_injection_is_skipped_with_exit_0() {
    let (p, _orchestrator) = start_pipeline(false);
    let run = generator(&p, &["failures", "--url", &p.url("")], RUN);
    assert_eq!(run.code, Some(0), "{run}");
    assert_eq!(run.verdicts(), ["SKIP  failures"], "{run}");
    assert!(run.output.contains("DAY15_FAULT_INJECTION=true"), "{run}");
}

#[test]
fn an_unreachable_webhook_exits_2_within_3_s_naming_the_url() {
    // Nothing was started: nobody listens on the pipeline's port.
    let p = Pipeline::sqlite();
    let url = p.url("");
    let run = generator(&p, &["basic", "--url", &url], Duration::from_secs(3));
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.output.contains(&url), "{run}");
}

#[test]
fn a_short_verified_load_has_no_errors_and_drains_completely() {
    let (p, _orchestrator) = start_pipeline(false);
    let run = generator(
        &p,
        &[
            "load",
            "--rate",
            "500",
            "--duration",
            "2",
            "--json",
            "--verify",
            "--url",
            &p.url(""),
        ],
        RUN,
    );
    assert_eq!(run.code, Some(0), "{run}");
    let report = json_document(&run.output).unwrap_or_else(|| panic!("no JSON report: {run}"));
    assert_eq!(report["errors"], 0, "{run}");
    assert_eq!(report["interrupted"], false, "{run}");
    let sent = report["events_sent"].as_u64().unwrap_or(0);
    assert!(sent > 0, "{run}");
    assert_eq!(report["events_accepted"], sent, "{run}");
    let verify = &report["verify"];
    assert_eq!(verify["complete"], true, "{run}");
    assert_eq!(verify["expected"], sent, "{run}");
    assert_eq!(verify["processed"], sent, "{run}");
    assert_eq!(verify["queue_depth"], 0, "{run}");
    assert_eq!(p.stats()["processed"], sent, "the pipeline's own count");
}

/// The JSON document a `--json` run printed (its output may hold stderr lines too).
fn json_document(output: &str) -> Option<Value> {
    let start = output
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| output.starts_with('{').then_some(0))?;
    serde_json::Deserializer::from_str(&output[start..])
        .into_iter::<Value>()
        .next()?
        .ok()
}

/// `backfill` sends each past day's events with that day's timestamps: once processed, the
/// day buckets of `/analytics/timeseries` hold exactly what it reports per day.
#[test]
fn a_backfill_fills_the_day_buckets_it_reports() {
    let (p, _orchestrator) = start_pipeline(false);
    let url = p.url("");
    let run = generator(
        &p,
        &[
            "backfill",
            "--days",
            "4",
            "--events-per-day",
            "60",
            "--batch-size",
            "50",
            "--url",
            &url,
            "--json",
        ],
        RUN,
    );
    assert_eq!(run.code, Some(0), "{run}");
    let doc = json_document(&run.output).unwrap_or_else(|| panic!("no JSON document: {run}"));
    assert_eq!(doc["sent"], 240, "{doc}");
    assert_eq!(doc["accepted"], 240, "{doc}");
    p.wait_stat("processed", 240, START);
    let per_day = doc["per_day"].as_object().expect("per_day");
    let first = per_day.keys().next().expect("a day");
    let series = p.get_ok(&format!(
        "/analytics/timeseries?metric=events&granularity=day&from={first}T00:00:00Z&to={}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    let got: Vec<(String, u64)> = series["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            (
                b["start"].as_str().unwrap_or("")[..10].to_string(),
                b["value"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = per_day
        .iter()
        .map(|(day, n)| (day.clone(), n.as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(got, want, "{series}");
}
