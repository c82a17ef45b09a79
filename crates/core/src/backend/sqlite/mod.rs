//! Embedded SQLite backend (`DAY15_QUEUE_BACKEND=sqlite`, the default): durable, zero setup,
//! shared by the webhook and several consumer processes on one machine through one file.
//!
//! Requirements and the trade-offs chosen:
//! - Every guarantee holds across processes, so all coordination lives in the file: the
//!   idempotency marks (`seen`), leases (`claim_token`, `visible_at`), the applied marks
//!   (`processed`) and the aggregates change only inside SQLite transactions, and no decision
//!   is taken from state read in an earlier transaction.
//! - No SQLite call runs on the async runtime. One writer thread owns the write connection and
//!   is fed by a bounded channel; it drains every job waiting and runs them all in one
//!   `BEGIN IMMEDIATE … COMMIT` (group commit), each inside its own savepoint so a failing job
//!   fails alone. Concurrent requests therefore share one fsync. A reader thread owns a second,
//!   query-only connection for depths, metrics, the DLQ listing and the claim wait loop.
//! - `synchronous=FULL` is spent only where an answer depends on it (`docs/guarantees.md`,
//!   "What an answer means"): a group holding an enqueue or a DLQ change is committed with an
//!   fsync; groups of claims, settlements and counter records are committed with `NORMAL`.
//!   WAL keeps those consistent on power loss, and what they would lose (a lease, or an ack
//!   together with its processed mark and its aggregates, in one transaction) comes back as a
//!   redelivery that is applied exactly once.
//! - A row becomes claimable at `visible_at`: enqueue time, the retry's `not_before`, or the end
//!   of a lease. One indexed column makes "ready" an index range scan and "when is the next
//!   one due" a single index seek, which the claim wait loop uses to sleep exactly long enough.
//! - A claimer blocked on an empty queue wakes at once for an enqueue made through the same
//!   instance (a `Notify`), and for one made by another process when a change notification on
//!   the file's WAL says it was written (`commits.rs`); it then reads `PRAGMA data_version`.
//!   The poll of `data_version` remains as the safety net: every second with notifications,
//!   every 1 ms doubling to 4 ms where the platform gives none. An idle claimer therefore costs
//!   nearly nothing.
//! - A store must stay the one every process uses. A watch thread checks every second that
//!   `DAY15_SQLITE_PATH` still names the store this process opened (device, inode and the
//!   store id in its `meta` table, read again only when the file's size or change time moved,
//!   so a check at rest is one `stat`); once it does not (deleted, replaced), every call fails with that reason, an ERROR is logged once,
//!   and a process opened through [`crate::backend::connect`] exits with status 1 a moment
//!   later, rather than accept events into a store nobody will read.
//! - "Healthy" means writable: [`Backend::ping`] fails while the last write failed. Each write
//!   call records its outcome, and when none succeeded for a second the watch thread probes
//!   with `BEGIN IMMEDIATE; ROLLBACK`, giving up after 2 s on a lock held elsewhere (real
//!   writes give up after 5 s).
//! - Expired idempotency and applied marks and old per-minute maps are deleted in bounded
//!   batches by the writer thread after a group, at most every 10 s. An idle writer does no
//!   upkeep: nothing grows while it is idle.
//!
//! Where each part lives:
//! - `mod.rs`: [`SqliteBackend`], starting its threads and handing each call to one of them.
//! - `identity.rs`: which file this process opened and whether the path still names it.
//! - `connection.rs`: opening a connection (pragmas, busy handler, file modes, the write
//!   probe); `error.rs`: SQLite failures turned into the trait's errors, naming the file;
//!   `schema.rs`: tables, indexes, migration.
//! - `writer.rs`: the writer thread (group commit, savepoints, the fsync choice, upkeep);
//!   `reader.rs`: the reader thread; `wait.rs`: the claim wait loop; `commits.rs`: the change
//!   notification that wakes it.
//! - One file per operation's SQL: `enqueue.rs`, `claim.rs`, `settle.rs`, `dlq.rs`, and
//!   `metrics.rs` (recording and reading the aggregates).

