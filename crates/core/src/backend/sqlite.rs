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
//! - `synchronous=FULL` is spent only where SPEC §6.1 needs it: a group holding an enqueue or a
//!   DLQ change is committed with an fsync; groups of claims, settlements and counter records
//!   are committed with `NORMAL`. WAL keeps those consistent on power loss, and what they would
//!   lose (a lease, or an ack together with its processed mark and its aggregates, in one
//!   transaction) comes back as a redelivery that is applied exactly once.
//! - A row becomes claimable at `visible_at`: enqueue time, the retry's `not_before`, or the end
//!   of a lease. One indexed column makes "ready" an index range scan and "when is the next
//!   one due" a single index seek, which the claim wait loop uses to sleep exactly long enough.
//! - A claimer blocked on an empty queue wakes at once for an enqueue made through the same
//!   instance (a `Notify`), and within one poll interval (1 ms doubling to 4 ms) for one made
//!   by another process, noticed through `PRAGMA data_version`.
//! - Expired idempotency and applied marks and old per-minute maps are deleted in bounded
//!   batches by the writer thread after a group, at most every 10 s. An idle writer does no
//!   upkeep: nothing grows while it is idle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::analytics::{counters, maps, MapShape, MetricsSnapshot, Sums, MINUTE_WINDOW, TOP_USERS};
use crate::config::SqliteSynchronous;

