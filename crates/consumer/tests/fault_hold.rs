//! DAY15_FAULT_HOLD_BATCH: a consumer holds its N-th batch unsettled until it is stopped, says
//! so in its log, and leaves the batch to its lease, as a crash would. (One test in this file:
//! it owns the process's log subscriber.)
mod common;

use common::*;
use pipeline_core::analytics::counters;
use pipeline_core::backend::Backend as _;
use pipeline_core::config::{LogFormat, LogLevel};
use pipeline_core::testkit::wait::eventually;
use serde_json::json;

#[tokio::test]
async fn a_held_batch_is_left_unsettled_and_delivered_again_after_its_lease() {
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

    let lease = [
        ("DAY15_BATCH_SIZE", "2"),
        ("DAY15_VISIBILITY_TIMEOUT_SECONDS", "0.5"),
    ];
    let holding = config(
        &[
            &lease[..],
            &[
                ("DAY15_FAULT_INJECTION", "true"),
                ("DAY15_FAULT_HOLD_BATCH", "2"),
            ],
        ]
        .concat(),
    );
    let backend = memory_backend(&holding);
    let ids = ["evt_1", "evt_2", "evt_3", "evt_4"];
    enqueue(
        &backend,
        ids.iter().map(|id| signup(id, "u1", json!({}))).collect(),
    )
    .await;

    // The first batch is settled; the second is held, whatever the timing.
    let consumer = start(holding, &backend);
    eventually("the hold to be logged", DEADLINE, || async {
        read_log()
            .contains(
                "Fault injection: holding batch 2 of 2 events before settling it until stopped",
            )
            .then_some(())
    })
    .await;
    assert_eq!(metrics(&backend).await.counter(counters::PROCESSED), 2);
    let stats = consumer.stop().await.unwrap();
    assert_eq!(
        (stats.processed, stats.batches, stats.unsettled_batches),
        (2, 1, 1)
    );

    // A consumer without the hold gets the two held events once their lease runs out.
    let consumer = start(config(&lease), &backend);
    counter_reaches(&backend, counters::PROCESSED, 4).await;
    let stats = consumer.stop().await.unwrap();
    assert_eq!(stats.processed, 2);
    assert_eq!(metrics(&backend).await.counter(counters::PROCESSED), 4);
    assert_eq!(backend.depths().await.unwrap().queue, 0);
}
