//! One connection type for both deployments: a single server through the auto-reconnecting
//! [`ConnectionManager`], or a Redis Cluster through the cluster client, which follows
//! `MOVED`/`ASK` and topology changes by itself. Every script names its partition's keys, so
//! the cluster client routes it to the primary owning that partition's slot.

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use ::redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::error::{CallError, CALL_DEADLINE};
use super::tls;
use crate::backend::{BackendError, BackendResult};
use crate::config::RedisTlsFiles;

/// Connect timeout of each connection attempt.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The shared, multiplexed connection of every non-blocking call. Cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Runs `cmd` (a command without keys, such as `WAIT`) on the server holding `key`: on a
    /// cluster, the primary of `key`'s slot, over the same node connection the writes to that
    /// slot went through, so `WAIT` counts them.
    pub(super) async fn on_node_of(&mut self, key: &str, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key, SlotAddr::Master);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
        }
    }

    /// Runs `cmd` on the primary that serves `slot`, as this client's slot map has it (cluster
    /// only; a single server answers itself): the node the queue's own calls for that slot
    /// reach.
    pub(super) async fn on_slot(&mut self, slot: u16, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::new(slot, SlotAddr::Master);
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                )
                .await
            }
        }
    }
}

/// The shared connection to one server at `url`, and the client that opens the dedicated
/// connections of blocking reads.
pub(super) async fn single(
    url: &str,
    redacted_url: &str,
    files: &RedisTlsFiles,
) -> BackendResult<(Conn, ::redis::Client)> {
    let client = tls::client(url, redacted_url, files)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CALL_DEADLINE))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    let conn = tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await;
    match conn {
        Ok(Ok(conn)) => Ok((Conn::Single(conn), client)),
        Ok(Err(e)) => Err(connect_failed(url, redacted_url, e)),
        Err(_) => Err(CallError::Deadline.into_backend("connect", redacted_url)),
    }
}