/// The schema this build writes; files from a newer build are refused, older ones migrated.
pub const SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for another process's write lock before giving up (busy).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most jobs committed together; bounds the latency one group adds to the first job in it.
const MAX_GROUP: usize = 256;
/// Jobs waiting for the writer before senders have to wait (back-pressure on the webhook).
const WRITE_QUEUE: usize = 1024;
/// Requests waiting for the reader thread.
const READ_QUEUE: usize = 256;
/// First and longest interval of the cross-process wait poll.
const POLL_MIN: Duration = Duration::from_millis(1);
/// Kept short because it bounds the end-to-end latency across processes; an idle poll is one
/// `PRAGMA data_version` (no disk read), so 250 a second cost next to nothing.
const POLL_MAX: Duration = Duration::from_millis(4);
/// Time between upkeep passes, and the most rows one pass deletes per table.
const UPKEEP_EVERY_MS: i64 = 10_000;
const UPKEEP_BATCH: i64 = 10_000;
/// Longest a group waits for more jobs before an fsyncing commit, and the step of that wait.
const MAX_LINGER: Duration = Duration::from_millis(2);
const LINGER_STEP: Duration = Duration::from_micros(50);
/// Page cache of each connection (KiB) and how much of the file is memory-mapped (bytes):
/// enough that claims and settlements rarely read a page through a system call.
const CACHE_KIB: i64 = 32 * 1024;
const MMAP_BYTES: i64 = 256 * 1024 * 1024;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    visible_at INTEGER NOT NULL,
    claim_token INTEGER
);
CREATE INDEX IF NOT EXISTS queue_visible ON queue(visible_at);
CREATE TABLE IF NOT EXISTS seen (
    event_id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_expiry ON seen(expires_at);
CREATE TABLE IF NOT EXISTS processed (
    event_id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS processed_expiry ON processed(expires_at);
CREATE TABLE IF NOT EXISTS dlq (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    failure_reason TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dlq_event ON dlq(event_id);
CREATE TABLE IF NOT EXISTS metrics (
    map TEXT NOT NULL,
    field TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (map, field)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metrics_top_users ON metrics(value DESC, field)
    WHERE map = 'usage_by_user';
";

/// Marks an id as seen unless a live mark exists; one changed row means "accepted".
const MARK_SEEN: &str = "INSERT INTO seen (event_id, expires_at) VALUES (?1, ?2)
     ON CONFLICT (event_id) DO UPDATE SET expires_at = excluded.expires_at
     WHERE seen.expires_at <= ?3";
/// Marks an id as applied unless a live mark exists; one changed row means "apply it".
const MARK_PROCESSED: &str = "INSERT INTO processed (event_id, expires_at) VALUES (?1, ?2)
     ON CONFLICT (event_id) DO UPDATE SET expires_at = excluded.expires_at
     WHERE processed.expires_at <= ?3";
const PUSH: &str =
    "INSERT INTO queue (event_id, payload, failures, visible_at) VALUES (?1, ?2, 0, ?3)";
/// Leases the oldest visible rows in one statement, so two claimers can never share a row.
const CLAIM: &str = "UPDATE queue SET visible_at = ?1, claim_token = ?2
     WHERE id IN (SELECT id FROM queue WHERE visible_at <= ?3 ORDER BY visible_at, id LIMIT ?4)
     RETURNING id, event_id, payload, failures";
const ADD_METRIC: &str = "INSERT INTO metrics (map, field, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (map, field) DO UPDATE SET value = value + excluded.value";

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

/// Work for the writer thread; each variant carries where its answer goes.
enum WriteJob {
    Enqueue {
        events: Vec<QueuedEvent>,
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

/// Requests for the reader thread.
enum ReadJob {
    Ping(Reply<()>),
    Depths(Reply<Depths>),
    DlqList {
        limit: usize,
        offset: usize,
        reply: Reply<Vec<DeadLetter>>,
    },
    Metrics(Reply<MetricsSnapshot>),
    /// The file's data version, and when the next row becomes visible if it changed since.
    Watch {
        since: Option<i64>,
        reply: Reply<Watch>,
    },
}

/// What the claim wait loop learns from one poll.
struct Watch {
    version: i64,
    /// `Some` when the version differs from the one asked about: the earliest `visible_at`.
    next_visible: Option<Option<i64>>,
}

/// Why a store step failed, before it is given the file's name.
#[derive(Debug)]
enum StoreError {
    Sql(rusqlite::Error),
    /// A stored value this build cannot read back.
    Data(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e)
    }
}

type StoreResult<T> = Result<T, StoreError>;

/// Turns a SQLite failure into the trait's error, naming the file and the step. Busy and
/// locked are `Unavailable` (retry later, nothing changed); the rest say what is wrong.
fn classify(path: &Path, what: &str, e: StoreError) -> BackendError {
    let p = path.display();
    match e {
        StoreError::Sql(rusqlite::Error::SqliteFailure(f, msg)) => {
            let detail = msg.unwrap_or_else(|| f.to_string());
            match f.code {
                ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                    BackendError::Unavailable(format!(
                        "SQLite queue file {p} is locked by another process ({what}: {detail})"
                    ))
                }
                ErrorCode::DiskFull => BackendError::Failed(format!(
                    "SQLite queue file {p}: the disk is full ({what}: {detail})"
                )),
                ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => BackendError::Failed(
                    format!("{p} is not a SQLite database or is corrupt ({what}: {detail})"),
                ),
                ErrorCode::ReadOnly => BackendError::Failed(format!(
                    "SQLite queue file {p} is read-only ({what}: {detail})"
                )),
                ErrorCode::CannotOpen => BackendError::Failed(format!(
                    "cannot open SQLite queue file {p} ({what}: {detail})"
                )),
                _ => BackendError::Failed(format!("SQLite queue file {p}: {what}: {detail}")),
            }
        }
        StoreError::Sql(e) => BackendError::Failed(format!("SQLite queue file {p}: {what}: {e}")),
        StoreError::Data(e) => BackendError::Failed(format!("SQLite queue file {p}: {what}: {e}")),
    }
}

fn now_millis() -> i64 {
    epoch_millis(SystemTime::now())
}

/// Epoch milliseconds rounded up, so an instant stored as a due time is never reached early.
fn ceil_millis(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64 + i64::from(d.subsec_nanos() % 1_000_000 != 0),
        Err(_) => 0,
    }
}

/// Busy handler: waits for another connection's lock in short steps, so a lock released in
/// another process is taken within about a millisecond, for up to [`BUSY_TIMEOUT`] in all.
/// (SQLite's own `busy_timeout` sleeps up to 100 ms per step, which stalls a busy pipeline.)
fn wait_for_lock(prior_calls: i32) -> bool {
    const FINE_STEPS: i32 = 2_000;
    const FINE: Duration = Duration::from_micros(100);
    const COARSE: Duration = Duration::from_millis(1);
    let coarse_steps =
        ((BUSY_TIMEOUT - FINE * FINE_STEPS as u32).as_micros() / COARSE.as_micros()) as i32;
    if prior_calls < FINE_STEPS {
        std::thread::sleep(FINE);
        true
    } else if prior_calls < FINE_STEPS + coarse_steps {
        std::thread::sleep(COARSE);
        true
    } else {
        false
    }
}

/// Opens a connection on `path`, creating the parent directory and the file if missing, with
/// errors that name the path and the operating system's reason.
fn open_connection(path: &Path) -> BackendResult<Connection> {
    let p = path.display();
    if path.is_dir() {
        return Err(BackendError::Failed(format!(
            "cannot open SQLite queue file {p}: it is a directory"
        )));
    }
    if let Some(parent) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if parent.exists() && !parent.is_dir() {
            return Err(BackendError::Failed(format!(
                "cannot create SQLite queue file {p}: {} is not a directory",
                parent.display()
            )));
        }
        std::fs::create_dir_all(parent).map_err(|e| {
            BackendError::Failed(format!(
                "cannot create directory {} for SQLite queue file {p}: {e}",
                parent.display()
            ))
        })?;
    }
    // SQLite reports only "unable to open database file"; opening it ourselves first gives
    // the real cause (permission denied, read-only file system, …).
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| BackendError::Failed(format!("cannot open SQLite queue file {p}: {e}")))?;
    let conn = Connection::open(path).map_err(|e| classify(path, "open", e.into()))?;
    conn.busy_handler(Some(wait_for_lock))
        .map_err(|e| classify(path, "set busy handler", e.into()))?;
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "cache_size", -CACHE_KIB)
        .and_then(|()| conn.pragma_update(None, "mmap_size", MMAP_BYTES))
        // Statement journals (one per savepointed statement) in memory, not in temp files.
        .and_then(|()| conn.pragma_update(None, "temp_store", "MEMORY"))
        .map_err(|e| classify(path, "configure", e.into()))?;
    Ok(conn)
}

