//! Metric maps: one sorted set per map, listed in a registry set; written by the settle and
//! record scripts, read in one consistent snapshot by the metrics script.

use ::redis::Value;

use super::error::bounded;
use super::reply::{integer, scored_pairs, text};
use super::RedisBackend;
use crate::analytics::bounds::{self, CAPPED_MAPS, KNOWN_TYPES, OTHER};
use crate::analytics::{
    maps, Bounds, Increment, MapShape, StoredMetrics, Sums, MINUTE_WINDOW, TOP_USERS,
};
use crate::backend::BackendResult;

/// How long a per-minute metric map outlives its last write.
pub(super) const MINUTE_MAP_TTL_SECS: i64 = (MINUTE_WINDOW + 5) * 60;

/// The distinct-user HyperLogLog lives at the users map's key plus this suffix
/// (`{p}:m:users:hll`); it is not a metric map, so it is not in the registry.
pub(super) const HLL_SUFFIX: &str = ":hll";

/// The analytics bounds as the scripts read them (see `lua/metric_lib.lua`).
pub(super) fn bounds_arg(b: &Bounds) -> String {
    serde_json::json!({
        "cap": b.max_dimension_values,
        "exact": b.exact_distinct_users,
        "k": b.top_users_tracked,
        "users": maps::USERS,
        "ranked": maps::USAGE_BY_USER,
        "hll_suffix": HLL_SUFFIX,
        "other": OTHER,
        "capped": CAPPED_MAPS,
        "minute_prefix": maps::PER_MINUTE_PREFIX,
        "typed": [maps::EVENTS_BY_TYPE],
        "known": KNOWN_TYPES,
    })
    .to_string()
}

impl RedisBackend {
    /// Adds increments outside any delivery, in one script call.
    pub(super) async fn add_increments(&self, increments: Vec<Increment>) -> BackendResult<()> {
        if increments.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.record.prepare_invoke();
        inv.key(&self.keys.registry)
            .arg(self.keys.metric_prefix())
            .arg(maps::PER_MINUTE_PREFIX)
            .arg(MINUTE_MAP_TTL_SECS)
            .arg(bounds_arg(&self.options.bounds));
        for (map, field, by) in bounds::in_order(&Sums::of(&increments)) {
            inv.arg(map).arg(field).arg(by);
        }
        let mut conn = self.conn.clone();
        bounded(inv.invoke_async::<i64>(&mut conn))
            .await
            .map_err(self.fail("record"))?;
        Ok(())
    }

    /// Every metric map, read atomically by one script call.
    pub(super) async fn read_metrics(&self) -> BackendResult<StoredMetrics> {
        let mut inv = self.scripts.metrics.prepare_invoke();
        inv.key(&self.keys.registry)
            .arg(self.keys.metric_prefix())
            .arg(maps::USERS)
            .arg(maps::USAGE_BY_USER)
            .arg(TOP_USERS)
            .arg(self.options.bounds.exact_distinct_users)
            .arg(HLL_SUFFIX);
        let mut conn = self.conn.clone();
        let reply: Vec<Value> = bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("metrics"))?;
        let mut snapshot = StoredMetrics::default();
        for pair in reply.chunks_exact(2) {
            let Some(name) = text(&pair[0]) else { continue };
            match MapShape::of(&name) {
                MapShape::Distinct => {
                    snapshot.distinct_users = integer(&pair[1]).unwrap_or(0) as u64
                }
                MapShape::Ranked => snapshot.top_users = scored_pairs(&pair[1]),
                MapShape::Summed => {
                    snapshot
                        .maps
                        .insert(name, scored_pairs(&pair[1]).into_iter().collect());
                }
            }
        }
        Ok(snapshot)
    }
}
