//! A backend that stops answering: the consumer waits it out, logs once per state change, and
//! loses nothing. (One test in this file: it owns the process's log subscriber.)
mod common;

use std::sync::Arc;

use common::*;
use pipeline_core::analytics::counters;
use pipeline_core::backend::Backend as _;
use pipeline_core::config::{LogFormat, LogLevel};
use pipeline_core::testkit::wait::eventually;
use pipeline_core::testkit::{FaultMode, FaultyBackend};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test]
async fn an_outage_is_waited_out_logged_once_each_way_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("consumer.log");
    let _logs = pipeline_core::logging::init_with(
        "consumer",
        LogLevel::Info,
        LogFormat::Text,
        Some(&log_path),
    )
    .unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let config = config(&[]);
    let memory = memory_backend(&config);
    let flaky = Arc::new(FaultyBackend::over(memory.clone(), FaultMode::Up));
    flaky.set_claims_down(true);
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer::run(config, flaky.clone(), shutdown.clone()));

    // Phase 1: claims fail. The consumer keeps trying (it does not exit) and says so once.
    enqueue(&memory, vec![signup("evt_1", "u1", json!({}))]).await;
    eventually("several failed claims", DEADLINE, || async {
        (flaky.failures() >= 4).then_some(())
    })
    .await;
    assert!(
        !running.is_finished(),
        "an outage must not end the consumer"
    );
    flaky.set_claims_down(false);
    counter_reaches(&memory, counters::PROCESSED, 1).await;

    // Phase 2: the claim works but the settle fails twice; it is retried, applied once.
    let before = flaky.failures();
    flaky.fail_next_settles(2);
    enqueue(&memory, vec![signup("evt_2", "u2", json!({}))]).await;
    counter_reaches(&memory, counters::PROCESSED, 2).await;
    assert_eq!(flaky.failures(), before + 2);

    shutdown.cancel();
    let stats = tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((stats.processed, stats.batches), (2, 2));
    let stored = metrics(&memory).await;
    assert_eq!(stored.counter(counters::PROCESSED), 2);
    // Written with the figures at shutdown: every failed call, and each settle attempt (one
    // for the first batch, three for the second) under its operation.
    let errors = stored.map(&format!("consumer_call_errors:{}", stats.consumer));
    assert_eq!(errors.get("claim"), Some(&(before as f64)), "{errors:?}");
    assert_eq!(errors.get("settle"), Some(&2.0), "{errors:?}");
    let settles: f64 = stored
        .map(&format!(
            "consumer_call_duration_us:settle:{}",
            stats.consumer
        ))
        .values()
        .sum();
    assert_eq!(settles, 4.0);
    assert_eq!(memory.depths().await.unwrap().queue, 0);

    eventually("the statistics block in the log", DEADLINE, || async {
        read_log().contains("PROCESSING STATISTICS").then_some(())
    })
    .await;
    let log = read_log();
    assert_eq!(count_lines(&log, "Backend unavailable: "), 2, "{log}");
    assert_eq!(count_lines(&log, "Backend available again"), 2, "{log}");
    assert_eq!(
        count_lines(&log, "Processing batch of 1 events"),
        2,
        "{log}"
    );
    assert_eq!(
        count_lines(&log, "Batch complete: 1 success, 0 failed"),
        2,
        "{log}"
    );
    assert_eq!(
        count_lines(&log, "User signup: u1 from unknown"),
        1,
        "{log}"
    );
    assert!(
        log.lines().any(|l| l
            .contains(" - consumer - INFO - Processed user_signup (evt_1) - latency: ")
            && l.ends_with("ms")),
        "{log}"
    );
}
