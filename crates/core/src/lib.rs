//! The shared heart of the analytics pipeline: configuration, the event model, the queue
//! backends (memory, sqlite, redis) behind one trait, the analytics model and logging.
//!
//! Nothing here speaks HTTP; the binaries wire these parts to the network.

pub mod analytics;
pub mod backend;
pub mod config;
pub mod event;
pub mod latency;
pub mod logging;
pub mod process;
pub mod runtime;
pub mod stats;
#[cfg(feature = "testkit")]
pub mod testkit;