/// Puts a fresh or older file on [`SCHEMA_VERSION`], refusing files from a newer build.
fn migrate(conn: &mut Connection, path: &Path) -> BackendResult<()> {
    let step = |what: &str, e: rusqlite::Error| classify(path, what, e.into());
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(|e| step("enable WAL", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(BackendError::Failed(format!(
            "SQLite queue file {}: cannot use WAL mode (journal mode stays {mode}); \
             put the file on a local file system",
            path.display()
        )));
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| step("migrate", e))?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| step("read schema version", e))?;
    if version > SCHEMA_VERSION {
        return Err(BackendError::Failed(format!(
            "SQLite queue file {} has schema version {version}, written by a newer version of \
             this program (this one knows up to {SCHEMA_VERSION}); upgrade, or point \
             DAY15_SQLITE_PATH at another file",
            path.display()
        )));
    }
    if version < SCHEMA_VERSION {
        tx.execute_batch(SCHEMA)
            .map_err(|e| step("create schema", e))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| step("write schema version", e))?;
    }
    tx.commit().map_err(|e| step("migrate", e))
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

/// What one job's answer becomes once its group's commit is known: the job's own result if
/// the commit succeeded, the commit's error otherwise.
type Answer = Box<dyn FnOnce(&BackendResult<()>)>;

fn answer<T: 'static>(reply: Reply<T>, result: BackendResult<T>) -> Answer {
    Box::new(move |commit| {
        let _ = reply.send(commit.clone().and(result));
    })
}

/// The clock and settings one group runs with.
struct Ctx<'a> {
    now: i64,
    lease_ms: i64,
    ttl_ms: i64,
    path: &'a Path,
}

