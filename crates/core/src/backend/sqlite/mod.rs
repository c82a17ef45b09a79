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
//!   instance (a `Notify`), and within one poll interval (1 ms doubling to 4 ms) for one made
//!   by another process, noticed through `PRAGMA data_version`.
//! - Expired idempotency and applied marks and old per-minute maps are deleted in bounded
//!   batches by the writer thread after a group, at most every 10 s. An idle writer does no
//!   upkeep: nothing grows while it is idle.
//!
//! Where each part lives:
//! - `mod.rs`: [`SqliteBackend`], starting its threads and handing each call to one of them.
//! - `connection.rs`: opening a connection (pragmas, busy handler); `error.rs`: SQLite failures
//!   turned into the trait's errors, naming the file; `schema.rs`: tables, indexes, migration.
//! - `writer.rs`: the writer thread (group commit, savepoints, the fsync choice, upkeep);
//!   `reader.rs`: the reader thread; `wait.rs`: the claim wait loop.
//! - One file per operation's SQL: `enqueue.rs`, `claim.rs`, `settle.rs`, `dlq.rs`, and
//!   `metrics.rs` (recording and reading the aggregates).

mod claim;
mod connection;
mod dlq;
mod enqueue;
mod error;
mod metrics;
mod reader;
mod schema;
mod settle;
mod wait;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use self::reader::{ReadJob, Reader, READ_QUEUE};
use self::writer::{WriteJob, Writer, WRITE_QUEUE};
use super::{
    epoch_millis, Backend, BackendError, BackendOptions, BackendResult, DeadLetter, Delivery,
    DeliveryMark, Depths, DlqSelection, EnqueueOutcome, QueuedEvent, Settlement,
};
use crate::analytics::{Increment, StoredMetrics};
use crate::config::SqliteSynchronous;

pub use self::schema::SCHEMA_VERSION;

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

        Ok(SqliteBackend {
            path: path.to_path_buf(),
            writes,
            reads,
            arrivals,
        })
    }

    async fn write<T>(&self, job: impl FnOnce(Reply<T>) -> WriteJob) -> BackendResult<T> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(job(reply))
            .await
            .map_err(|_| thread_stopped(&self.path, "writer"))?;
        answer
            .await
            .map_err(|_| thread_stopped(&self.path, "writer"))?
    }

    async fn read<T>(&self, job: impl FnOnce(Reply<T>) -> ReadJob) -> BackendResult<T> {
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

    async fn ping(&self) -> BackendResult<()> {
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
}
