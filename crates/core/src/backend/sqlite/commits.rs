//! Noticing another process's commits without polling: a file-change notification (inotify on
//! Linux, the platform's equivalent elsewhere, through the `notify` crate) on the folder of the
//! queue file. Every commit in WAL mode appends to `<file>-wal`, so a change to it fires the
//! backend's arrivals `Notify` and the claim wait loop looks at `PRAGMA data_version` at once.
//!
//! Only writes and creations count: an open, a close, a read or an ownership change of the
//! WAL (SQLite `fchown`s it when a process running as root opens the file) is no commit, and
//! reacting to one would wake every idle claimer for nothing. The watch is made by the first
//! claim that has to wait, so a process that never claims (the webhook) keeps no watch thread.
//!
//! The notification is an optimisation, never the guarantee: where it cannot be set up (no
//! inotify instances left, a file system without notifications) the wait loop keeps polling
//! at its short interval, and with it the poll only slows to a safety net, so a missed event
//! delays a wake-up, it never loses one.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use notify::event::ModifyKind;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

/// Keeps the notification alive; dropping it stops it.
pub(super) struct CommitWatch {
    _watcher: RecommendedWatcher,
}

impl CommitWatch {
    /// Fires `arrivals` whenever the WAL of the queue file at `path` is written. `None` (after
    /// a debug line saying why) when the platform cannot watch the folder.
    pub(super) fn start(path: &Path, arrivals: Arc<Notify>) -> Option<CommitWatch> {
        let name = path.file_name()?;
        let mut wal = OsString::from(name);
        wal.push("-wal");
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        };
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            let written = matches!(
                event.kind,
                EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) | EventKind::Create(_)
            ) && event
                .paths
                .iter()
                .any(|p| p.file_name() == Some(wal.as_os_str()));
            if written {
                arrivals.notify_waiters();
            }
        };
        let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
            w.watch(&folder, RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        match watcher {
            Ok(w) => Some(CommitWatch { _watcher: w }),
            Err(e) => {
                tracing::debug!(
                    folder = %folder.display(),
                    "no change notifications for the queue file ({e}); other processes' commits are noticed by polling"
                );
                None
            }
        }
    }
}
