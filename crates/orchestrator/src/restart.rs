//! The restart policy every supervised role follows, child process or in-process task alike:
//! an unexpected stop is restarted after an exponential backoff (0.5 s, doubling), and a role
//! that stops more than [`MAX_RESTARTS`] times within [`RESTART_WINDOW`] stops the pipeline.
//!
//! Times are [`tokio::time::Instant`]s, so a test with a paused clock runs the whole policy
//! without waiting for it.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// More restarts than this within [`RESTART_WINDOW`] stops the pipeline.
pub const MAX_RESTARTS: usize = 5;
/// The window [`MAX_RESTARTS`] is counted in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The delay before the first restart; each further restart within the window doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// No restart waits longer than this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One role's recent restarts, and the verdict on its next stop.
#[derive(Debug, Default)]
pub struct RestartPolicy {
    /// When each restart within the window was decided, oldest first.
    recent: VecDeque<Instant>,
}

impl RestartPolicy {
    /// A role that never stopped yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restarts decided within the window ending now.
    pub fn recent(&self) -> usize {
        self.recent.len()
    }

    /// Decides what follows an unexpected stop of the role `name` at `now` (`what` says how it
    /// stopped, e.g. `exited unexpectedly (exit code 1)`): `Ok(delay)` is when to start it
    /// again (logged as a warning); `Err(message)` means it stopped too often and the pipeline
    /// must stop, with the message to log.
    pub fn on_stop(&mut self, name: &str, what: &str, now: Instant) -> Result<Duration, String> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= MAX_RESTARTS {
            return Err(format!(
                "{name} {what} after {} restarts within {} s; stopping the pipeline",
                self.recent.len(),
                RESTART_WINDOW.as_secs()
            ));
        }
        self.recent.push_back(now);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (self.recent.len() - 1).min(16))
            .min(MAX_BACKOFF);
        tracing::warn!(
            "{name} {what}; restarting in {} ms (restart {} of at most {MAX_RESTARTS} per minute)",
            backoff.as_millis(),
            self.recent.len(),
        );
        Ok(backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_the_sixth_stop_within_a_minute_gives_up() {
        let mut policy = RestartPolicy::new();
        let now = Instant::now();
        let delays: Vec<Duration> = (0..MAX_RESTARTS)
            .map(|_| policy.on_stop("consumer-1", "exited unexpectedly (exit code 1)", now))
            .collect::<Result<_, _>>()
            .expect("five restarts are allowed");
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000].map(Duration::from_millis)
        );
        let message = policy
            .on_stop("consumer-1", "exited unexpectedly (exit code 1)", now)
            .expect_err("more than 5 restarts in 60 s stops the pipeline");
        assert!(message.contains("consumer-1"), "{message}");
        assert!(message.contains("5 restarts within 60 s"), "{message}");
    }

    #[test]
    fn old_restarts_leave_the_window() {
        let mut policy = RestartPolicy::new();
        let start = Instant::now();
        for _ in 0..MAX_RESTARTS {
            assert!(policy.on_stop("webhook", "stopped", start).is_ok());
        }
        let later = start + RESTART_WINDOW + Duration::from_secs(1);
        assert_eq!(
            policy.on_stop("webhook", "stopped", later),
            Ok(FIRST_BACKOFF),
            "a role that ran well for a minute starts over"
        );
        assert_eq!(policy.recent(), 1);
    }

    #[test]
    fn the_backoff_is_capped() {
        let mut policy = RestartPolicy::new();
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        // One stop every 13 s keeps at most 5 in any minute, so it never gives up.
        for _ in 0..20 {
            last = policy
                .on_stop("webhook", "stopped", now)
                .expect("spaced out");
            now += Duration::from_secs(13);
        }
        assert!(last <= MAX_BACKOFF, "{last:?}");
    }
}
