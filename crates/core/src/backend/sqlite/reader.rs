//! The reader thread: a second, query-only connection for depths, metrics, the DLQ listing and
//! the claim wait loop's polls. Each request runs in one read transaction (one snapshot) and
//! never waits for the writer (WAL readers do not block on a writer).

use std::path::PathBuf;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::mpsc;

use super::connection::open_connection;
use super::dlq::dlq_list;
use super::error::{classify, StoreResult};
use super::metrics::{metrics, rollups, RollupRange};
use super::wait::{watch, Watch};
use super::Reply;
use crate::analytics::rollup::Buckets;
use crate::analytics::StoredMetrics;
use crate::backend::{payload_received_at_ms, BackendResult, DeadLetter, Depths};

/// Requests waiting for the reader thread.
pub(super) const READ_QUEUE: usize = 256;

/// Requests for the reader thread.
pub(super) enum ReadJob {
    Ping(Reply<()>),
    Depths(Reply<Depths>),
    DlqList {
        limit: usize,
        offset: usize,
        reply: Reply<Vec<DeadLetter>>,
    },
    Metrics(Reply<StoredMetrics>),
    Rollups {
        range: RollupRange,
        reply: Reply<Buckets>,
    },
    /// The file's data version, and when the next row becomes visible if it changed since.
    Watch {
        since: Option<i64>,
        reply: Reply<Watch>,
    },
}

/// The reader thread's state: a query-only connection that never waits for the writer.
pub(super) struct Reader {
    conn: Connection,
    path: PathBuf,
}

impl Reader {
    pub(super) fn open(path: PathBuf) -> BackendResult<Reader> {
        let conn = open_connection(&path)?;
        conn.pragma_update(None, "query_only", true)
            .map_err(|e| classify(&path, "open for reading", e.into()))?;
        Ok(Reader { conn, path })
    }

    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<ReadJob>) {
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
                ReadJob::Rollups { range, reply } => {
                    let _ = reply.send(self.step("read rollups", |c| rollups(c, &range)));
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
    // Rows keep their id through claims and retries, so the smallest id is the oldest queued.
    let oldest: Option<String> = c
        .prepare_cached("SELECT payload FROM queue ORDER BY id LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(Depths {
        queue: count("SELECT count(*) FROM queue")?,
        dlq: count("SELECT count(*) FROM dlq")?,
        oldest_at: oldest.as_deref().and_then(payload_received_at_ms),
    })
}
