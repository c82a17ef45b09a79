//! The writer thread: the only connection that changes the file in this process.
//!
//! It drains every job waiting (up to [`MAX_GROUP`]) and runs them in one `BEGIN IMMEDIATE …
//! COMMIT`, each inside its own savepoint so a failing job fails alone; the answers are sent
//! only once the commit's outcome is known. The group is fsynced only when one of its jobs
//! needs it ([`WriteJob::needs_fsync`]). Between groups, it deletes expired marks and old
//! per-minute maps in bounded batches (upkeep).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{mpsc, Notify};

use super::claim::claim;
use super::connection::open_connection;
use super::dlq::{dlq_purge, dlq_replay};
use super::enqueue::enqueue;
use super::error::{classify, StoreResult};
use super::metrics::{add_metrics, delete_expired_rollups};
use super::schema::migrate;
use super::settle::settle;
use super::{now_millis, Reply};
use crate::analytics::{maps, Bounds, Increment, Sums, MINUTE_WINDOW};
use crate::backend::{
    BackendError, BackendOptions, BackendResult, Delivery, DeliveryMark, DlqSelection,
    EnqueueOutcome, QueuedEvent, Settlement,
};
use crate::config::SqliteSynchronous;

/// Most jobs committed together; bounds the latency one group adds to the first job in it.
const MAX_GROUP: usize = 256;
/// Jobs waiting for the writer before senders have to wait (back-pressure on the webhook).
pub(super) const WRITE_QUEUE: usize = 1024;
/// Time between upkeep passes, and the most rows one pass deletes per table.
const UPKEEP_EVERY_MS: i64 = 10_000;
const UPKEEP_BATCH: i64 = 10_000;
/// Longest a group waits for more jobs before an fsyncing commit, and the step of that wait.
const MAX_LINGER: Duration = Duration::from_millis(2);
const LINGER_STEP: Duration = Duration::from_micros(50);

/// Work for the writer thread; each variant carries where its answer goes.
pub(super) enum WriteJob {
    Enqueue {
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
        reply: Reply<Vec<EnqueueOutcome>>,
    },
    Claim {
        max: usize,
        reply: Reply<Vec<Delivery>>,
    },
    Settle {
        settlements: Vec<Settlement>,
        reply: Reply<()>,
    },
    Record {
        increments: Vec<Increment>,
        reply: Reply<()>,
    },
    DlqReplay {
        which: DlqSelection,
        reply: Reply<u64>,
    },
    DlqPurge {
        reply: Reply<u64>,
    },
}

/// What one job's answer becomes once its group's commit is known: the job's own result if
/// the commit succeeded, the commit's error otherwise.
type Answer = Box<dyn FnOnce(&BackendResult<()>)>;

fn answer<T: 'static>(reply: Reply<T>, result: BackendResult<T>) -> Answer {
    Box::new(move |commit| {
        let _ = reply.send(commit.clone().and(result));
    })
}

/// The clock and settings one group runs with.
pub(super) struct Ctx<'a> {
    /// The group's clock (epoch ms): every row written by the group is stamped with it.
    pub(super) now: i64,
    /// The visibility timeout, in milliseconds.
    pub(super) lease_ms: i64,
    /// The idempotency window, in milliseconds.
    pub(super) ttl_ms: i64,
    /// The file, named in every error.
    pub(super) path: &'a Path,
    /// The analytics bounds every metric write applies.
    pub(super) bounds: Bounds,
}

impl WriteJob {
    /// Whether this job's commit must survive power loss before it is answered
    /// (`docs/guarantees.md`, "What an answer means").
    fn needs_fsync(&self) -> bool {
        matches!(
            self,
            WriteJob::Enqueue { .. } | WriteJob::DlqReplay { .. } | WriteJob::DlqPurge { .. }
        )
    }

    /// Answers the job with `e` without running it: its group could not start.
    fn fail(self, e: BackendError) {
        match self {
            WriteJob::Enqueue { reply, .. } => drop(reply.send(Err(e))),
            WriteJob::Claim { reply, .. } => drop(reply.send(Err(e))),
            WriteJob::Settle { reply, .. } | WriteJob::Record { reply, .. } => {
                drop(reply.send(Err(e)))
            }
            WriteJob::DlqReplay { reply, .. } | WriteJob::DlqPurge { reply } => {
                drop(reply.send(Err(e)))
            }
        }
    }

