//! The log file: private, appended to by several processes, rotated by size.
//!
//! The file is created with mode 0600 (and missing directories with 0700): it holds e-mail
//! addresses. It is opened with `O_APPEND` and each buffer of whole lines goes to one `write`,
//! so processes sharing the file never tear each other's lines.
//!
//! Rotation keeps the name, so `tail -F` follows it: when the file would exceed
//! [`Rotation::max_bytes`], `<file>` becomes `<file>.1` (`.1` becomes `.2`, …; the file beyond
//! [`Rotation::max_files`] is deleted) and a new `<file>` is created. The check-and-rename is
//! done under an exclusive `flock` on `<file>.lock`, and re-checked under it, so two processes
//! never rotate the same file twice. Every writer notices at its next check (at least once a
//! second, and whenever its count of the file's size reaches the limit) that the path no
//! longer names the file it has open, and reopens it; lines written meanwhile land in
//! `<file>.1`, none are lost.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// When a writer checks, at the latest, whether its file was rotated by another process.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long a writer waits after a failed rotation (e.g. a read-only directory) before trying
/// again; meanwhile it keeps appending, so no line is lost.
const RETRY_ROTATION_AFTER: Duration = Duration::from_secs(10);

/// When the log file is rotated and how many files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Size in bytes above which the file is rotated; 0 = never.
    pub max_bytes: u64,
    /// Files kept, the current one included; at least 1.
    pub max_files: u32,
}

impl Default for Rotation {
    /// The defaults of `DAY15_LOG_MAX_BYTES` and `DAY15_LOG_MAX_FILES`: 100 MiB, 5 files.
    fn default() -> Self {
        Rotation {
            max_bytes: 100 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// One process's handle on the shared, rotated log file.
pub struct LogFile {
    path: PathBuf,
    rotation: Rotation,
    file: BufWriter<File>,
    /// `(device, inode)` of the open file, to see when the path names another one.
    id: (u64, u64),
    /// The file's size as last seen plus what this process wrote since.
    size: u64,
    last_check: Instant,
    rotate_not_before: Option<Instant>,
    buffer: usize,
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// `<path>.<n>`.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

impl LogFile {
    /// Opens (creating it, and its directories, if needed) the log at `path`. `buffer` is the
    /// most bytes collected before a write.
    pub fn open(path: &Path, rotation: Rotation, buffer: usize) -> io::Result<LogFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = open_append(path)?;
        let meta = file.metadata()?;
        Ok(LogFile {
            path: path.to_path_buf(),
            rotation: Rotation {
                max_bytes: rotation.max_bytes,
                max_files: rotation.max_files.max(1),
            },
            file: BufWriter::with_capacity(buffer, file),
            id: file_id(&meta),
            size: meta.len(),
            last_check: Instant::now(),
            rotate_not_before: None,
            buffer,
        })
    }

    /// Appends one whole record, rotating first if it would take the file past the limit.
    pub fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        let incoming = record.len() as u64;
        let over = self.rotation.max_bytes > 0
            && self.size > 0
            && self.size + incoming > self.rotation.max_bytes;
        if over || self.last_check.elapsed() >= CHECK_EVERY {
            self.check(incoming)?;
        }
        self.file.write_all(record)?;
        self.size += incoming;
        Ok(())
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Follows a rotation done elsewhere, then rotates if `incoming` bytes would take the
    /// file past the limit.
    fn check(&mut self, incoming: u64) -> io::Result<()> {
        self.last_check = Instant::now();
        if !self.path_names_open_file() {
            self.reopen()?;
        }
        let on_disk = self.file.get_ref().metadata()?.len();
        self.size = on_disk + self.file.buffer().len() as u64;
        let max = self.rotation.max_bytes;
        let waiting = self.rotate_not_before.is_some_and(|t| Instant::now() < t);
        if max > 0 && self.size > 0 && self.size + incoming > max && !waiting {
            match self.rotate(incoming) {
                Ok(()) => self.rotate_not_before = None,
                // Keep appending to the file we have; try again later.
                Err(_) => self.rotate_not_before = Some(Instant::now() + RETRY_ROTATION_AFTER),
            }
        }
        Ok(())
    }

    fn path_names_open_file(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| file_id(&m) == self.id)
    }

    /// Opens whatever file the path names now (creating it if it is gone).
    fn reopen(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let file = open_append(&self.path)?;
        let meta = file.metadata()?;
        self.id = file_id(&meta);
        self.size = meta.len();
        self.file = BufWriter::with_capacity(self.buffer, file);
        Ok(())
    }

    /// Shifts the files under the lock, unless another process did it first, then reopens.
    fn rotate(&mut self, incoming: u64) -> io::Result<()> {
        // What this process buffered belongs to the file being rotated.
        self.file.flush()?;
        let lock_file = open_append(&numbered_lock(&self.path))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let still_ours_and_full = std::fs::metadata(&self.path).is_ok_and(|m| {
            file_id(&m) == self.id && m.len() > 0 && m.len() + incoming > self.rotation.max_bytes
        });
        if still_ours_and_full {
            let keep = self.rotation.max_files;
            if keep == 1 {
                std::fs::remove_file(&self.path)?;
            } else {
                // Renaming over the oldest deletes it.
                for n in (1..keep).rev() {
                    let from = if n == 1 {
                        self.path.clone()
                    } else {
                        numbered(&self.path, n - 1)
                    };
                    match std::fs::rename(&from, numbered(&self.path, n)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
            }
        }
        // Created while the lock is held, so no other writer creates a second one.
        self.reopen()
    }
}

/// `<path>.lock`, the file whose `flock` serialises rotations.
fn numbered_lock(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        names.sort();
        names
    }

    fn line(n: usize) -> Vec<u8> {
        format!("2025-12-16 19:30:15,234 - webhook - INFO - line {n:06}\n").into_bytes()
    }

    #[test]
    fn files_and_directories_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new/dir/pipeline.log");
        let mut log = LogFile::open(&path, Rotation::default(), 1024).unwrap();
        log.write_record(b"x\n").unwrap();
        log.flush().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("new/dir")), 0o700);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
    }

