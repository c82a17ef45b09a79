//! Which file a process has open, and whether the path still names it.
//!
//! SQLite keeps working on a file that was deleted or replaced under it: the process writes
//! into an inode nobody else will ever open, while the next process to start creates a new,
//! empty store at the path. Each process therefore remembers the device and inode of the file
//! it opened and its store id (a random id in its `meta` table, which tells apart a file
//! copied over it in place, or a new file that got the old inode's number), and checks
//! periodically that the path still names that very store.
//!
//! No descriptor of the file is kept here: closing one would drop every POSIX lock this
//! process's SQLite connections hold on the file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::schema::store_id;

/// The file a process opened at a path, to tell when the path no longer names it.
#[derive(Debug)]
pub struct StoreIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// The store id read at first, when the file has one.
    id: Option<String>,
}

impl StoreIdentity {
    /// Remembers the file `path` names now, and its store id when it has one. Fails when it
    /// cannot be examined.
    pub fn of(path: &Path) -> std::io::Result<StoreIdentity> {
        let meta = std::fs::metadata(path)?;
        let id = read_id(path).ok().flatten();
        Ok(StoreIdentity {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            id,
        })
    }

    /// The path this identity was taken from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `Err` with one sentence when the file was deleted or the path now names another file.
    /// A path that cannot be examined for another reason (permissions) is not reported: only
    /// a proven loss stops a process.
    pub fn check(&self) -> Result<(), String> {
        let (deleted, replaced) = match std::fs::metadata(&self.path) {
            Ok(m) => (false, (m.dev(), m.ino()) != (self.dev, self.ino)),
            Err(e) => (e.kind() == std::io::ErrorKind::NotFound, false),
        };
        // Same file, other content: a store copied over this one in place. A read that fails
        // (busy, a copy still in progress) proves nothing and is asked again next time.
        let overwritten = !deleted
            && !replaced
            && self
                .id
                .as_ref()
                .is_some_and(|id| match read_id(&self.path) {
                    Ok(now) => now.as_deref() != Some(id.as_str()),
                    Err(_) => false,
                });
        if deleted || replaced || overwritten {
            Err(lost_message(&self.path))
        } else {
            Ok(())
        }
    }
}

/// The store id of the file at `path`, read through a connection of its own (a connection
/// kept open could answer from its page cache after the file was overwritten).
fn read_id(path: &Path) -> rusqlite::Result<Option<String>> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    store_id(&Connection::open_with_flags(path, flags)?)
}

/// The sentence logged, answered by `/health` and returned by every call once a store is lost.
pub fn lost_message(path: &Path) -> String {
    format!(
        "SQLite queue file {} was deleted or replaced while in use; stopping so no event is \
         accepted into a store nobody reads",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SQLite file with a store id, as a writer leaves it.
    fn store(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(STORE_ID_FOR_TESTS).expect("store id");
        path
    }

    #[test]
    fn a_deleted_or_replaced_file_is_reported_and_an_untouched_one_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = store(dir.path(), "q.sqlite3");
        let id = StoreIdentity::of(&path).expect("identity");
        assert_eq!(id.check(), Ok(()));

        std::fs::remove_file(&path).expect("remove");
        let err = id.check().expect_err("deleted");
        assert!(
            err.contains("was deleted or replaced while in use"),
            "{err}"
        );

        // A new store at the same path is another store, even if it got the same inode number.
        store(dir.path(), "q.sqlite3");
        assert!(id.check().is_err());

        let replaced = StoreIdentity::of(&path).expect("identity");
        assert_eq!(replaced.check(), Ok(()));
        let other = store(dir.path(), "other.sqlite3");
        std::fs::rename(&other, &path).expect("rename over");
        assert!(replaced.check().is_err());
    }

    #[test]
    fn a_store_copied_over_another_in_place_is_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = store(dir.path(), "ours.sqlite3");
        let other = store(dir.path(), "other.sqlite3");
        let id = StoreIdentity::of(&ours).expect("identity");
        assert!(id.id.is_some(), "the store id was read");
        assert_ne!(id.id, StoreIdentity::of(&other).expect("identity").id);
        assert_eq!(id.check(), Ok(()));
        // `cp other ours`: same inode, another store's content.
        let bytes = std::fs::read(&other).expect("read other");
        std::fs::write(&ours, bytes).expect("copy in place");
        assert!(id.check().is_err());
    }

    const STORE_ID_FOR_TESTS: &str = "
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('store_id', lower(hex(randomblob(16))));";
}
