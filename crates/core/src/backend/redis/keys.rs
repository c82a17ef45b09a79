//! The key layout, in one place.
//!
//! Every key is `{<prefix>}:<name>`: the braces make the prefix the Redis Cluster hash tag, so
//! all keys of one pipeline live in one slot and every script may touch any of them (scripts
//! build the per-id and per-map keys from the prefixes passed in ARGV).

/// The consumer group every consumer reads through (a group name, not a key).
pub const GROUP: &str = "consumers";
/// Stream of queued events: fields `id`, `payload`, `failures`.
pub const STREAM: &str = "stream";
/// Sorted set of retries waiting to be due: score = due ms, member = JSON
/// `[entry id, event id, payload, failures]`.
pub const RETRY: &str = "retry";
/// Stream of dead letters: fields `id`, `payload`, `failure_reason`, `error`, `attempts`,
/// `failed_at` (epoch ms).
pub const DLQ: &str = "dlq";
/// Set of metric map names, so metrics can be read without `SCAN`.
pub const MAP_REGISTRY: &str = "maps";
/// `seen:<event id>`: duplicate mark, expires after the idempotency TTL.
pub const SEEN: &str = "seen:";
/// `delivery:<webhook-id>`: a signed delivery's mark, expires after the mark's own TTL.
pub const DELIVERY: &str = "delivery:";
/// `m:<map name>`: one metric map as a sorted set (field -> number).
pub const METRIC: &str = "m:";

/// The full key names of one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// `{<prefix>}:`, the start of every key.
    pub tag: String,
    /// The queue stream ([`STREAM`]).
    pub stream: String,
    /// The retry sorted set ([`RETRY`]).
    pub retry: String,
    /// The dead-letter stream ([`DLQ`]).
    pub dlq: String,
    /// The set of metric map names ([`MAP_REGISTRY`]).
    pub registry: String,
}

impl Keys {
    /// The keys of the pipeline whose keys start with `{<prefix>}:`.
    pub fn new(prefix: &str) -> Self {
        let tag = format!("{{{prefix}}}:");
        Keys {
            stream: format!("{tag}{STREAM}"),
            retry: format!("{tag}{RETRY}"),
            dlq: format!("{tag}{DLQ}"),
            registry: format!("{tag}{MAP_REGISTRY}"),
            tag,
        }
    }

    /// The start of every duplicate mark key; the script appends the event id.
    pub fn seen_prefix(&self) -> String {
        format!("{}{SEEN}", self.tag)
    }

    /// The key of the mark of signed delivery `id`.
    pub fn delivery(&self, id: &str) -> String {
        format!("{}{DELIVERY}{id}", self.tag)
    }

    /// The start of every metric map key; the scripts append the map name.
    pub fn metric_prefix(&self) -> String {
        format!("{}{METRIC}", self.tag)
    }

    /// The key of metric map `map`.
    pub fn metric(&self, map: &str) -> String {
        format!("{}{METRIC}{map}", self.tag)
    }
}
