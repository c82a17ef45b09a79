//! Opening a connection on the queue file: the directory and file checks that give a clear
//! error, the busy handler that waits for another process's lock in short steps, and the
//! per-connection pragmas. Both the writer and the reader thread open theirs here.
//!
//! The file holds e-mail addresses: a directory created here is `0700` and a file created
//! here `0600` (SQLite gives its `-wal` and `-shm` files the main file's mode).

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

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
    // SQLite reports only "unable to open database file"; opening it ourselves first gives
    // the real cause (permission denied, read-only file system, …).
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
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
