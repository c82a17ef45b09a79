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

    /// Runs `cmd` on the node at `host:port` (cluster only; a single server answers itself).
    pub(super) async fn on_address(
        &mut self,
        host: &str,
        port: u16,
        cmd: Cmd,
    ) -> RedisResult<Value> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_string(),
                    port,
                });
                c.route_command(cmd, routing).await
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
