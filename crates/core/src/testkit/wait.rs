//! Waiting for a condition with a deadline, instead of sleeping for a guessed time.
//!
//! A test states what it waits for and how long that may take; the condition is checked
//! every [`POLL_INTERVAL`] and its first `Some` is returned, so a fast machine never waits
//! longer than needed and a slow one gets the whole deadline. Past the deadline the test
//! fails with `timed out after {deadline:?} waiting for: {what}`. [`eventually`] is for async
//! tests (its deadline follows tokio's clock, so it also holds under `tokio::time::pause`);
//! [`blocking::eventually`] is its twin for synchronous tests.

use std::future::Future;
use std::time::Duration;

/// How long a check waits before it is made again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Checks `check` until it returns `Some`, and returns that value.
///
/// # Panics
/// When `deadline` has passed and `check` still returned `None`: the message names `what`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if start.elapsed() >= deadline {
            timed_out(what, deadline);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The same wait for synchronous tests, sleeping the thread between checks.
pub mod blocking {
    use std::time::{Duration, Instant};

    use super::{timed_out, POLL_INTERVAL};

    /// Checks `check` until it returns `Some`, and returns that value.
    ///
    /// # Panics
    /// When `deadline` has passed and `check` still returned `None`: the message names `what`,
    /// and the location is the caller's.
    #[track_caller]
    pub fn eventually<T>(
        what: &str,
        deadline: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            if start.elapsed() >= deadline {
                timed_out(what, deadline);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

#[track_caller]
fn timed_out(what: &str, deadline: Duration) -> ! {
    panic!("timed out after {deadline:?} waiting for: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_value_found() {
        let mut calls = 0;
        let found = eventually("the third call", Duration::from_secs(5), || {
            calls += 1;
            let now = calls;
            async move { (now == 3).then_some(now) }
        })
        .await;
        assert_eq!(found, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 50ms waiting for: nothing")]
    async fn fails_after_the_deadline_naming_what() {
        eventually("nothing", Duration::from_millis(50), || async {
            None::<()>
        })
        .await;
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for: nothing")]
    fn the_blocking_twin_fails_the_same_way() {
        blocking::eventually("nothing", Duration::from_millis(50), || None::<()>);
    }
}
