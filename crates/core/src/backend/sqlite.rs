//! Embedded SQLite backend (placeholder until the implementation lands).

use std::path::Path;

use super::{BackendError, BackendOptions, BackendResult};
use crate::config::SqliteSynchronous;

/// The embedded, durable default backend.
pub struct SqliteBackend;

impl SqliteBackend {
    pub async fn open(
        path: &Path,
        _synchronous: SqliteSynchronous,
        _options: BackendOptions,
    ) -> BackendResult<Self> {
        Err(BackendError::Failed(format!(
            "sqlite backend not built yet ({})",
            path.display()
        )))
    }
}
