//! Opening a connection on the queue file: the directory and file checks that give a clear
//! error, the busy handler that waits for another process's lock in short steps, and the
//! per-connection pragmas. Both the writer and the reader thread open theirs here.
//!
//! The file holds e-mail addresses: a directory created here is `0700` and a file created
//! here `0600` (SQLite gives its `-wal` and `-shm` files the main file's mode).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, MAIN_DB};

use super::error::classify;
use crate::backend::{BackendError, BackendResult};

/// How long a statement waits for another process's write lock before giving up (busy).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page cache of each connection (KiB) and how much of the file is memory-mapped (bytes):
/// enough that claims and settlements rarely read a page through a system call.
const CACHE_KIB: i64 = 32 * 1024;
const MMAP_BYTES: i64 = 256 * 1024 * 1024;

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
pub(super) fn open_connection(path: &Path) -> BackendResult<Connection> {
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
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| {
                BackendError::Failed(format!(
                    "cannot create directory {} for SQLite queue file {p}: {e}",
                    parent.display()
                ))
            })?;
    }
    // A new file is created private (it holds e-mail addresses; SQLite gives its -wal and -shm
    // the same mode). Only when it does not exist yet: then no connection of this process can
    // hold a lock on it, which closing our descriptor would drop (see `why_unusable`).
    if !path.exists() {
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
    // The file is opened by SQLite alone, and by us only once SQLite could not write it (see
    // `why_unusable`).
    let conn = match Connection::open(path) {
        Ok(conn) if !conn.is_readonly(MAIN_DB).unwrap_or(false) => conn,
        // SQLite falls back to read-only when it may not write, and reports only "unable to
        // open database file" when it cannot open at all.
        Ok(conn) => {
            drop(conn);
            return Err(why_unusable(path).unwrap_or_else(|| {
                BackendError::Failed(format!("SQLite queue file {p} is read-only (open)"))
            }));
        }
        Err(e) => {
            return Err(why_unusable(path).unwrap_or_else(|| classify(path, "open", e.into())))
        }
    };
    conn.busy_handler(Some(wait_for_lock))
        .map_err(|e| classify(path, "set busy handler", e.into()))?;
    conn.set_prepared_statement_cache_capacity(64);
    // A statement comparing a bound parameter with `metrics.map` could use the partial index
    // on the ranked map when the value matches it, so SQLite otherwise recompiles the cached
    // statement whenever that parameter changes: on every map of every settle. Queries meant
    // for the partial index name the map literally.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .and_then(|_| conn.pragma_update(None, "cache_size", -CACHE_KIB))
        .and_then(|()| conn.pragma_update(None, "mmap_size", MMAP_BYTES))
        // Statement journals (one per savepointed statement) in memory, not in temp files.
        .and_then(|()| conn.pragma_update(None, "temp_store", "MEMORY"))
        .map_err(|e| classify(path, "configure", e.into()))?;
    Ok(conn)
}

/// How long the write probe waits for another connection's write lock before it reports the
/// store as not writable: longer than any commit of a healthy pipeline, shorter than
/// [`BUSY_TIMEOUT`], after which real writes fail.
const PROBE_BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection for the write probe (`BEGIN IMMEDIATE; ROLLBACK`): it never creates the file
/// and gives up on a held write lock after [`PROBE_BUSY_TIMEOUT`].
pub(super) fn open_probe(path: &Path) -> BackendResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| classify(path, "open", e.into()))?;
    conn.busy_timeout(PROBE_BUSY_TIMEOUT)
        .map_err(|e| classify(path, "set busy timeout", e.into()))?;
    Ok(conn)
}

/// Whether a write transaction can start now: takes the write lock and gives it back at
/// once, changing nothing.
pub(super) fn probe_write(conn: &Connection, path: &Path) -> BackendResult<()> {
    conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK")
        .map_err(|e| classify(path, "take the write lock", e.into()))
}

/// The operating system's reason why `path` cannot be opened for writing (permission denied,
/// read-only file system, …), found by opening it ourselves.
///
/// Only for a file SQLite could not open for writing: closing a descriptor of the file drops
/// every POSIX lock this process holds on it, including those of its open SQLite connections.
/// Another process closing the file would then see no other user, checkpoint and delete the
/// WAL those connections still write to, and what they commit after that would be lost.
fn why_unusable(path: &Path) -> Option<BackendError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .err()
        .map(|e| {
            BackendError::Failed(format!(
                "cannot open SQLite queue file {}: {e}",
                path.display()
            ))
        })
}