mod bucket_users;
mod claim;
mod commits;
mod connection;
mod dlq;
mod enqueue;
mod error;
mod identity;
mod metrics;
mod reader;
mod schema;
mod settle;
mod wait;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use self::metrics::RollupRange;
use self::reader::{ReadJob, Reader, READ_QUEUE};
use self::writer::{WriteJob, Writer, WRITE_QUEUE};
use super::{
    epoch_millis, Backend, BackendError, BackendOptions, BackendResult, DeadLetter, Delivery,
    DeliveryMark, Depths, DlqSelection, EnqueueOutcome, QueuedEvent, Settlement,
};
use crate::analytics::rollup::{Buckets, Granularity, Retention};
use crate::analytics::{Increment, StoredMetrics};
use crate::config::SqliteSynchronous;

pub use self::identity::{lost_message, StoreIdentity};
pub use self::schema::SCHEMA_VERSION;

/// How often the watch thread checks the file's identity (and, when no write succeeded since
/// the last turn, probes for writability).
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long a process whose store was lost keeps answering (every call failing with the
/// reason, `/health` 503) before it exits, so the reason is seen and logged.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// The embedded, durable default backend. Dropping it closes both connections once the jobs
/// already handed to its threads are committed and answered.
pub struct SqliteBackend {
    /// The file, named in every error.
    path: PathBuf,
    /// Jobs for the writer thread (the only connection that writes).
    writes: mpsc::Sender<WriteJob>,
    /// Requests for the reader thread.
    reads: mpsc::Sender<ReadJob>,
    /// Fired by the writer after committing work a claimer may be waiting for.
    arrivals: Arc<Notify>,
    /// Fired when any process (this one too) commits to the file; made by the first claim that
    /// waits. `None` where the platform gives no change notifications, and the claim wait loop
    /// polls at its short interval.
    commits: OnceLock<Option<(Arc<Notify>, commits::CommitWatch)>>,
    /// The claim wait loop's poll interval when its last wait ended (µs): the next wait starts
    /// there, so a claimer at rest keeps polling slowly from one claim to the next.
    wait_pause_micros: AtomicU64,
    /// Whether the store is still the one at the path, and still writable.
    condition: Arc<Condition>,
    /// How long rollup buckets are kept: reads never return a bucket past it.
    retention: Retention,
    /// Dropped with the backend, which stops the watch thread.
    _watch: std::sync::mpsc::Sender<()>,
}

/// What the calls and the watch thread know about the store's condition.
#[derive(Default)]
struct Condition {
    /// Set once, when the path no longer names the file this process has open.
    lost: OnceLock<String>,
    /// Whether `write_failure` holds an error (read without the lock on every write).
    write_failing: AtomicBool,
    /// Why the last write (a real one or the probe) failed.
    write_failure: Mutex<Option<BackendError>>,
    /// When a write last succeeded (epoch ms).
    last_write_ok: AtomicI64,
    /// Whether the process exits once the store is lost.
    exit_when_lost: AtomicBool,
}

impl Condition {
    /// `Err` once the store is lost: no call may touch a file nobody else reads.
    fn usable(&self) -> BackendResult<()> {
        match self.lost.get() {
            Some(why) => Err(BackendError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Records a write's outcome: a failure makes the store unhealthy until a write succeeds.
    fn wrote<T>(&self, outcome: &BackendResult<T>) {
        match outcome {
            Ok(_) => {
                self.last_write_ok.store(now_millis(), Ordering::Relaxed);
                if self.write_failing.load(Ordering::Relaxed) {
                    if let Ok(mut failure) = self.write_failure.lock() {
                        *failure = None;
                        self.write_failing.store(false, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => {
                if let Ok(mut failure) = self.write_failure.lock() {
                    *failure = Some(e.clone());
                    self.write_failing.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Why writes are failing, if they are.
    fn write_failure(&self) -> Option<BackendError> {
        if !self.write_failing.load(Ordering::Relaxed) {
            return None;
        }
        self.write_failure.lock().ok().and_then(|f| f.clone())
    }
}

type Reply<T> = oneshot::Sender<BackendResult<T>>;

/// The wall clock every stored instant uses (epoch milliseconds), read once per group or poll.
fn now_millis() -> i64 {
    epoch_millis(SystemTime::now())
}

impl SqliteBackend {
    /// Opens (creating if needed) the queue file and starts its writer and reader threads.
    /// Fails with a message naming the path and the cause when the file cannot be used.
    pub async fn open(
        path: &Path,
        synchronous: SqliteSynchronous,
        options: BackendOptions,
    ) -> BackendResult<Self> {
        let arrivals = Arc::new(Notify::new());
        let retention = options.bounds.rollup_retention;

        let (writes, write_jobs) = mpsc::channel(WRITE_QUEUE);
        let (ready, writer_ready) = oneshot::channel();
        let writer_path = path.to_path_buf();
        let writer_arrivals = arrivals.clone();
        spawn_thread("sqlite-writer", path, move || {
            match Writer::open(writer_path, synchronous, options, writer_arrivals) {
                Ok(writer) => {
                    let _ = ready.send(Ok(()));
                    writer.run(write_jobs);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })?;
        writer_ready
            .await
            .map_err(|_| thread_stopped(path, "writer"))??;

        let (reads, read_jobs) = mpsc::channel(READ_QUEUE);
        let (ready, reader_ready) = oneshot::channel();
        let reader_path = path.to_path_buf();
        spawn_thread("sqlite-reader", path, move || {
            match Reader::open(reader_path) {
                Ok(reader) => {
                    let _ = ready.send(Ok(()));
                    reader.run(read_jobs);
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        })?;
        reader_ready
            .await
            .map_err(|_| thread_stopped(path, "reader"))??;

        let identity = StoreIdentity::of(path).map_err(|e| {
            BackendError::Failed(format!(
                "cannot open SQLite queue file {}: {e}",
                path.display()
            ))
        })?;
        let probe = connection::open_probe(path)?;
        let condition = Arc::new(Condition::default());
        condition
            .last_write_ok
            .store(now_millis(), Ordering::Relaxed);
        let (watch, stop) = std::sync::mpsc::channel();
        let watched = condition.clone();
        spawn_thread("sqlite-watch", path, move || {
            watch_store(identity, probe, watched, stop)
        })?;

        Ok(SqliteBackend {
            path: path.to_path_buf(),
            writes,
            reads,
            arrivals,
            commits: OnceLock::new(),
            wait_pause_micros: AtomicU64::new(0),
            condition,
            retention,
            _watch: watch,
        })
    }

    /// Makes the process exit with status 1 shortly after its store is found deleted or
    /// replaced (what a webhook or consumer process wants; a test or a tool may not).
    pub fn exit_process_when_lost(self) -> Self {
        self.condition.exit_when_lost.store(true, Ordering::Relaxed);
        self
    }

    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> WriteJob) -> BackendResult<T> {
        self.condition.usable()?;
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(job(reply))
            .await
            .map_err(|_| thread_stopped(&self.path, "writer"))?;
        let outcome = answer
            .await
            .map_err(|_| thread_stopped(&self.path, "writer"))?;
        self.condition.wrote(&outcome);
        outcome
    }

    async fn read<T>(&self, job: impl FnOnce(Reply<T>) -> ReadJob) -> BackendResult<T> {
        self.condition.usable()?;
        let (reply, answer) = oneshot::channel();
        self.reads
            .send(job(reply))
            .await
            .map_err(|_| thread_stopped(&self.path, "reader"))?;
        answer
            .await
            .map_err(|_| thread_stopped(&self.path, "reader"))?
    }
}

fn spawn_thread(
    name: &str,
    path: &Path,
    body: impl FnOnce() + Send + 'static,
) -> BackendResult<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map(|_| ())
        .map_err(|e| {
            BackendError::Failed(format!(
                "SQLite queue file {}: cannot start the {name} thread: {e}",
                path.display()
            ))
        })
}

/// The watch thread: every [`WATCH_EVERY`] until the backend is dropped, checks that the path
/// still names the open file, and probes for writability when no write succeeded meanwhile.
fn watch_store(
    identity: StoreIdentity,
    probe: rusqlite::Connection,
    condition: Arc<Condition>,
    stop: std::sync::mpsc::Receiver<()>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(WATCH_EVERY) {
        if let Err(why) = identity.check() {
            tracing::error!("{why}");
            let _ = condition.lost.set(why);
            if condition.exit_when_lost.load(Ordering::Relaxed) {
                // Calls fail with the reason meanwhile; the log writer gets time to flush.
                let _ = stop.recv_timeout(EXIT_GRACE);
                std::process::exit(crate::runtime::exit::FAILURE);
            }
            return;
        }
        let idle_ms = now_millis() - condition.last_write_ok.load(Ordering::Relaxed);
        if idle_ms >= WATCH_EVERY.as_millis() as i64 || condition.write_failure().is_some() {
            condition.wrote(&connection::probe_write(&probe, identity.path()));
        }
    }
}

fn thread_stopped(path: &Path, which: &str) -> BackendError {
    BackendError::Failed(format!(
        "SQLite queue file {}: the {which} thread has stopped",
        path.display()
    ))
}

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    /// Fails once the store is lost, and while writes fail (a lock held elsewhere, a full
    /// disk), with the reason; otherwise a read on the reader thread.
    async fn ping(&self) -> BackendResult<()> {
        self.condition.usable()?;
        if let Some(e) = self.condition.write_failure() {
            return Err(e);
        }
        self.read(ReadJob::Ping).await
    }

    async fn enqueue_delivery(
        &self,
        events: Vec<QueuedEvent>,
        mark: Option<DeliveryMark>,
    ) -> BackendResult<Vec<EnqueueOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| WriteJob::Enqueue {
            events,
            mark,
            reply,
        })
        .await
    }

    async fn claim_batch(
        &self,
        _consumer: &str,
        max: usize,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> BackendResult<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.claim_waiting(max, wait, cancel).await
    }

    async fn settle(&self, settlements: Vec<Settlement>) -> BackendResult<()> {
        if settlements.is_empty() {
            return Ok(());
        }
        self.write(|reply| WriteJob::Settle { settlements, reply })
            .await
    }

    async fn depths(&self) -> BackendResult<Depths> {
        self.read(ReadJob::Depths).await
    }

    async fn dlq_list(&self, limit: usize, offset: usize) -> BackendResult<Vec<DeadLetter>> {
        self.read(|reply| ReadJob::DlqList {
            limit,
            offset,
            reply,
        })
        .await
    }

    async fn dlq_replay(&self, which: DlqSelection) -> BackendResult<u64> {
        self.write(|reply| WriteJob::DlqReplay { which, reply })
            .await
    }

    async fn dlq_purge(&self) -> BackendResult<u64> {
        self.write(|reply| WriteJob::DlqPurge { reply }).await
    }

    async fn record(&self, increments: Vec<Increment>) -> BackendResult<()> {
        if increments.is_empty() {
            return Ok(());
        }
        self.write(|reply| WriteJob::Record { increments, reply })
            .await
    }

    async fn metrics(&self) -> BackendResult<StoredMetrics> {
        self.read(ReadJob::Metrics).await
    }

    async fn rollups(
        &self,
        aggregate: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> BackendResult<Buckets> {
        let range = RollupRange {
            aggregate: aggregate.to_string(),
            granularity,
            from,
            to,
            retention: self.retention,
            now: now_millis() / 1_000,
        };
        self.read(|reply| ReadJob::Rollups { range, reply }).await
    }
}
