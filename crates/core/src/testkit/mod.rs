//! Test support for this and the other crates (feature `testkit`): a private `redis-server`
//! and a backend that fails on demand.

mod faulty_backend;
mod redis_server;

pub use faulty_backend::{FaultMode, FaultyBackend};
pub use redis_server::*;
