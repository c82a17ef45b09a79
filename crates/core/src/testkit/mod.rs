//! Test support for this and the other crates (feature `testkit`): a private `redis-server`
//! (plain, TLS-only, or a 3+3 cluster), a backend that fails on demand, waiting with a deadline ([`wait`]) and free ports. Every
//! test of the workspace takes these from here, so each is written once.

mod faulty_backend;
mod redis_cluster;
mod redis_server;
mod redis_tls;
pub mod wait;

use std::net::{Ipv4Addr, TcpListener};

pub use faulty_backend::{FaultMode, FaultyBackend};
pub use redis_cluster::{ClusterRole, RedisCluster};
pub use redis_server::RedisServer;
pub use redis_tls::RedisTls;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test starts.
///
/// The port is released before this returns, so another process can take it before the
/// server binds it; a caller that cannot tolerate that retries with another port (as
/// [`RedisServer::start`] does) or binds port 0 itself where it can.
pub fn free_port() -> std::io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()
        .map(|a| a.port())
}
