//! How a Redis call fails: every call is bounded by [`CALL_DEADLINE`], and each failure maps to
//! [`BackendError::Unavailable`] (transient: connection lost, timeout, Redis loading or
//! failing over; the webhook answers 503) or [`BackendError::Failed`] (anything else).

use std::time::Duration;

use ::redis::{ErrorKind, RedisError, ServerErrorKind};

use super::RedisBackend;
use crate::backend::BackendError;

/// Longest time any backend call may take before it fails as [`BackendError::Unavailable`].
pub const CALL_DEADLINE: Duration = Duration::from_secs(1);

/// A failed Redis call: the Redis error, or no answer within [`CALL_DEADLINE`].
pub(super) enum CallError {
    Redis(RedisError),
    Deadline,
}

impl From<RedisError> for CallError {
    fn from(e: RedisError) -> Self {
        CallError::Redis(e)
    }
}

impl CallError {
    /// The consumer group is missing: Redis restarted without persistence or was flushed.
    pub(super) fn is_nogroup(&self) -> bool {
        match self {
            CallError::Redis(e) => e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP"),
            CallError::Deadline => false,
        }
    }

    /// Whether the call never got an answer (no connection, a dropped one, no reply in time):
    /// what a connection stuck on a dead node looks like, unlike an error Redis answered.
    pub(super) fn is_unanswered(&self) -> bool {
        match self {
            CallError::Deadline => true,
            CallError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.kind() == ::redis::ErrorKind::ClusterConnectionNotFound
            }
        }
    }

    /// The error callers see: `what` failed at `url` (already redacted); transient failures
    /// are [`BackendError::Unavailable`], the rest [`BackendError::Failed`].
    pub(super) fn into_backend(self, what: &str, url: &str) -> BackendError {
        match self {
            CallError::Deadline => BackendError::Unavailable(format!(
                "{what}: no answer from redis at {url} within {CALL_DEADLINE:?}"
            )),
            CallError::Redis(e) => {
                let transient = e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::MasterDown
                        )
                    );
                if transient {
                    BackendError::Unavailable(format!("{what}: redis at {url}: {e}"))
                } else {
                    BackendError::Failed(format!("{what}: redis at {url}: {e}"))
                }
            }
        }
    }
}

/// Bounds a Redis call by [`CALL_DEADLINE`].
pub(super) async fn bounded<T>(
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(CALL_DEADLINE, fut).await {
        Ok(r) => r.map_err(CallError::Redis),
        Err(_) => Err(CallError::Deadline),
    }
}

impl RedisBackend {
    /// A `map_err` adapter: a failed call of `what` as the [`BackendError`] naming this
    /// backend's URL (without its password).
    pub(super) fn fail(&self, what: &str) -> impl FnOnce(CallError) -> BackendError + '_ {
        let what = what.to_string();
        move |e| {
            if e.is_unanswered() {
                self.conn.note_failure();
            }
            e.into_backend(&what, &self.redacted_url)
        }
    }
}