    #[test]
    fn rotation_keeps_the_name_and_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.log");
        let rotation = Rotation {
            max_bytes: 1000,
            max_files: 3,
        };
        let mut log = LogFile::open(&path, rotation, 64 * 1024).unwrap();
        for n in 0..200 {
            log.write_record(&line(n)).unwrap();
        }
        log.flush().unwrap();
        assert_eq!(
            files(dir.path()),
            ["pipeline.log", "pipeline.log.1", "pipeline.log.2"]
        );
        for name in files(dir.path()) {
            let len = std::fs::metadata(dir.path().join(&name)).unwrap().len();
            assert!(len <= 1000, "{name}: {len} bytes");
        }
        // The newest lines are in the current file, the ones before in .1, in order.
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("line 000199\n"), "{current}");
        let previous = std::fs::read_to_string(numbered(&path, 1)).unwrap();
        let last_prev: usize = previous.lines().last().unwrap()[50..].parse().unwrap();
        let first_cur: usize = current.lines().next().unwrap()[50..].parse().unwrap();
        assert_eq!(last_prev + 1, first_cur);
    }

    #[test]
    fn a_writer_follows_a_rotation_done_by_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.log");
        let rotation = Rotation {
            max_bytes: 2000,
            max_files: 5,
        };
        let mut a = LogFile::open(&path, rotation, 0).unwrap();
        let mut b = LogFile::open(&path, rotation, 0).unwrap();
        for n in 0..40 {
            a.write_record(&line(n)).unwrap();
        }
        assert!(numbered(&path, 1).exists(), "a rotated");
        // b still holds the rotated file; at its next check it reopens the current name.
        b.last_check = Instant::now() - CHECK_EVERY;
        b.write_record(b"from b\n").unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("from b\n"), "{current}");
        // And b's count of the size is the shared file's, so it rotates in turn.
        for n in 0..40 {
            b.write_record(&line(n)).unwrap();
        }
        assert!(numbered(&path, 2).exists());
        assert!(files(dir.path()).len() <= 5);
    }

    #[test]
    fn zero_never_rotates_and_one_file_keeps_only_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("never.log");
        let never = Rotation {
            max_bytes: 0,
            max_files: 5,
        };
        let mut log = LogFile::open(&path, never, 0).unwrap();
        for n in 0..100 {
            log.write_record(&line(n)).unwrap();
        }
        assert_eq!(files(dir.path()), ["never.log"]);

        let path = dir.path().join("one.log");
        let one = Rotation {
            max_bytes: 500,
            max_files: 1,
        };
        let mut log = LogFile::open(&path, one, 0).unwrap();
        for n in 0..100 {
            log.write_record(&line(n)).unwrap();
        }
        assert_eq!(files(dir.path()), ["never.log", "one.log"]);
        assert!(std::fs::metadata(&path).unwrap().len() <= 500);
    }
}
