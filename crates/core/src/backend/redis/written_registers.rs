//! The HyperLogLog registers of recent rollup buckets that this process has itself written to
//! one partition, so that a settle sends only the registers that can still rise.
//!
//! A bucket's registers only ever go up (`ZADD GT`), so a rank this process wrote is a lower
//! bound of what is stored: a register whose rank in a batch is not above it would change
//! nothing and is left out of the script call. With users who come back (most traffic), the
//! registers of a minute, hour or day bucket fill within its first batches and later batches
//! send almost none: this is what keeps distinct users per bucket cheap on the settle path.
//! Only settles that took effect are recorded. Bounded to [`BUCKETS`] buckets (least recently
//! used dropped). What is lost with it is only a skipped write: after Redis lost its data
//! (restarted without persistence), registers of buckets still remembered here are not
//! rewritten until they rise or the bucket is forgotten.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::analytics::MapShape;

/// Buckets remembered per partition: a few minutes', hours' and days' worth.
const BUCKETS: usize = 64;

#[derive(Default)]
pub(super) struct WrittenRegisters {
    /// Bucket map name -> (last use, register -> highest rank written).
    buckets: HashMap<String, (u64, HashMap<u16, u8>)>,
    uses: u64,
}

/// One summed increment as the scripts take it: map, field, value.
pub(super) type ScriptIncrement<'a> = (&'a str, Cow<'a, str>, f64);

fn register_of<'a>(increment: &'a ScriptIncrement<'_>) -> Option<(&'a str, u16, u8)> {
    let (map, field, rank) = increment;
    if MapShape::of(map) != MapShape::BucketUsers {
        return None;
    }
    Some((map, field.parse().ok()?, rank.clamp(0.0, 255.0) as u8))
}

impl WrittenRegisters {
    /// Leaves out of `increments` every register this process already wrote at least as high.
    pub(super) fn skip_written(&mut self, increments: &mut Vec<ScriptIncrement<'_>>) {
        self.uses += 1;
        let uses = self.uses;
        let buckets = &mut self.buckets;
        increments.retain(|i| {
            let Some((map, register, rank)) = register_of(i) else {
                return true;
            };
            match buckets.get_mut(map) {
                Some((used, registers)) => {
                    *used = uses;
                    registers.get(&register).is_none_or(|r| *r < rank)
                }
                None => true,
            }
        });
    }

    /// Remembers the registers a settle that took effect wrote.
    pub(super) fn wrote(&mut self, increments: &[ScriptIncrement<'_>]) {
        self.uses += 1;
        for i in increments {
            let Some((map, register, rank)) = register_of(i) else {
                continue;
            };
            if !self.buckets.contains_key(map) && self.buckets.len() >= BUCKETS {
                let oldest = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, (used, _))| *used)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    self.buckets.remove(&oldest);
                }
            }
            let (used, registers) = self.buckets.entry(map.to_string()).or_default();
            *used = self.uses;
            let stored = registers.entry(register).or_insert(0);
            *stored = (*stored).max(rank);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::rollup::{self, Granularity};

    #[test]
    fn only_registers_that_can_rise_are_sent_again() {
        let bucket = rollup::map_name(rollup::ACTIVE_USERS, Granularity::Hour, 3_600);
        let mut written = WrittenRegisters::default();
        let first: Vec<ScriptIncrement<'_>> = vec![
            (&bucket, Cow::Borrowed("7"), 3.0),
            ("counters", Cow::Borrowed("processed"), 1.0),
        ];
        let mut sent = first.clone();
        written.skip_written(&mut sent);
        assert_eq!(sent, first, "nothing known yet");
        written.wrote(&sent);
        let mut again: Vec<ScriptIncrement<'_>> = vec![
            (&bucket, Cow::Borrowed("7"), 3.0),
            (&bucket, Cow::Borrowed("8"), 1.0),
            (&bucket, Cow::Borrowed("7"), 4.0),
            ("counters", Cow::Borrowed("processed"), 1.0),
        ];
        written.skip_written(&mut again);
        assert_eq!(
            again.iter().map(|i| i.1.as_ref()).collect::<Vec<_>>(),
            ["8", "7", "processed"]
        );
    }
}
