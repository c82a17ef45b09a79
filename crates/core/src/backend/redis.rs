//! Redis Streams backend (placeholder until the implementation lands).

use super::{BackendError, BackendOptions, BackendResult};

/// The scale-out backend.
pub struct RedisBackend;

impl RedisBackend {
    pub async fn connect(
        url: &str,
        _prefix: &str,
        _options: BackendOptions,
    ) -> BackendResult<Self> {
        Err(BackendError::Failed(format!(
            "redis backend not built yet ({url})"
        )))
    }
}
