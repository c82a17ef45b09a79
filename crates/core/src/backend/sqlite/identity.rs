//! Which file a process has open, and whether the path still names it.
//!
//! SQLite keeps working on a file that was deleted or replaced under it: the process writes
//! into an inode nobody else will ever open, while the next process to start creates a new,
//! empty store at the path. Each process therefore remembers the device and inode of the file
//! it opened (holding its own descriptor, so the inode number cannot be reused) and checks
//! periodically that the path still names that very file.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The file a process opened at a path, to tell when the path no longer names it.
#[derive(Debug)]
pub struct StoreIdentity {
    path: PathBuf,
    /// Kept open: the inode stays allocated (its number cannot be given to a new file) and
    /// its link count tells a deletion apart from an unreadable directory.
    file: File,
    dev: u64,
    ino: u64,
}

impl StoreIdentity {
    /// Remembers the file `path` names now. Fails when it cannot be opened for reading.
    pub fn of(path: &Path) -> std::io::Result<StoreIdentity> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(StoreIdentity {
            path: path.to_path_buf(),
            file,
            dev: meta.dev(),
            ino: meta.ino(),
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
        let deleted = self
            .file
            .metadata()
            .map(|m| m.nlink() == 0)
            .unwrap_or(false);
        let replaced = match std::fs::metadata(&self.path) {
            Ok(m) => (m.dev(), m.ino()) != (self.dev, self.ino),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        if deleted || replaced {
            Err(lost_message(&self.path))
        } else {
            Ok(())
        }
    }
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

    #[test]
    fn a_deleted_or_replaced_file_is_reported_and_an_untouched_one_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.sqlite3");
        std::fs::write(&path, b"x").expect("write");
        let id = StoreIdentity::of(&path).expect("identity");
        assert_eq!(id.check(), Ok(()));

        std::fs::remove_file(&path).expect("remove");
        let err = id.check().expect_err("deleted");
        assert!(
            err.contains("was deleted or replaced while in use"),
            "{err}"
        );

        // A new file at the same path is another store.
        std::fs::write(&path, b"y").expect("write again");
        assert!(id.check().is_err());

        let replaced = StoreIdentity::of(&path).expect("identity");
        let other = dir.path().join("other");
        std::fs::write(&other, b"z").expect("write other");
        std::fs::rename(&other, &path).expect("rename over");
        assert!(replaced.check().is_err());
    }
}
