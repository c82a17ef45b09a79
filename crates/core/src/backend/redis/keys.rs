//! The key layout, in one place.
//!
//! The queue is split into partitions; partition `N` of `P` keeps all its keys under one hash
//! tag, `{<prefix>:p<N>}:` (with one partition, `{<prefix>}:`, the layout of a single stream),
//! so every script touches one Redis Cluster slot while the partitions spread over the
//! cluster's primaries. An event's partition is a stable hash of its id ([`partition_of`]),
//! so a duplicate always meets its first copy's mark. The scripts build the per-id and
//! per-map keys from the prefixes passed in ARGV.

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
/// Sharded Pub/Sub channel an enqueue publishes to when it finds its partition's stream
/// empty: wakes consumers waiting on a cluster, where one blocking read cannot span slots.
pub const READY: &str = "ready";
/// `{<prefix>}:partitions`: the partition count the pipeline's data is laid out for.
pub const PARTITIONS: &str = "partitions";

/// The partition (`0..partitions`) of an event id: the analytics' stable hash
/// ([`crate::analytics::hll::hash`], fixed by definition), so every process and every release
/// agrees.
pub fn partition_of(event_id: &str, partitions: u16) -> u16 {
    if partitions <= 1 {
        return 0;
    }
    (crate::analytics::hll::hash(event_id) % u64::from(partitions)) as u16
}

/// The key recording the partition count of the pipeline with `prefix`.
pub fn partitions_key(prefix: &str) -> String {
    format!("{{{prefix}}}:{PARTITIONS}")
}

/// The full key names of one partition.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The partition's number.
    pub partition: u16,
    /// `{<prefix>:p<N>}:` (one partition: `{<prefix>}:`), the start of every key.
    pub tag: String,
    /// The queue stream ([`STREAM`]).
    pub stream: String,
    /// The retry sorted set ([`RETRY`]).
    pub retry: String,
    /// The dead-letter stream ([`DLQ`]).
    pub dlq: String,
    /// The set of metric map names ([`MAP_REGISTRY`]).
    pub registry: String,
    /// The wake-up channel ([`READY`]).
    pub ready: String,
}

impl Keys {
    /// The keys of the single partition of a pipeline with one partition: `{<prefix>}:…`.
    pub fn new(prefix: &str) -> Self {
        Keys::with_tag(0, format!("{{{prefix}}}:"))
    }

    /// The keys of partition `partition` of `partitions`.
    pub fn partition(prefix: &str, partition: u16, partitions: u16) -> Self {
        if partitions <= 1 {
            return Keys::new(prefix);
        }
        Keys::with_tag(partition, format!("{{{prefix}:p{partition}}}:"))
    }

    fn with_tag(partition: u16, tag: String) -> Self {
        Keys {
            partition,
            stream: format!("{tag}{STREAM}"),
            retry: format!("{tag}{RETRY}"),
            dlq: format!("{tag}{DLQ}"),
            registry: format!("{tag}{MAP_REGISTRY}"),
            ready: format!("{tag}{READY}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_have_their_own_hash_tag() {
        assert_eq!(Keys::partition("day15", 3, 16).stream, "{day15:p3}:stream");
        assert_eq!(Keys::partition("day15", 0, 1).stream, "{day15}:stream");
        assert_eq!(partitions_key("day15"), "{day15}:partitions");
    }

    #[test]
    fn an_event_id_always_lands_in_the_same_partition() {
        // Fixed values: a change here would strand every queued event of a running pipeline.
        assert_eq!(partition_of("evt_1", 16), partition_of("evt_1", 16));
        assert_eq!(partition_of("anything", 1), 0);
        let spread: std::collections::HashSet<u16> = (0..1000)
            .map(|i| partition_of(&format!("evt_{i}"), 16))
            .collect();
        assert_eq!(spread.len(), 16);
    }
}
