//! What `/health` tells of Redis: the mode, the partitions, and how many primaries answer.
//!
//! On a cluster the primaries are those `CLUSTER SLOTS` names (asked of any node that
//! answers); each is pinged at its own address. A primary that died is still named until the
//! cluster promotes one of its replicas, so the count of reachable primaries falls below the
//! total exactly for the time the cluster cannot serve its slots.

use futures_util::future::join_all;
use redis::Value;

use super::error::bounded;
use super::reply::{integer, text};
use super::{Conn, RedisBackend};
use crate::backend::{BackendResult, Topology};

/// Nodes asked for the slot map before giving up (a random one each time).
const SLOT_MAP_ATTEMPTS: usize = 3;

impl RedisBackend {
    pub(super) async fn check_topology(&self) -> BackendResult<Topology> {
        let partitions = self.partitions.len() as u16;
        let mode = self.mode().as_str();
        let Conn::Cluster(_) = &self.conn else {
            let mut conn = self.conn.clone();
            let up = bounded(::redis::cmd("PING").query_async::<()>(&mut conn))
                .await
                .is_ok();
            return Ok(Topology {
                mode,
                partitions,
                primaries: 1,
                primaries_reachable: usize::from(up),
            });
        };
        let mut slots = None;
        let mut last_error = None;
        for _ in 0..SLOT_MAP_ATTEMPTS {
            let mut conn = self.conn.clone();
            match bounded(
                ::redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut conn),
            )
            .await
            {
                Ok(reply) => {
                    slots = Some(reply);
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        let Some(slots) = slots else {
            return Err(match last_error {
                Some(e) => self.fail("cluster slots")(e),
                None => {
                    crate::backend::BackendError::Unavailable("cluster slots: no answer".into())
                }
            });
        };
        let primaries = primaries_of(&slots);
        let answered = join_all(primaries.iter().map(|(host, port)| async move {
            let mut conn = self.conn.clone();
            let mut ping = ::redis::cmd("PING");
            ping.arg("health");
            bounded(conn.on_address(host, *port, ping)).await.is_ok()
        }))
        .await;
        Ok(Topology {
            mode,
            partitions,
            primaries: primaries.len(),
            primaries_reachable: answered.into_iter().filter(|up| *up).count(),
        })
    }
}

/// The distinct primaries (`host`, `port`) of a `CLUSTER SLOTS` reply: each slot range is
/// `[start, end, [host, port, id, …], replicas…]`.
fn primaries_of(reply: &Value) -> Vec<(String, u16)> {
    let mut out: Vec<(String, u16)> = Vec::new();
    let Value::Array(ranges) = reply else {
        return out;
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let Some(Value::Array(primary)) = parts.get(2) else {
            continue;
        };
        let host = primary.first().and_then(text);
        let port = primary
            .get(1)
            .and_then(integer)
            .and_then(|p| u16::try_from(p).ok());
        if let (Some(host), Some(port)) = (host, port) {
            if !out.iter().any(|(h, p)| *h == host && *p == port) {
                out.push((host, port));
            }
        }
    }
    out
}
