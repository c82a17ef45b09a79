//! Which file a process has open, and whether the path still names it.
//!
//! SQLite keeps working on a file that was deleted or replaced under it: the process writes
//! into an inode nobody else will ever open, while the next process to start creates a new,
//! empty store at the path. Each process therefore remembers the device and inode of the file
//! it opened and its store id (a random id in its `meta` table, which tells apart a file
//! copied over it in place, or a new file that got the old inode's number), and checks
//! periodically that the path still names that very store. The store id is read again only
//! when the file's size or change time moved since it was last read (a copy in place writes
//! the file): a check at rest is one `stat`, no connection opened, so it neither costs a
//! process anything nor wakes the other processes' change notifications.
//!
//! No descriptor of the file is kept here: closing one would drop every POSIX lock this
//! process's SQLite connections hold on the file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

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
    /// The file's [`Stamp`] when its id was last read and found unchanged; `None` makes the
    /// next check read it.
    verified: Mutex<Option<Stamp>>,
}

/// What a write to the file changes: its size and its change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    ctime: (i64, i64),
}

/// A change time this close to the read is not trusted to tell writes apart: another write in
/// the same clock tick would leave it as it was (git's "racily clean" entries).
const SETTLED: Duration = Duration::from_secs(2);

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether a later write is bound to change this stamp.
    fn settled(&self) -> bool {
        let changed = SystemTime::UNIX_EPOCH
            + Duration::new(
                u64::try_from(self.ctime.0).unwrap_or(0),
                u32::try_from(self.ctime.1).unwrap_or(0),
            );
        changed
            .checked_add(SETTLED)
            .is_some_and(|t| t < SystemTime::now())
    }
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
            verified: Mutex::new(None),
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
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(lost_message(&self.path))
            }
            Err(_) => return Ok(()),
        };
        if (meta.dev(), meta.ino()) != (self.dev, self.ino) {
            return Err(lost_message(&self.path));
        }
        let Some(id) = &self.id else { return Ok(()) };
        let stamp = Stamp::of(&meta);
        let mut verified = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *verified == Some(stamp) {
            return Ok(());
        }
        // Same file, other content: a store copied over this one in place. A read that fails
        // (busy, a copy still in progress) proves nothing and is asked again next time.
        match read_id(&self.path) {
            Ok(now) if now.as_deref() != Some(id.as_str()) => Err(lost_message(&self.path)),
            Ok(_) => {
                *verified = stamp.settled().then_some(stamp);
                Ok(())
            }
            Err(_) => Ok(()),
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

    #[test]
    fn a_change_time_is_trusted_only_once_the_clock_moved_past_it() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock after 1970");
        let at = |secs_ago: u64| Stamp {
            len: 4096,
            ctime: ((now.as_secs() - secs_ago) as i64, 0),
        };
        assert!(
            !at(0).settled(),
            "a write in this tick could leave it unchanged"
        );
        assert!(at(10).settled());
    }

    #[test]
    fn a_copy_in_place_after_a_settled_check_is_still_reported() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ours = store(dir.path(), "ours.sqlite3");
        let other = store(dir.path(), "other.sqlite3");
        let id = StoreIdentity::of(&ours).expect("identity");
        let meta = std::fs::metadata(&ours).expect("stat");
        *id.verified.lock().expect("lock") = Some(Stamp::of(&meta));
        assert_eq!(id.check(), Ok(()), "an unchanged stamp needs no read");
        // As verified a while ago: the copy below is a later write, so it moves the stamp.
        *id.verified.lock().expect("lock") = Some(Stamp {
            ctime: (meta.ctime() - 10, meta.ctime_nsec()),
            ..Stamp::of(&meta)
        });
        let bytes = std::fs::read(&other).expect("read other");
        std::fs::write(&ours, bytes).expect("copy in place");
        assert!(id.check().is_err());
    }

    const STORE_ID_FOR_TESTS: &str = "
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('store_id', lower(hex(randomblob(16))));";
}
