//! What `/health` tells of Redis: the mode, the partitions, and how many primaries answer.
//!
//! On a cluster the primaries are those `CLUSTER SLOTS` names (asked of any node that
//! answers); each is pinged through the route the queue's own calls take to its first slot,
//! so "reachable" means the pipeline reaches it, not merely that it runs. A primary that died
//! is still named until the cluster promotes one of its replicas, so the count of reachable
//! primaries falls below the total for the time the cluster cannot serve its slots (and until
//! this client has followed the promotion, which its own calls make it do).

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
        let Conn::Cluster(_) = self.conn.get() else {
            let mut conn = self.conn.get();
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
            let mut conn = self.conn.get();
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
        let answered = join_all(primaries.iter().map(|(_, slot)| async move {
            let mut conn = self.conn.get();
            let mut ping = ::redis::cmd("PING");
            ping.arg("health");
            bounded(conn.on_slot(*slot, ping)).await.is_ok()
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

/// The distinct primaries of a `CLUSTER SLOTS` reply (each slot range is `[start, end, [host,
/// port, id, …], replicas…]`), each as its address and the first slot it serves.
fn primaries_of(reply: &Value) -> Vec<((String, u16), u16)> {
    let mut out: Vec<((String, u16), u16)> = Vec::new();
    let Value::Array(ranges) = reply else {
        return out;
    };
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let Some(Value::Array(primary)) = parts.get(2) else {
            continue;
        };
        let start = parts
            .first()
            .and_then(integer)
            .and_then(|s| u16::try_from(s).ok());
        let host = primary.first().and_then(text);
        let port = primary
            .get(1)
            .and_then(integer)
            .and_then(|p| u16::try_from(p).ok());
        if let (Some(start), Some(host), Some(port)) = (start, host, port) {
            let address = (host, port);
            if !out.iter().any(|(a, _)| *a == address) {
                out.push((address, start));
            }
        }
    }
    out
}
