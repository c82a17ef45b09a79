//! The Lua scripts of `lua/`, one per move between structures, compiled into the binary.

use ::redis::Script;

/// The Lua scripts, loaded once; `redis::Script` sends `EVALSHA` and reloads the script itself
/// after a Redis restart flushed the script cache.
pub(super) struct Scripts {
    pub(super) enqueue: Script,
    pub(super) claim: Script,
    pub(super) settle: Script,
    pub(super) record: Script,
    pub(super) metrics: Script,
    pub(super) dlq_replay: Script,
    pub(super) dlq_purge: Script,
    pub(super) hll_count: Script,
    pub(super) rollups: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            enqueue: Script::new(include_str!("lua/enqueue.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            settle: Script::new(concat!(
                include_str!("lua/metric_lib.lua"),
                include_str!("lua/settle.lua")
            )),
            record: Script::new(concat!(
                include_str!("lua/metric_lib.lua"),
                include_str!("lua/record.lua")
            )),
            metrics: Script::new(include_str!("lua/metrics.lua")),
            dlq_replay: Script::new(include_str!("lua/dlq_replay.lua")),
            dlq_purge: Script::new(include_str!("lua/dlq_purge.lua")),
            hll_count: Script::new(include_str!("lua/hll_count.lua")),
            rollups: Script::new(include_str!("lua/rollups.lua")),
        }
    }
}
