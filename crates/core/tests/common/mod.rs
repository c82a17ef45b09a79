//! Test support shared by the backend test files.
pub mod conformance;
pub mod redis_harness;
