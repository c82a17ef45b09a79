//! `--verify`: after the last answer, waits for the pipeline to process what was accepted.

use std::time::{Duration, Instant};

use pipeline_core::stats::PipelineStats;

use super::report::VerifyReport;
use super::LoadPlan;
use crate::client::WebhookClient;

/// How often `/stats` is read while `--verify` waits.
const VERIFY_POLL: Duration = Duration::from_millis(100);

pub(super) async fn verify(
    client: &WebhookClient,
    before: &PipelineStats,
    expected: u64,
    finished: Instant,
    plan: &LoadPlan,
) -> VerifyReport {
    let deadline = finished + plan.verify_timeout;
    let mut last: Option<PipelineStats> = None;
    loop {
        if let Ok(now) = client.stats().await {
            let processed = now.processed.saturating_sub(before.processed);
            let complete = processed >= expected;
            last = Some(now);
            if complete {
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(VERIFY_POLL).await;
    }
    let drain_s = finished.elapsed().as_secs_f64();
    let after = last.unwrap_or_else(|| before.clone());
    let processed = after.processed.saturating_sub(before.processed);
    VerifyReport {
        expected,
        processed,
        complete: processed >= expected,
        drain_s: (drain_s * 1000.0).round() / 1000.0,
        queue_depth: after.queue_depth,
        dlq_depth: after.dlq_depth,
        pipeline_end_to_end_ms: after.latency.end_to_end,
        pipeline_ingest_ms: after.latency.ingest,
    }
}
