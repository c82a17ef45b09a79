//! What the scenarios share to judge an outcome: the finding they return, the change in the
//! `/stats` counters and how to wait for it, and the wording of their observations and notes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pipeline_core::stats::PipelineStats;

use super::{expected_of, Scenario, Verdict};
use crate::client::WebhookClient;

/// How often `/stats` is read while waiting for the pipeline.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A scenario's finding before timing is added.
pub(super) struct Check {
    pub(super) verdict: Verdict,
    pub(super) expected: String,
    pub(super) observed: String,
    pub(super) note: Option<String>,
}

impl Check {
    pub(super) fn new(pass: bool, scenario: Scenario, observed: String) -> Check {
        Check {
            verdict: if pass { Verdict::Pass } else { Verdict::Fail },
            expected: expected_of(scenario).to_string(),
            observed,
            note: None,
        }
    }

    pub(super) fn with_note(mut self, note: Option<String>) -> Check {
        self.note = note;
        self
    }
}

/// How the counters moved since a scenario started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Delta {
    pub(super) accepted: u64,
    pub(super) duplicates: u64,
    pub(super) processed: u64,
    pub(super) failed: u64,
    pub(super) retried: u64,
    pub(super) dead_lettered: u64,
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
pub(super) async fn wait_for(
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
pub(super) fn tally(statuses: &[u16]) -> String {
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
pub(super) fn surplus_note(got: u64, want: u64) -> Option<String> {
    (got > want).then(|| {
        format!(
            "processed grew by {got}, more than the {want} events sent: is other traffic \
             reaching the pipeline, or was an event applied twice?"
        )
    })
}

pub(super) fn timeout_note(waited: bool, timeout: Duration) -> Option<String> {
    (!waited).then(|| {
        format!(
            "the pipeline did not get there within {:.0} s (--timeout): are consumers running?",
            timeout.as_secs_f64()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_groups_statuses_in_order() {
        assert_eq!(tally(&[202, 400, 202]), "2× 202, 1× 400");
        assert_eq!(tally(&[]), "no answers");
    }
}
