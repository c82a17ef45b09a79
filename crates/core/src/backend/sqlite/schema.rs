//! The file's tables and indexes, and the migration that puts a file on [`SCHEMA_VERSION`].
//!
//! Every row that carries a guarantee lives here: the queue with its lease columns
//! (`visible_at`, `claim_token`), the idempotency marks (`seen`), the applied marks
//! (`processed`), the dead letters and the aggregates (`metrics`, since version 2 the
//! HyperLogLog registers of the distinct-user count, `distinct_users_hll`, and since version 3
//! those of each rollup bucket, `rollup_users`).

use std::path::Path;

use rusqlite::{params, Connection, TransactionBehavior};

use super::error::classify;
use crate::backend::{BackendError, BackendResult};

/// The schema this build writes; files from a newer build are refused, older ones migrated.
pub const SCHEMA_VERSION: i64 = 3;

/// The row of `distinct_users_hll` (not a register) whose presence says the exact user set
/// was full and left a user out: from then on the distinct count is the estimate.
pub(super) const DISTINCT_USERS_FULL: i64 = -1;

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

/// Added by version 2: the registers of the distinct-user HyperLogLog (register -> highest
/// rank seen), plus the [`DISTINCT_USERS_FULL`] mark.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS distinct_users_hll (
    register INTEGER PRIMARY KEY,
    rank INTEGER NOT NULL
);
";

/// Added by version 3: the distinct users of each rollup bucket, one row per bucket holding the
/// HyperLogLog registers that are set (see `bucket_users.rs`), so a batch writes one row per
/// bucket however many users it has.
const SCHEMA_V3: &str = "
CREATE TABLE IF NOT EXISTS rollup_users (
    map TEXT PRIMARY KEY,
    registers BLOB NOT NULL
) WITHOUT ROWID;
";

/// Feeds the users a version-1 file counted exactly to the new registers, so the estimate
/// covers them once the exact set is full.
fn seed_registers(tx: &Connection) -> rusqlite::Result<()> {
    let mut hll = crate::analytics::hll::Hll::new();
    let mut seen = false;
    {
        let mut users = tx.prepare("SELECT field FROM metrics WHERE map = ?1")?;
        let mut rows = users.query([crate::analytics::maps::USERS])?;
        while let Some(row) = rows.next()? {
            hll.insert(&row.get::<_, String>(0)?);
            seen = true;
        }
    }
    if !seen {
        return Ok(());
    }
    let mut raise = tx.prepare(
        "INSERT INTO distinct_users_hll (register, rank) VALUES (?1, ?2)
         ON CONFLICT (register) DO UPDATE SET rank = max(rank, excluded.rank)",
    )?;
    for (register, rank) in hll.registers() {
        raise.execute(params![register as i64, rank])?;
    }
    Ok(())
}

// ---- Store identity (independent of the versioned schema above) ----
// A random id written once, when the file gets its first writer: a file copied over this one
// in place (same inode) is told apart by its id. Idempotent, run by every writer at open.
const STORE_ID: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('store_id', lower(hex(randomblob(16))));
";

/// The file's store id, `None` when it has none (not a store this build created or opened).
pub(super) fn store_id(conn: &Connection) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    let read = conn
        .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
            r.get(0)
        })
        .optional();
    match read {
        // No `meta` table: no id.
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
            Ok(None)
        }
        other => other,
    }
}
// ---- end of store identity ----

/// Puts a fresh or older file on [`SCHEMA_VERSION`], refusing files from a newer build.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> BackendResult<()> {
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
        tx.execute_batch(SCHEMA_V2)
            .map_err(|e| step("create schema", e))?;
        tx.execute_batch(SCHEMA_V3)
            .map_err(|e| step("create schema", e))?;
        if version < 2 {
            seed_registers(&tx).map_err(|e| step("migrate distinct users", e))?;
        }
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|e| step("write schema version", e))?;
    }
    tx.execute_batch(STORE_ID)
        .map_err(|e| step("write the store id", e))?;
    tx.commit().map_err(|e| step("migrate", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::maps;

    /// A file as version 1 left it: its schema, some exact users and the version mark.
    fn version_one_file(path: &Path, users: usize) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        for u in 0..users {
            c.execute(
                "INSERT INTO metrics (map, field, value) VALUES (?1, ?2, 1)",
                params![maps::USERS, format!("u{u}")],
            )
            .unwrap();
        }
        c.pragma_update(None, "user_version", 1).unwrap();
    }

    #[test]
    fn a_version_one_file_is_migrated_with_its_users_in_the_estimate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.sqlite3");
        version_one_file(&path, 2_000);
        let mut c = Connection::open(&path).unwrap();
        migrate(&mut c, &path).unwrap();
        let version: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mut hll = crate::analytics::hll::Hll::new();
        let mut q = c
            .prepare("SELECT register, rank FROM distinct_users_hll")
            .unwrap();
        let rows = q
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .unwrap();
        for row in rows {
            let (register, rank) = row.unwrap();
            hll.raise(register as usize, rank as u8);
        }
        let e = hll.estimate() as f64;
        assert!((e - 2_000.0).abs() / 2_000.0 < 0.03, "{e}");
        let users: i64 = c
            .query_row(
                "SELECT count(*) FROM metrics WHERE map = ?1",
                [maps::USERS],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(users, 2_000, "the exact users stay");
    }

    #[test]
    fn the_top_users_index_covers_the_ranked_map() {
        assert!(SCHEMA.contains(&format!("WHERE map = '{}'", maps::USAGE_BY_USER)));
    }
}
