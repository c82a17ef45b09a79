//! The claim wait loop: how a claimer blocked on an empty queue learns that work is ready.
//!
//! Within this process the writer fires [`SqliteBackend`]'s `Notify` after committing an
//! enqueue, a retry or a replay, which wakes the waiter at once. Another process's commits are
//! announced by a change notification on the file's WAL (`commits.rs`), after which the loop
//! reads `PRAGMA data_version` on the reader thread; the same read also runs on a timer, every
//! [`POLL_MIN`] doubling to [`POLL_MAX_NOTIFIED`] (or to [`POLL_MAX`] where there are no
//! notifications), as the safety net. When the version changed, one index seek reads the
//! earliest `visible_at`, so the loop claims again (a write) only once something is due, and
//! never sleeps past that moment.
//!
//! The interval starts short again after a notification (the WAL is written a moment before
//! the commit becomes visible to readers, so the first read after one may still see the old
//! version) and after a claim that returned events; otherwise the next wait carries on where
//! the last one ended, so a claimer at rest reads once a second rather than ten times.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::commits::CommitWatch;
use super::error::StoreResult;
use super::reader::ReadJob;
use super::writer::WriteJob;
use super::{now_millis, SqliteBackend};
use crate::backend::{BackendResult, Delivery};

/// First interval of the cross-process wait poll.
const POLL_MIN: Duration = Duration::from_millis(1);
/// Longest interval of the poll without change notifications: it bounds the end-to-end
/// latency across processes; an idle poll is one `PRAGMA data_version` (no disk read).
const POLL_MAX: Duration = Duration::from_millis(4);
/// Longest interval of the poll while change notifications announce commits: only what a
/// notification missed waits this long.
const POLL_MAX_NOTIFIED: Duration = Duration::from_secs(1);

/// What the claim wait loop learns from one poll.
pub(super) struct Watch {
    /// The file's `PRAGMA data_version` at this poll.
    pub(super) version: i64,
    /// `Some` when the version differs from the one asked about: the earliest `visible_at`.
    pub(super) next_visible: Option<Option<i64>>,
}

/// One poll: the data version, and the earliest `visible_at` when the version is not `since`.
pub(super) fn watch(c: &Connection, since: Option<i64>) -> StoreResult<Watch> {
    let version: i64 = c
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?;
    let next_visible = if since == Some(version) {
        None
    } else {
        Some(
            c.prepare_cached("SELECT MIN(visible_at) FROM queue")?
                .query_row([], |r| r.get::<_, Option<i64>>(0))?,
        )
    };
    Ok(Watch {
        version,
        next_visible,
    })
}

impl SqliteBackend {
    /// Claims up to `max` (at least one) visible events, waiting up to `wait` for one to
    /// become visible. A cancelled or expired wait returns an empty batch; a claim the writer
    /// committed is always returned.
    pub(super) async fn claim_waiting(
        &self,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + wait;
        // Data version of the file when `next_visible` was read.
        let mut version = None;
        let mut next_visible: Option<i64> = None;
        loop {
            // Register interest before claiming, so an enqueue through this instance between
            // the claim and the wait still wakes us.
            let arrived = self.arrivals.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            // Never raced against `cancel`: a claim committed by the writer must be returned.
            let got = self.write(|reply| WriteJob::Claim { max, reply }).await?;
            if !got.is_empty() {
                self.wait_pause_micros.store(0, Ordering::Relaxed);
                return Ok(got);
            }
            let commits = self.commits.get_or_init(|| {
                let notify = Arc::new(Notify::new());
                CommitWatch::start(&self.path, notify.clone()).map(|watch| (notify, watch))
            });
            let longest = if commits.is_some() {
                POLL_MAX_NOTIFIED
            } else {
                POLL_MAX
            };
            let mut pause = Duration::from_micros(self.wait_pause_micros.load(Ordering::Relaxed))
                .clamp(POLL_MIN, longest);
            loop {
                if cancel.is_cancelled() || tokio::time::Instant::now() >= deadline {
                    let micros = u64::try_from(pause.as_micros()).unwrap_or(u64::MAX);
                    self.wait_pause_micros.store(micros, Ordering::Relaxed);
                    return Ok(Vec::new());
                }
                // Registered before the read, so a commit during it still ends the sleep.
                let committed = commits.as_ref().map(|(notify, _)| notify.notified());
                tokio::pin!(committed);
                if let Some(n) = committed.as_mut().as_pin_mut() {
                    n.enable();
                }
                let seen = self
                    .read(|reply| ReadJob::Watch {
                        since: version,
                        reply,
                    })
                    .await?;
                version = Some(seen.version);
                if let Some(next) = seen.next_visible {
                    next_visible = next;
                }
                let now = now_millis();
                if next_visible.is_some_and(|at| at <= now) {
                    break;
                }
                let mut until = deadline.min(tokio::time::Instant::now() + pause);
                if let Some(at) = next_visible {
                    let due =
                        tokio::time::Instant::now() + Duration::from_millis((at - now) as u64);
                    until = until.min(due);
                }
                // Losing branches are dropped: the sleep and the notification hold nothing,
                // and a cancelled wait has claimed nothing.
                tokio::select! {
                    _ = &mut arrived => break,
                    // Another process committed: read the version again at once.
                    _ = async {
                        match committed.as_mut().as_pin_mut() {
                            Some(n) => n.await,
                            None => std::future::pending().await,
                        }
                    } => {
                        pause = POLL_MIN;
                        continue;
                    }
                    _ = tokio::time::sleep_until(until) => {}
                    // The check at the top of the loop ends the wait.
                    _ = cancel.cancelled() => continue,
                }
                pause = (pause * 2).min(longest);
            }
        }
    }
}
