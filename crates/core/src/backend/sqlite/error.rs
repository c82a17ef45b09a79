//! SQLite failures, turned into the trait's errors with the file's name and the failed step.

use std::path::Path;

use rusqlite::ErrorCode;

use crate::backend::BackendError;
use crate::event::EventId;

/// Why a store step failed, before it is given the file's name.
#[derive(Debug)]
pub(super) enum StoreError {
    Sql(rusqlite::Error),
    /// A stored value this build cannot read back.
    Data(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e)
    }
}

pub(super) type StoreResult<T> = Result<T, StoreError>;

/// Turns a SQLite failure into the trait's error, naming the file and the step. Busy and
/// locked are `Unavailable` (retry later, nothing changed); the rest say what is wrong.
pub(super) fn classify(path: &Path, what: &str, e: StoreError) -> BackendError {
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

/// Reads back an event id stored by this build; one it cannot parse is a [`StoreError::Data`].
pub(super) fn stored_id(s: &str) -> StoreResult<EventId> {
    EventId::parse(s).map_err(|why| StoreError::Data(format!("stored event id {s:?} {why}")))
}