    /// Runs the job in its own savepoint of the group's transaction. Returns its deferred
    /// answer and whether a waiting claimer should look again once the group commits.
    fn run(self, tx: &mut rusqlite::Transaction<'_>, ctx: &Ctx<'_>) -> (Answer, bool) {
        match self {
            WriteJob::Enqueue {
                events,
                mark,
                reply,
            } => {
                let r = in_savepoint(tx, ctx, "enqueue", |c| {
                    enqueue(c, ctx, &events, mark.as_ref())
                });
                let wake = matches!(&r, Ok(o) if o.contains(&EnqueueOutcome::Accepted));
                (answer(reply, r), wake)
            }
            WriteJob::Claim { max, reply } => {
                let r = in_savepoint(tx, ctx, "claim", |c| claim(c, ctx, max));
                (answer(reply, r), false)
            }
            WriteJob::Settle { settlements, reply } => {
                let r = in_savepoint(tx, ctx, "settle", |c| settle(c, ctx, settlements));
                let wake = matches!(r, Ok(true));
                (answer(reply, r.map(|_| ())), wake)
            }
            WriteJob::Record { increments, reply } => {
                let r = in_savepoint(tx, ctx, "record metrics", |c| {
                    add_metrics(c, ctx, &Sums::of(&increments))
                });
                (answer(reply, r), false)
            }
            WriteJob::DlqReplay { which, reply } => {
                let r = in_savepoint(tx, ctx, "replay dead letters", |c| {
                    dlq_replay(c, ctx, &which)
                });
                let wake = matches!(r, Ok(n) if n > 0);
                (answer(reply, r), wake)
            }
            WriteJob::DlqPurge { reply } => {
                let r = in_savepoint(tx, ctx, "purge dead letters", dlq_purge);
                (answer(reply, r), false)
            }
        }
    }
}

