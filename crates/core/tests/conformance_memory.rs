//! The backend conformance suite against the in-process backend.
mod common;

use common::conformance::{backend_conformance, MemoryHarness};

backend_conformance!(MemoryHarness::new());
