//! Every scenario against a fake webhook: the verdict printed and the exit status.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{run_generator, FakeOptions, FakeWebhook};
use pipeline_core::testkit::free_port;

async fn passes_against_a_conforming_webhook(scenario: &str) {
    let fake = FakeWebhook::start(FakeOptions::default()).await;
    let run = run_generator(&[scenario, "--url", &fake.url, "--seed", "7"], &[]).await;
    println!("{run}");
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains(&format!("PASS  {scenario}")), "{run}");
    assert!(run.stdout.contains("expected: "), "{run}");
    assert!(run.stdout.contains("observed: "), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_passes_and_exits_0() {
    passes_against_a_conforming_webhook("basic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_passes_and_exits_0() {
    passes_against_a_conforming_webhook("idempotency").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_passes_and_exits_0() {
    passes_against_a_conforming_webhook("burst").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_passes_and_exits_0() {
    passes_against_a_conforming_webhook("batch").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_passes_with_fault_injection_and_exits_0() {
    passes_against_a_conforming_webhook("failures").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_passes_and_exits_0() {
    passes_against_a_conforming_webhook("invalid").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_is_the_default_and_json_reports_every_scenario() {
    let fake = FakeWebhook::start(FakeOptions::default()).await;
    let run = run_generator(&["--url", &fake.url, "--json"], &[]).await;
    assert_eq!(run.code, Some(0), "{run}");
    let doc = run.json();
    let names: Vec<&str> = doc["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "basic",
            "idempotency",
            "burst",
            "batch",
            "failures",
            "invalid"
        ]
    );
    for s in doc["scenarios"].as_array().unwrap() {
        assert_eq!(s["verdict"], "pass", "{s}");
    }
    assert_eq!(doc["summary"]["passed"], 6);
    assert_eq!(doc["exit_code"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_is_skipped_with_a_clear_message_when_fault_injection_is_off() {
    let fake = FakeWebhook::start(FakeOptions {
        fault_injection: false,
        ..FakeOptions::default()
    })
    .await;
    let run = run_generator(&["failures", "--url", &fake.url], &[]).await;
    assert_eq!(run.code, Some(0), "{run}");
    assert!(run.stdout.contains("SKIP  failures"), "{run}");
    assert!(run.stdout.contains("fault injection is off"), "{run}");
    assert!(run.stdout.contains("DAY15_FAULT_INJECTION=true"), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_that_never_processes_fails_the_scenario_and_exits_1() {
    let fake = FakeWebhook::start(FakeOptions {
        count_processed: false,
        ..FakeOptions::default()
    })
    .await;
    let run = run_generator(&["basic", "--url", &fake.url, "--timeout", "1"], &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.contains("FAIL  basic"), "{run}");
    assert!(
        run.stdout.contains("expected: 3× 202, processed +3"),
        "{run}"
    );
    assert!(
        run.stdout.contains("observed: 3× 202, processed +0"),
        "{run}"
    );
    assert!(run.stdout.contains("are consumers running?"), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_without_duplicate_detection_fails_idempotency() {
    let fake = FakeWebhook::start(FakeOptions {
        dedupe: false,
        ..FakeOptions::default()
    })
    .await;
    let run = run_generator(&["idempotency", "--url", &fake.url], &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.contains("FAIL  idempotency"), "{run}");
    assert!(
        run.stdout.contains("observed: 202, 202, 202 in that order"),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_to_malformed_payloads_fails_invalid() {
    let fake = FakeWebhook::start(FakeOptions {
        invalid_status: StatusCode::INTERNAL_SERVER_ERROR,
        ..FakeOptions::default()
    })
    .await;
    let run = run_generator(&["invalid", "--url", &fake.url], &[]).await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.contains("FAIL  invalid"), "{run}");
    assert!(
        run.stdout.contains("not 4xx: truncated JSON → 500"),
        "{run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_exits_2_within_3_seconds_naming_the_url() {
    // A port that was just free: nothing listens there.
    let port = free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let run = run_generator(&["--url", &url], &[]).await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.elapsed < Duration::from_secs(3),
        "took {:?}",
        run.elapsed
    );
    assert!(run.stderr.contains(&url), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_url_comes_from_the_configured_webhook_port() {
    let port = free_port().unwrap();
    let run = run_generator(&["basic"], &[("DAY15_WEBHOOK_PORT", &port.to_string())]).await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(
        run.stderr.contains(&format!("http://127.0.0.1:{port}")),
        "localhost is reached as 127.0.0.1: {run}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_2_listing_the_problem() {
    let run = run_generator(&["basic"], &[("DAY15_WEBHOOK_PORT", "not-a-port")]).await;
    assert_eq!(run.code, Some(2), "{run}");
    assert!(run.stderr.contains("DAY15_WEBHOOK_PORT"), "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_webhook_is_reported_as_json_when_asked() {
    let port = free_port().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let run = run_generator(&["load", "--url", &url, "--json"], &[]).await;
    assert_eq!(run.code, Some(2), "{run}");
    let doc = run.json();
    assert_eq!(doc["error"], "unreachable");
    assert_eq!(doc["url"], url.as_str());
}