/// The seed node URLs of a cluster-mode `DAY15_REDIS_URL`.
pub(super) fn seeds(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// Receives the pushed messages (subscription messages) of a RESP3 connection.
pub(super) type PushSink = Box<dyn Fn(::redis::PushInfo) -> Result<(), ()> + Send + Sync>;

/// A cluster client for the seed nodes `urls` (any reachable one is enough): RESP2 for the
/// shared connection, or RESP3 with `push` receiving the messages of a subscribing one.
pub(super) fn cluster_client(
    urls: &str,
    redacted_url: &str,
    files: &RedisTlsFiles,
    push: Option<PushSink>,
) -> BackendResult<::redis::cluster::ClusterClient> {
    let seeds = seeds(urls);
    let mut builder = ClusterClientBuilder::new(seeds.clone())
        .connection_timeout(CONNECT_TIMEOUT)
        .response_timeout(CALL_DEADLINE)
        .retries(2);
    if seeds.iter().any(|u| u.starts_with("rediss://")) {
        if let Some(certs) = tls::certificates(files)? {
            builder = builder.certs(certs);
        }
    }
    if let Some(push) = push {
        builder = builder
            .use_protocol(::redis::ProtocolVersion::RESP3)
            .push_sender(push);
    }
    builder
        .build()
        .map_err(|e| BackendError::Failed(format!("invalid redis cluster URL {redacted_url}: {e}")))
}

/// The shared connection to the cluster of `urls`.
pub(super) async fn cluster(
    urls: &str,
    redacted_url: &str,
    files: &RedisTlsFiles,
) -> BackendResult<Conn> {
    let client = cluster_client(urls, redacted_url, files, None)?;
    match tokio::time::timeout(CONNECT_TIMEOUT * 3, client.get_async_connection()).await {
        Ok(Ok(conn)) => Ok(Conn::Cluster(conn)),
        Ok(Err(e)) => Err(connect_failed(urls, redacted_url, e)),
        Err(_) => Err(CallError::Deadline.into_backend("connect", redacted_url)),
    }
}

/// A failed connect, with what to check when TLS is the likely cause.
fn connect_failed(url: &str, redacted_url: &str, e: ::redis::RedisError) -> BackendError {
    let hint = tls::hint(url, &e);
    let error = CallError::Redis(e).into_backend("connect", redacted_url);
    tls::with_hint(error, hint)
}

/// The connection every call clones, rebuilt when a cluster's calls keep failing.
///
/// The cluster client rebuilds its slot map on redirects and reconnects to the address it
/// knows, but after a primary dies it can stay bound to that address: every call for its
/// slots fails while the cluster has long promoted a replica. So when calls have been failing
/// without a break of [`STREAK_GAP`] for [`REBUILD_AFTER`], a fresh connection is made from
/// the seed list (in the background, never more than one at a time) and replaces the old one
/// for every later call. A single server's [`ConnectionManager`] reconnects by itself.
pub(super) struct SharedConn {
    current: std::sync::RwLock<Conn>,
    /// Seeds and certificates to rebuild a cluster connection from; `None` on one server.
    rebuild: Option<(String, String, RedisTlsFiles)>,
    streak: std::sync::Mutex<FailureStreak>,
    rebuilding: std::sync::atomic::AtomicBool,
}

/// Consecutive failures, as far as no gap of [`STREAK_GAP`] separates them.
#[derive(Default)]
struct FailureStreak {
    since: Option<std::time::Instant>,
    last: Option<std::time::Instant>,
}

/// Failures further apart than this are separate incidents.
const STREAK_GAP: Duration = Duration::from_secs(1);
/// How long calls may keep failing before the cluster connection is made anew.
const REBUILD_AFTER: Duration = Duration::from_secs(3);

impl SharedConn {
    /// `conn` as made for `urls`; in cluster mode it can be rebuilt from them.
    pub(super) fn new(conn: Conn, urls: &str, redacted_url: &str, files: &RedisTlsFiles) -> Self {
        let rebuild = matches!(conn, Conn::Cluster(_))
            .then(|| (urls.to_string(), redacted_url.to_string(), files.clone()));
        SharedConn {
            current: std::sync::RwLock::new(conn),
            rebuild,
            streak: std::sync::Mutex::new(FailureStreak::default()),
            rebuilding: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The connection for one call.
    pub(super) fn get(&self) -> Conn {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts a failed call; after [`REBUILD_AFTER`] of them without a break, starts a rebuild.
    pub(super) fn note_failure(self: &std::sync::Arc<Self>) {
        let Some((urls, redacted_url, files)) = &self.rebuild else {
            return;
        };
        let now = std::time::Instant::now();
        let due = {
            let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
            if streak.last.is_none_or(|last| now - last > STREAK_GAP) {
                streak.since = Some(now);
            }
            streak.last = Some(now);
            streak
                .since
                .is_some_and(|since| now - since >= REBUILD_AFTER)
        };
        // Only from within a runtime (a call being abandoned always is).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !due
            || self
                .rebuilding
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let (urls, redacted_url, files) = (urls.clone(), redacted_url.clone(), files.clone());
        let shared = self.clone();
        runtime.spawn(async move {
            match cluster(&urls, &redacted_url, &files).await {
                Ok(fresh) => {
                    *shared.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                    tracing::warn!(
                        url = %redacted_url,
                        "Redis Cluster calls kept failing for {}s: connected anew from the seed nodes",
                        REBUILD_AFTER.as_secs()
                    );
                }
                Err(e) => tracing::debug!("Redis Cluster connection not rebuilt yet: {e}"),
            }
            *shared.streak.lock().unwrap_or_else(|e| e.into_inner()) = FailureStreak::default();
            shared
                .rebuilding
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }
}

/// Watches one call made for a caller with a deadline of its own (the webhook abandons a call
/// after its backend timeout, before [`CALL_DEADLINE`] could report it): a call abandoned
/// unanswered counts as a failure of the connection.
pub(super) struct CallWatch<'a> {
    shared: &'a std::sync::Arc<SharedConn>,
    finished: bool,
}

impl SharedConn {
    /// Starts watching a call; see [`CallWatch`].
    pub(super) fn watch(self: &std::sync::Arc<Self>) -> CallWatch<'_> {
        CallWatch {
            shared: self,
            finished: false,
        }
    }
}

impl CallWatch<'_> {
    /// The call's outcome, passed through: it was not abandoned (an unanswered call inside it
    /// was counted where it failed; an answer such as too few replicas is no connection fault).
    pub(super) fn finish<T>(mut self, result: BackendResult<T>) -> BackendResult<T> {
        self.finished = true;
        result
    }
}

impl Drop for CallWatch<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.note_failure();
        }
    }
}