/// Runs `f` inside a savepoint: on failure only its own changes are rolled back.
fn in_savepoint<T>(
    tx: &mut rusqlite::Transaction<'_>,
    ctx: &Ctx<'_>,
    what: &str,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> BackendResult<T> {
    let sp = tx
        .savepoint()
        .map_err(|e| classify(ctx.path, what, e.into()))?;
    match f(&sp) {
        Ok(v) => {
            sp.commit()
                .map_err(|e| classify(ctx.path, what, e.into()))?;
            Ok(v)
        }
        // Dropping the savepoint rolls back to it.
        Err(e) => Err(classify(ctx.path, what, e)),
    }
}

/// Moves every job already waiting into `group`, up to [`MAX_GROUP`].
fn take_waiting(group: &mut Vec<WriteJob>, jobs: &mut mpsc::Receiver<WriteJob>) {
    while group.len() < MAX_GROUP {
        match jobs.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
}

/// The writer thread's state: the only connection that changes the file in this process.
pub(super) struct Writer {
    conn: Connection,
    path: PathBuf,
    options: BackendOptions,
    synchronous: SqliteSynchronous,
    /// Whether the connection currently fsyncs at commit (`synchronous=FULL`).
    fsyncing: bool,
    arrivals: Arc<Notify>,
    /// When upkeep next runs (epoch ms).
    next_upkeep: i64,
}

impl Writer {
    pub(super) fn open(
        path: PathBuf,
        synchronous: SqliteSynchronous,
        options: BackendOptions,
        arrivals: Arc<Notify>,
    ) -> BackendResult<Writer> {
        let mut conn = open_connection(&path)?;
        migrate(&mut conn, &path)?;
        let mut writer = Writer {
            conn,
            path,
            options,
            synchronous,
            fsyncing: false,
            arrivals,
            next_upkeep: 0,
        };
        writer.set_fsync(synchronous == SqliteSynchronous::Full)?;
        Ok(writer)
    }

    fn set_fsync(&mut self, on: bool) -> BackendResult<()> {
        self.conn
            .pragma_update(None, "synchronous", if on { "FULL" } else { "NORMAL" })
            .map_err(|e| classify(&self.path, "set synchronous", e.into()))?;
        self.fsyncing = on;
        Ok(())
    }

    /// Serves jobs until every sender is gone (the backend was dropped), then closes.
    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<WriteJob>) {
        // Size of the last group and how long its fsyncing commit took, for the linger below.
        let mut last_group = 1;
        let mut last_commit = Duration::ZERO;
        while let Some(first) = jobs.blocking_recv() {
            let mut group = vec![first];
            take_waiting(&mut group, &mut jobs);
            // Clients answered by the last commit are sending their next jobs right now. When
            // this commit will fsync, waiting a little for them (at most half the last
            // commit's time, and only until the group is as large as the last) lets them share
            // this fsync instead of paying for the next one alone.
            if self.will_fsync(&group) && group.len() < last_group {
                let until = Instant::now() + (last_commit / 2).min(MAX_LINGER);
                while group.len() < last_group && Instant::now() < until {
                    std::thread::sleep(LINGER_STEP);
                    take_waiting(&mut group, &mut jobs);
                }
            }
            last_group = group.len();
            let started = Instant::now();
            let fsynced = self.will_fsync(&group);
            self.run_group(group);
            if fsynced {
                last_commit = started.elapsed();
            }
            self.upkeep_if_due();
        }
    }

    fn will_fsync(&self, group: &[WriteJob]) -> bool {
        self.synchronous == SqliteSynchronous::Full && group.iter().any(WriteJob::needs_fsync)
    }

    /// Commits a group of jobs in one transaction, then answers each.
    fn run_group(&mut self, group: Vec<WriteJob>) {
        let fsync = self.will_fsync(&group);
        if fsync != self.fsyncing {
            if let Err(e) = self.set_fsync(fsync) {
                group.into_iter().for_each(|job| job.fail(e.clone()));
                return;
            }
        }
        let ctx = Ctx {
            now: now_millis(),
            lease_ms: self.options.visibility_timeout.as_millis() as i64,
            ttl_ms: self.options.idempotency_ttl.as_millis() as i64,
            path: &self.path,
            bounds: self.options.bounds,
        };
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let e = classify(ctx.path, "begin transaction", e.into());
                group.into_iter().for_each(|job| job.fail(e.clone()));
                return;
            }
        };
        let mut answers = Vec::with_capacity(group.len());
        let mut wake = false;
        for job in group {
            let (answer, woke) = job.run(&mut tx, &ctx);
            answers.push(answer);
            wake |= woke;
        }
        let committed = tx
            .commit()
            .map_err(|e| classify(ctx.path, "commit", e.into()));
        if committed.is_ok() && wake {
            self.arrivals.notify_waiters();
        }
        for answer in answers {
            answer(&committed);
        }
    }

    fn upkeep_if_due(&mut self) {
        let now = now_millis();
        if now < self.next_upkeep {
            return;
        }
        match self.upkeep(now) {
            // A full batch means more is waiting: come back sooner.
            Ok(true) => self.next_upkeep = now + 1_000,
            Ok(false) => self.next_upkeep = now + UPKEEP_EVERY_MS,
            Err(e) => {
                tracing::warn!(error = %e, "SQLite upkeep failed; will try again");
                self.next_upkeep = now + UPKEEP_EVERY_MS;
            }
        }
    }

    /// Deletes expired marks, per-minute maps past the window and rollup buckets past their
    /// retention, a bounded batch each.
    /// Returns whether a batch was full.
    fn upkeep(&mut self, now: i64) -> BackendResult<bool> {
        if self.fsyncing {
            self.set_fsync(false)?;
        }
        let path = self.path.clone();
        let step = |e: rusqlite::Error| classify(&path, "upkeep", e.into());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(step)?;
        let mut full = false;
        for table in ["seen", "processed"] {
            let n = tx
                .prepare_cached(&format!(
                    "DELETE FROM {table} WHERE event_id IN
                     (SELECT event_id FROM {table} WHERE expires_at <= ?1 LIMIT ?2)"
                ))
                .and_then(|mut s| s.execute(params![now, UPKEEP_BATCH]))
                .map_err(step)?;
            full |= n as i64 >= UPKEEP_BATCH;
        }
        let oldest_kept = maps::per_minute(now / 60_000 - MINUTE_WINDOW);
        tx.prepare_cached("DELETE FROM metrics WHERE map >= ?1 AND map < ?2")
            .and_then(|mut s| s.execute(params![maps::PER_MINUTE_PREFIX, oldest_kept]))
            .map_err(step)?;
        let retention = self.options.bounds.rollup_retention;
        let rollups = delete_expired_rollups(&tx, &retention, now / 1_000, UPKEEP_BATCH)
            .map_err(|e| classify(&path, "upkeep", e))?;
        full |= rollups >= UPKEEP_BATCH;
        tx.commit().map_err(step)?;
        Ok(full)
    }
}
