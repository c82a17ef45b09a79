//! Backoff policies: when a failed event is tried again, and how long to wait for a backend
//! that is down.
//!
//! Both use capped exponential backoff with *equal jitter*: half of the capped delay is fixed
//! and the other half is random. The fixed half guarantees a retry never comes back sooner
//! than half its nominal delay (a failing dependency gets real rest), while the random half
//! spreads the retries of many events and many consumers so they do not return in lockstep.

use std::time::Duration;

use pipeline_core::config::Config;
use rand::Rng;

/// Capped exponential growth: `base · 2^(step-1)`, at most `cap`; step 0 counts as step 1.
pub fn exponential(base: Duration, cap: Duration, step: u32) -> Duration {
    let exponent = step.saturating_sub(1).min(63);
    let factor = 2f64.powi(exponent as i32);
    let secs = (base.as_secs_f64() * factor).min(cap.as_secs_f64());
    Duration::from_secs_f64(secs.max(0.0))
}

/// Equal jitter: a delay uniformly chosen in `[d/2, d]`.
pub fn equal_jitter(d: Duration) -> Duration {
    let half = d / 2;
    if half.is_zero() {
        return d;
    }
    let extra = rand::thread_rng().gen_range(0.0..=half.as_secs_f64());
    half + Duration::from_secs_f64(extra)
}

/// What happens to an event whose handler failed (docs/guarantees.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; attempt `1 + max_retries` failing dead-letters it.
    pub max_retries: u32,
    /// Nominal delay before the first retry (DAY15_RETRY_DELAY_SECONDS).
    pub base_delay: Duration,
    /// Longest nominal delay (DAY15_RETRY_MAX_DELAY_SECONDS).
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn from_config(config: &Config) -> Self {
        RetryPolicy {
            max_retries: config.consumer.max_retries,
            base_delay: config.consumer.retry_delay,
            max_delay: config.consumer.retry_max_delay,
        }
    }

    /// The delay before retrying after failed attempt number `attempt` (1-based), or `None`
    /// when the attempts are used up and the event belongs in the DLQ.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        (attempt <= self.max_retries)
            .then(|| equal_jitter(exponential(self.base_delay, self.max_delay, attempt)))
    }
}

/// Waits between calls to a backend that is unavailable, so an outage costs neither a busy
/// loop nor a crash: 100 ms doubling up to 5 s, with equal jitter; reset on success.
#[derive(Debug, Clone)]
pub struct OutageBackoff {
    failures: u32,
}

impl OutageBackoff {
    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        OutageBackoff { failures: 0 }
    }

    /// The wait after one more consecutive failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        equal_jitter(exponential(Self::BASE, Self::CAP, self.failures))
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

impl Default for OutageBackoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
        }
    }

    #[test]
    fn delays_double_per_attempt_within_equal_jitter_bounds() {
        for (attempt, nominal) in [(1, 2.0), (2, 4.0), (3, 8.0)] {
            for _ in 0..100 {
                let d = policy().delay_after(attempt).unwrap().as_secs_f64();
                assert!(
                    d >= nominal / 2.0 && d <= nominal,
                    "attempt {attempt}: {d}s not in [{}, {nominal}]",
                    nominal / 2.0
                );
            }
        }
    }

    #[test]
    fn delays_are_capped() {
        let p = RetryPolicy {
            max_retries: 50,
            ..policy()
        };
        for _ in 0..100 {
            assert!(p.delay_after(40).unwrap() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn attempts_beyond_max_retries_give_up() {
        assert!(policy().delay_after(3).is_some());
        assert_eq!(policy().delay_after(4), None);
        let none = RetryPolicy {
            max_retries: 0,
            ..policy()
        };
        assert_eq!(none.delay_after(1), None);
    }

    #[test]
    fn outage_backoff_grows_to_its_cap_and_resets() {
        let mut b = OutageBackoff::new();
        let first = b.next_delay();
        assert!(first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
        assert!(b.next_delay() >= Duration::from_millis(2500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
