//! What settling a failed attempt counts. The one home of the rules "a retry counts `failed`
//! and `retried`, a dead letter `failed` and `dead_lettered`": every backend applies them in
//! its settle step (only when the settlement takes effect), and the consumer's statistics and
//! dashboard push count through [`FailureCounts`].

use serde::Serialize;

use super::counters;
use super::counters::{DEAD_LETTERED, FAILED, RETRIED};

/// Counters a retry adds one to.
pub const RETRY: &[&str] = &[FAILED, RETRIED];
/// Counters a dead letter adds one to.
pub const DEAD_LETTER: &[&str] = &[FAILED, DEAD_LETTERED];

/// The failure counters as plain numbers, filled by the rules of [this module](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FailureCounts {
    /// Failed attempts: retries plus dead letters.
    pub failed: u64,
    pub retried: u64,
    pub dead_lettered: u64,
}

impl FailureCounts {
    /// Adds one to each counter a rule of [this module](self) names.
    pub fn count(&mut self, rule: &[&str]) {
        for name in rule {
            match *name {
                counters::FAILED => self.failed += 1,
                counters::RETRIED => self.retried += 1,
                counters::DEAD_LETTERED => self.dead_lettered += 1,
                _ => {}
            }
        }
    }
}