impl WriteJob {
    /// Whether SPEC §6.1 needs this job's commit to survive power loss.
    fn needs_fsync(&self) -> bool {
        matches!(
            self,
            WriteJob::Enqueue { .. } | WriteJob::DlqReplay { .. } | WriteJob::DlqPurge { .. }
        )
    }

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
            WriteJob::Enqueue { events, reply } => {
                let r = in_savepoint(tx, ctx, "enqueue", |c| enqueue(c, ctx, &events));
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
                    add_metrics(c, &Sums::of(&increments))
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
                let r = in_savepoint(tx, ctx, "purge dead letters", |c| {
                    Ok(c.prepare_cached("DELETE FROM dlq")?.execute([])? as u64)
                });
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

/// Writes summed increments: each metric row is touched once per batch.
fn add_metrics(c: &Connection, sums: &Sums<'_>) -> StoreResult<()> {
    let mut add = c.prepare_cached(ADD_METRIC)?;
    for (map, field, by) in sums.iter() {
        add.execute(params![map, field, by])?;
    }
    Ok(())
}

fn add_counters(c: &Connection, pairs: &[(&str, u64)]) -> StoreResult<()> {
    let mut add = c.prepare_cached(ADD_METRIC)?;
    for &(name, n) in pairs {
        if n > 0 {
            add.execute(params![maps::COUNTERS, name, n as f64])?;
        }
    }
    Ok(())
}

fn enqueue(
    c: &Connection,
    ctx: &Ctx<'_>,
    events: &[QueuedEvent],
) -> StoreResult<Vec<EnqueueOutcome>> {
    let mut mark = c.prepare_cached(MARK_SEEN)?;
    let mut push = c.prepare_cached(PUSH)?;
    let expires_at = ctx.now + ctx.ttl_ms;
    let mut out = Vec::with_capacity(events.len());
    let (mut accepted, mut duplicates) = (0, 0);
    for e in events {
        let id = e.event_id.as_str();
        if mark.execute(params![id, expires_at, ctx.now])? == 1 {
            push.execute(params![id, e.payload, ctx.now])?;
            accepted += 1;
            out.push(EnqueueOutcome::Accepted);
        } else {
            duplicates += 1;
            out.push(EnqueueOutcome::Duplicate);
        }
    }
    add_counters(
        c,
        &[
            (counters::ACCEPTED, accepted),
            (counters::DUPLICATES, duplicates),
        ],
    )?;
    Ok(out)
}

fn stored_id(s: &str) -> StoreResult<EventId> {
    EventId::parse(s).map_err(|why| StoreError::Data(format!("stored event id {s:?} {why}")))
}

fn claim(c: &Connection, ctx: &Ctx<'_>, max: usize) -> StoreResult<Vec<Delivery>> {
    // Random per claim, so a handle from an earlier lease of the same row never matches.
    let token = rand::random::<i64>() & i64::MAX;
    let mut stmt = c.prepare_cached(CLAIM)?;
    let rows = stmt.query_map(
        params![ctx.now + ctx.lease_ms, token, ctx.now, max as i64],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        },
    )?;
    let mut claimed = rows.collect::<Result<Vec<_>, _>>()?;
    claimed.sort_by_key(|row| row.0);
    claimed
        .into_iter()
        .map(|(id, event_id, payload, failures)| {
            Ok(Delivery {
                lease: Lease::Sqlite { row: id, token },
                event_id: stored_id(&event_id)?,
                payload,
                attempt: u32::try_from(failures).unwrap_or(u32::MAX - 1) + 1,
            })
        })
        .collect()
}

/// Settles a batch; returns whether any event went back to the queue for a retry.
///
/// Every statement names the row *and* the claim token of the settlement's lease: row ids are
/// reused once the newest row is deleted, so after a lost lease the id alone may name a newer
/// event, and a row leased to someone else meanwhile must stay theirs.
fn settle(c: &Connection, ctx: &Ctx<'_>, settlements: Vec<Settlement>) -> StoreResult<bool> {
    let applied_until = ctx.now + ctx.ttl_ms;
    // Effects and counters of the settlements that took effect, written summed at the end.
    let mut applied: Vec<Increment> = Vec::new();
    let mut requeued = false;
    for s in settlements {
        let Lease::Sqlite { row, token } = s.delivery().lease else {
            continue;
        };
        let counted = s.counted();
        let took_effect = match s {
            Settlement::Ack { effect, .. } => {
                let removed = c
                    .prepare_cached("DELETE FROM queue WHERE id = ?1 AND claim_token = ?2")?
                    .execute(params![row, token])?
                    == 1;
                if let Some(effect) = effect.filter(|_| removed) {
                    let fresh = c.prepare_cached(MARK_PROCESSED)?.execute(params![
                        effect.event_id.as_str(),
                        applied_until,
                        ctx.now
                    ])? == 1;
                    if fresh {
                        applied.extend(effect.increments);
                    }
                }
                removed
            }
            Settlement::Retry {
                delivery,
                not_before,
                ..
            } => {
                let moved =
                    c.prepare_cached(
                        "UPDATE queue SET visible_at = ?1, failures = ?2, claim_token = NULL
                         WHERE id = ?3 AND claim_token = ?4",
                    )?
                    .execute(params![
                        ceil_millis(not_before),
                        delivery.attempt,
                        row,
                        token
                    ])? == 1;
                requeued |= moved;
                moved
            }
            Settlement::DeadLetter {
                delivery,
                reason,
                error,
            } => {
                let taken: Option<(String, String)> = c
                    .prepare_cached(
                        "DELETE FROM queue WHERE id = ?1 AND claim_token = ?2
                         RETURNING event_id, payload",
                    )?
                    .query_row(params![row, token], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((event_id, payload)) = &taken {
                    c.prepare_cached(
                        "INSERT INTO dlq (event_id, payload, failure_reason, error, attempts,
                         failed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        event_id,
                        payload,
                        reason.as_str(),
                        error,
                        delivery.attempt,
                        ctx.now
                    ])?;
                }
                taken.is_some()
            }
        };
        if took_effect {
            applied.extend(counted.iter().map(|name| Increment::counter(name)));
        }
    }
    add_metrics(c, &Sums::of(&applied))?;
    Ok(requeued)
}

fn dlq_replay(c: &Connection, ctx: &Ctx<'_>, which: &DlqSelection) -> StoreResult<u64> {
    match which {
        DlqSelection::All => {
            let n = c
                .prepare_cached(
                    "INSERT INTO queue (event_id, payload, failures, visible_at)
                     SELECT event_id, payload, 0, ?1 FROM dlq ORDER BY id",
                )?
                .execute([ctx.now])?;
            c.prepare_cached("DELETE FROM dlq")?.execute([])?;
            Ok(n as u64)
        }
        DlqSelection::Ids(ids) => {
            let mut back = c.prepare_cached(
                "INSERT INTO queue (event_id, payload, failures, visible_at)
                 SELECT event_id, payload, 0, ?1 FROM dlq WHERE event_id = ?2 ORDER BY id",
            )?;
            let mut remove = c.prepare_cached("DELETE FROM dlq WHERE event_id = ?1")?;
            let mut n = 0;
            for id in ids {
                n += back.execute(params![ctx.now, id.as_str()])? as u64;
                remove.execute([id.as_str()])?;
            }
            Ok(n)
        }
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
struct Writer {
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
    fn open(
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
    fn run(mut self, mut jobs: mpsc::Receiver<WriteJob>) {
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

    /// Deletes expired marks and per-minute maps past the window, a bounded batch each.
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
        tx.commit().map_err(step)?;
        Ok(full)
    }
}

/// The reader thread's state: a query-only connection that never waits for the writer.
struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    fn open(path: PathBuf) -> BackendResult<Reader> {
        let conn = open_connection(&path)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(|e| classify(&path, "open for reading", e.into()))?;
        Ok(Reader { conn, path })
    }

    fn run(mut self, mut jobs: mpsc::Receiver<ReadJob>) {
        while let Some(job) = jobs.blocking_recv() {
            match job {
                ReadJob::Ping(reply) => {
                    let r = self.step("ping", |c| {
                        c.prepare_cached("SELECT count(*) FROM sqlite_master")?
                            .query_row([], |r| r.get::<_, i64>(0))?;
                        Ok(())
                    });
                    let _ = reply.send(r);
                }
                ReadJob::Depths(reply) => {
                    let _ = reply.send(self.step("read depths", depths));
                }
                ReadJob::DlqList {
                    limit,
                    offset,
                    reply,
                } => {
                    let _ =
                        reply.send(self.step("list dead letters", |c| dlq_list(c, limit, offset)));
                }
                ReadJob::Metrics(reply) => {
                    let _ = reply.send(self.step("read metrics", metrics));
                }
                ReadJob::Watch { since, reply } => {
                    let _ = reply.send(self.step("watch the queue", |c| watch(c, since)));
                }
            }
        }
    }

    /// Runs `f` in one read transaction, so what it returns is one consistent snapshot.
    fn step<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> BackendResult<T> {
        let result = (|| {
            let tx = self.conn.transaction()?;
            let v = f(&tx)?;
            tx.commit()?;
            Ok(v)
        })();
        result.map_err(|e| classify(&self.path, what, e))
    }
}

fn depths(c: &Connection) -> StoreResult<Depths> {
    let count = |sql: &str| -> StoreResult<u64> {
        Ok(c.prepare_cached(sql)?
            .query_row([], |r| r.get::<_, i64>(0))? as u64)
    };
    Ok(Depths {
        queue: count("SELECT count(*) FROM queue")?,
        dlq: count("SELECT count(*) FROM dlq")?,
    })
}

fn dlq_list(c: &Connection, limit: usize, offset: usize) -> StoreResult<Vec<DeadLetter>> {
    let mut stmt = c.prepare_cached(
        "SELECT event_id, payload, failure_reason, error, attempts, failed_at
         FROM dlq ORDER BY id LIMIT ?1 OFFSET ?2",
    )?;
    let rows = stmt.query_map(
        params![
            i64::try_from(limit).unwrap_or(i64::MAX),
            i64::try_from(offset).unwrap_or(i64::MAX)
        ],
        |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (event_id, payload, failure_reason, error, attempts, failed_at) = row?;
        out.push(DeadLetter {
            event_id: stored_id(&event_id)?,
            event: payload_value(&payload),
            failure_reason,
            error,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            failed_at: format_millis(failed_at),
        });
    }
    Ok(out)
}

fn metrics(c: &Connection) -> StoreResult<MetricsSnapshot> {
    let mut snapshot = MetricsSnapshot::default();
    // Walk map names by index seeks, so the (large) users and per-user maps are never scanned.
    let mut next_map = c.prepare_cached("SELECT MIN(map) FROM metrics WHERE map > ?1")?;
    let mut fields = c.prepare_cached("SELECT field, value FROM metrics WHERE map = ?1")?;
    let mut after = String::new();
    while let Some(name) = next_map.query_row([&after], |r| r.get::<_, Option<String>>(0))? {
        if MapShape::of(&name) == MapShape::Summed {
            let map = fields
                .query_map([&name], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
                })?
                .collect::<Result<_, _>>()?;
            snapshot.maps.insert(name.clone(), map);
        }
        after = name;
    }
    snapshot.distinct_users = c
        .prepare_cached("SELECT count(*) FROM metrics WHERE map = ?1")?
        .query_row([maps::USERS], |r| r.get::<_, i64>(0))? as u64;
    // The partial index holds this map's rows in exactly this order: reading the top is a
    // scan of its first rows, however many users there are. (The literal map name is what
    // lets SQLite use a partial index.)
    let top = format!(
        "SELECT field, value FROM metrics INDEXED BY metrics_top_users
         WHERE map = '{}' ORDER BY value DESC, field LIMIT {}",
        maps::USAGE_BY_USER,
        TOP_USERS
    );
    snapshot.top_users = c
        .prepare_cached(&top)?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(snapshot)
}

fn watch(c: &Connection, since: Option<i64>) -> StoreResult<Watch> {
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

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> BackendResult<()> {
        self.read(ReadJob::Ping).await
    }

    async fn enqueue(&self, events: Vec<QueuedEvent>) -> BackendResult<Vec<EnqueueOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|reply| WriteJob::Enqueue { events, reply })
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
                return Ok(got);
            }
            let mut pause = POLL_MIN;
            loop {
                if cancel.is_cancelled() || tokio::time::Instant::now() >= deadline {
                    return Ok(Vec::new());
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
                    _ = tokio::time::sleep_until(until) => {}
                    _ = cancel.cancelled() => return Ok(Vec::new()),
                }
                pause = (pause * 2).min(POLL_MAX);
            }
        }
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

    async fn metrics(&self) -> BackendResult<MetricsSnapshot> {
        self.read(ReadJob::Metrics).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_round_up_to_the_next_millisecond() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_000_700);
        assert_eq!(ceil_millis(t), 1_001);
        let exact = SystemTime::UNIX_EPOCH + Duration::from_millis(1_000);
        assert_eq!(ceil_millis(exact), 1_000);
    }

    #[test]
    fn the_top_users_index_covers_the_ranked_map() {
        assert!(SCHEMA.contains(&format!("WHERE map = '{}'", maps::USAGE_BY_USER)));
    }
}
