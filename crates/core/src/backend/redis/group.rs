//! The consumer group every consumer reads a partition through: created on connect, and
//! re-created when Redis lost it (a restart without persistence, a flush, a failover to a
//! replica that had not received it) so the pipeline carries on.

use super::error::{bounded, CallError};
use super::keys::{self, Keys};
use super::RedisBackend;

impl RedisBackend {
    /// Creates the partition's consumer group (and its stream) unless it exists.
    ///
    /// The group starts at `0`, not `$`: entries added before the group exists (a webhook
    /// enqueuing after Redis lost its data, before any claim re-created the group) must still
    /// be delivered. Settled entries are deleted, so reading from `0` never replays work that
    /// was done.
    pub(super) async fn ensure_group(&self, keys: &Keys) -> Result<(), CallError> {
        let mut conn = self.conn.get();
        let created = bounded(
            ::redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&keys.stream)
                .arg(keys::GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut conn),
        )
        .await;
        match created {
            Err(CallError::Redis(e)) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Runs `call`, and once more after re-creating the partition's consumer group if Redis
    /// lost it.
    pub(super) async fn with_group<T, Fut>(
        &self,
        keys: &Keys,
        call: impl Fn() -> Fut,
    ) -> Result<T, CallError>
    where
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        match call().await {
            Err(e) if e.is_nogroup() => {
                tracing::warn!(
                    url = %self.redacted_url,
                    partition = keys.partition,
                    "consumer group missing; re-creating it"
                );
                self.ensure_group(keys).await?;
                call().await
            }
            other => other,
        }
    }
}
