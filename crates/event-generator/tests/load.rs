//! `load` against a fake webhook: request counts, error accounting and `--verify`.

mod common;

use common::{run_generator, FakeOptions, FakeWebhook};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_at_200_per_second_for_1_second_sends_about_200_requests_without_errors() {
    let fake = FakeWebhook::start(FakeOptions::default()).await;
    let run = run_generator(
        &[
            "load",
            "--url",
            &fake.url,
            "--rate",
            "200",
            "--duration",
            "1",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    let report = run.json();
    let requests = report["requests"].as_u64().unwrap();
    assert!((190..=210).contains(&requests), "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["events_accepted"].as_u64(), Some(requests));
    assert_eq!(report["mode"], "open_loop");
    assert!(report["latency_measured_from"]
        .as_str()
        .unwrap()
        .starts_with("scheduled send time"));
    assert_eq!(report["latency_ms"]["count"].as_u64(), Some(requests));
    assert!(
        report["latency_ms"]["p99_9"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_closed_loop_stops_after_exactly_the_requested_events() {
    let fake = FakeWebhook::start(FakeOptions::default()).await;
    let run = run_generator(
        &[
            "load",
            "--url",
            &fake.url,
            "--rate",
            "0",
            "--events",
            "95",
            "--batch-size",
            "10",
            "--concurrency",
            "4",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    let report = run.json();
    assert_eq!(report["mode"], "closed_loop");
    assert_eq!(report["requests"], 10, "{report}");
    assert_eq!(report["events_sent"], 95, "{report}");
    assert_eq!(report["events_accepted"], 95, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_counted_by_status_and_exit_1() {
    // Every POST needs a signature this run does not send: all 401.
    let fake = FakeWebhook::start(FakeOptions {
        secret_key: Some(b"k".to_vec()),
        ..FakeOptions::default()
    })
    .await;
    let run = run_generator(
        &[
            "load", "--url", &fake.url, "--rate", "0", "--events", "20", "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(1), "{run}");
    let report = run.json();
    assert_eq!(report["errors"], 20, "{report}");
    assert_eq!(report["errors_by_status"]["401"], 20, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_the_drain_once_everything_is_processed() {
    let fake = FakeWebhook::start(FakeOptions::default()).await;
    let run = run_generator(
        &[
            "load",
            "--url",
            &fake.url,
            "--rate",
            "500",
            "--duration",
            "500ms",
            "--verify",
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{run}");
    let report = run.json();
    let verify = &report["verify"];
    assert_eq!(verify["complete"], true, "{report}");
    assert_eq!(verify["processed"], report["events_accepted"], "{report}");
    assert!(verify["drain_s"].as_f64().is_some(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_when_the_pipeline_does_not_drain() {
    let fake = FakeWebhook::start(FakeOptions {
        count_processed: false,
        ..FakeOptions::default()
    })
    .await;
    let run = run_generator(
        &[
            "load",
            "--url",
            &fake.url,
            "--rate",
            "0",
            "--events",
            "10",
            "--verify",
            "--timeout",
            "500ms",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(1), "{run}");
    assert!(run.stdout.contains("INCOMPLETE"), "{run}");
    assert!(run.stdout.contains("processed +0 of 10 accepted"), "{run}");
}
