//! Metric maps: one sorted set per map and partition, listed in each partition's registry set;
//! written by the settle and record scripts, read in one consistent snapshot per partition by
//! the metrics script and merged.

use ::redis::Value;

use futures_util::future::try_join_all;

use super::error::bounded;
use super::keys::Keys;
use super::merge::{merge, PartitionMetrics, MEMBERS_PER_PARTITION, TOP_USERS_PER_PARTITION};
use super::reply::{integer, scored_pairs, text};
use super::RedisBackend;
use crate::analytics::bounds::{self, CAPPED_MAPS, KNOWN_TYPES, OTHER};
use std::borrow::Cow;

use crate::analytics::hll;
use crate::analytics::rollup::{self, Buckets, Granularity};
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
        "rollup_prefix": rollup::PREFIX,
        "registers": rollup::ACTIVE_USERS,
        "rollup_expiry": Granularity::ALL
            .into_iter()
            .map(|g| (g.letter().to_string(), b.rollup_retention.expires_at(g, 0).into()))
            .collect::<serde_json::Map<_, _>>(),
    })
    .to_string()
}

/// Summed increments as the scripts take them, sorted by map and field (the order dimension
/// values are decided in). The users of a rollup bucket become the bucket's HyperLogLog
/// registers (register -> highest rank among them, [`crate::analytics::hll`]'s hash, as on
/// the other backends), which the script raises with `ZADD GT`: a batch sends each register
/// once, however many of its users fall in it.
pub(super) fn script_increments<'a>(sums: &Sums<'a>) -> Vec<(&'a str, Cow<'a, str>, f64)> {
    let ordered = bounds::in_order(sums);
    let mut out = Vec::with_capacity(ordered.len());
    let mut registers: Vec<(usize, u8)> = Vec::new();
    for run in ordered.chunk_by(|a, b| a.0 == b.0) {
        let map = run[0].0;
        if MapShape::of(map) != MapShape::BucketUsers {
            out.extend(
                run.iter()
                    .map(|&(map, field, by)| (map, Cow::Borrowed(field), by)),
            );
            continue;
        }
        registers.clear();
        registers.extend(run.iter().map(|(_, user, _)| hll::position(user)));
        registers.sort_unstable();
        // Sorted by register, then rank: the last of each register's run is its highest.
        for same in registers.chunk_by(|a, b| a.0 == b.0) {
            let (register, rank) = same[same.len() - 1];
            out.push((map, Cow::Owned(register.to_string()), f64::from(rank)));
        }
    }
    out
}

/// Appends summed increments to a settle or record script call as `read_metrics` in
/// `lua/metric_lib.lua` reads them: the number of maps, then per map (each run of increments of
/// one map, in their order) its name, n, its n fields and their n sums. Sending each map's
/// fields together lets the script hand them to one variadic command without sorting them out
/// first, and names each map once instead of once per field.
pub(super) fn push_increments(
    inv: &mut ::redis::ScriptInvocation<'_>,
    increments: &[(&str, Cow<'_, str>, f64)],
) {
    let same_map = |a: &(&str, Cow<'_, str>, f64), b: &(&str, Cow<'_, str>, f64)| a.0 == b.0;
    inv.arg(increments.chunk_by(same_map).count());
    for run in increments.chunk_by(same_map) {
        inv.arg(run[0].0).arg(run.len());
        for (_, field, _) in run {
            inv.arg(field.as_ref());
        }
        for (_, _, by) in run {
            inv.arg(*by);
        }
    }
}

/// Rollup bucket keys per script call: bounds one call's reply.
const BUCKETS_PER_CALL: usize = 1_000;

fn now_seconds() -> i64 {
    crate::backend::epoch_millis(std::time::SystemTime::now()) / 1_000
}

/// One bucket as the partitions hold it, merged: registers by maximum, other fields summed
/// and, for a dimension bucket holding more than `cap` named fields, capped like the totals.
fn merge_rollups<'a>(
    name: &str,
    parts: impl Iterator<Item = &'a Vec<(String, f64)>>,
    register: bool,
    cap: usize,
) -> std::collections::BTreeMap<String, f64> {
    let mut merged = std::collections::BTreeMap::new();
    for (field, value) in parts.flatten() {
        let stored: &mut f64 = merged.entry(field.clone()).or_insert(0.0);
        if register {
            *stored = stored.max(*value);
        } else {
            *stored += value;
        }
    }
    if !register && bounds::is_capped(name) {
        super::merge::cap_map(name, &mut merged, cap);
    }
    merged
}

impl RedisBackend {
    /// Adds increments outside any delivery, in one script call. They go to the first
    /// partition: reads add all partitions up, so where a sum lives does not matter.
    pub(super) async fn add_increments(&self, increments: Vec<Increment>) -> BackendResult<()> {
        if increments.is_empty() {
            return Ok(());
        }
        let keys = &self.partitions[0].keys;
        let mut inv = self.scripts.record.prepare_invoke();
        inv.key(&keys.registry)
            .arg(keys.metric_prefix())
            .arg(maps::PER_MINUTE_PREFIX)
            .arg(MINUTE_MAP_TTL_SECS)
            .arg(bounds_arg(&self.options.bounds));
        push_increments(&mut inv, &script_increments(&Sums::of(&increments)));
        let mut conn = self.conn.get();
        bounded(inv.invoke_async::<i64>(&mut conn))
            .await
            .map_err(self.fail("record"))?;
        Ok(())
    }

    /// Every metric map: one consistent snapshot per partition (one script call each, run
    /// concurrently), merged (see [`super::merge`]). With one partition, its snapshot as is.
    pub(super) async fn read_metrics(&self) -> BackendResult<StoredMetrics> {
        let several = self.partitions.len() > 1;
        let parts = try_join_all(
            self.partitions
                .iter()
                .map(|p| self.read_partition_metrics(&p.keys, several)),
        )
        .await?;
        let (from, to) = rollup::minute_window(now_seconds());
        let minutes = self
            .read_rollups(maps::EVENTS_BY_TYPE, Granularity::Minute, from, to)
            .await?;
        if !several {
            let part = parts.into_iter().next().unwrap_or_default();
            let mut snapshot = StoredMetrics {
                maps: part.maps,
                distinct_users: part.distinct_count,
                top_users: part.top_users,
            };
            rollup::add_minutes(&mut snapshot, minutes);
            return Ok(snapshot);
        }
        let (mut merged, need_estimate) = merge(parts, self.options.bounds.max_dimension_values);
        if need_estimate {
            merged.distinct_users = merged.distinct_users.max(self.estimate_distinct().await?);
        }
        rollup::add_minutes(&mut merged, minutes);
        Ok(merged)
    }

    /// The rollup buckets of `aggregate` starting in `from..to`: each partition's buckets read
    /// by name (they are not in the registry) in one script call per [`BUCKETS_PER_CALL`],
    /// partitions concurrently, then merged (see [`merge_rollups`]).
    pub(super) async fn read_rollups(
        &self,
        aggregate: &str,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> BackendResult<Buckets> {
        let span = granularity.seconds();
        let retention = &self.options.bounds.rollup_retention;
        let now = now_seconds();
        // Buckets retention has already forgotten are not asked for: a wide range of minutes
        // would otherwise be hundreds of thousands of names per partition.
        let mut first = granularity.bucket_start(from.max(retention.oldest_kept(granularity, now)));
        if first < from {
            first += span;
        }
        let starts: Vec<i64> = std::iter::successors(Some(first), |s| Some(s + span))
            .take_while(|s| *s < to)
            .collect();
        let names: Vec<String> = starts
            .iter()
            .map(|s| rollup::map_name(aggregate, granularity, *s))
            .collect();
        let register = aggregate == rollup::ACTIVE_USERS;
        let parts = try_join_all(self.partitions.iter().map(|p| {
            let names = &names;
            async move {
                let mut buckets: Vec<Vec<(String, f64)>> = Vec::with_capacity(names.len());
                for chunk in names.chunks(BUCKETS_PER_CALL) {
                    let mut inv = self.scripts.rollups.prepare_invoke();
                    for name in chunk {
                        inv.key(p.keys.metric(name));
                    }
                    let mut conn = self.conn.get();
                    let reply: Vec<Value> = bounded(inv.invoke_async(&mut conn))
                        .await
                        .map_err(self.fail("rollups"))?;
                    buckets.extend(reply.iter().map(scored_pairs));
                }
                Ok::<_, crate::backend::BackendError>(buckets)
            }
        }))
        .await?;
        let mut out = Buckets::new();
        for (i, (start, name)) in starts.iter().zip(&names).enumerate() {
            let fields = parts.iter().filter_map(|part| part.get(i));
            let merged = merge_rollups(
                name,
                fields,
                register,
                self.options.bounds.max_dimension_values,
            );
            if !merged.is_empty() {
                out.insert(*start, merged);
            }
        }
        Ok(out)
    }

    /// One partition's metrics script run; `several`: read as one of several partitions
    /// (the exact user set when small, more of the top users).
    async fn read_partition_metrics(
        &self,
        keys: &Keys,
        several: bool,
    ) -> BackendResult<PartitionMetrics> {
        let mut inv = self.scripts.metrics.prepare_invoke();
        inv.key(&keys.registry)
            .arg(keys.metric_prefix())
            .arg(maps::USERS)
            .arg(maps::USAGE_BY_USER)
            .arg(if several {
                TOP_USERS_PER_PARTITION
            } else {
                TOP_USERS
            })
            .arg(self.options.bounds.exact_distinct_users)
            .arg(HLL_SUFFIX)
            .arg(if several { MEMBERS_PER_PARTITION } else { 0 });
        let mut conn = self.conn.get();
        let reply: Vec<Value> = bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("metrics"))?;
        let mut part = PartitionMetrics::default();
        for pair in reply.chunks_exact(2) {
            let Some(name) = text(&pair[0]) else { continue };
            match MapShape::of(&name) {
                MapShape::Distinct => {
                    let Value::Array(items) = &pair[1] else {
                        continue;
                    };
                    part.distinct_count = items.first().and_then(integer).unwrap_or(0) as u64;
                    let members: Vec<String> = items.iter().skip(1).filter_map(text).collect();
                    if members.len() as u64 == part.distinct_count {
                        part.distinct_members = Some(members);
                    }
                }
                MapShape::Ranked => part.top_users = scored_pairs(&pair[1]),
                MapShape::Summed | MapShape::BucketUsers => {
                    part.maps
                        .insert(name, scored_pairs(&pair[1]).into_iter().collect());
                }
            }
        }
        Ok(part)
    }

    /// The estimated distinct users of all partitions together: their HyperLogLogs read raw
    /// and counted as one by a script in the first partition's slot.
    async fn estimate_distinct(&self) -> BackendResult<u64> {
        let raws = try_join_all(self.partitions.iter().map(|p| async move {
            let mut conn = self.conn.get();
            bounded(
                ::redis::cmd("GET")
                    .arg(format!("{}{HLL_SUFFIX}", p.keys.metric(maps::USERS)))
                    .query_async::<Option<Vec<u8>>>(&mut conn),
            )
            .await
            .map_err(self.fail("metrics (distinct users)"))
        }))
        .await?;
        let raws: Vec<Vec<u8>> = raws.into_iter().flatten().collect();
        if raws.is_empty() {
            return Ok(0);
        }
        let tag = &self.partitions[0].keys.tag;
        let mut inv = self.scripts.hll_count.prepare_invoke();
        inv.key(format!("{tag}scratch:hll"))
            .key(format!("{tag}scratch:hll:part"));
        for raw in &raws {
            inv.arg(raw.as_slice());
        }
        let mut conn = self.conn.get();
        let n: i64 = bounded(inv.invoke_async(&mut conn))
            .await
            .map_err(self.fail("metrics (distinct users)"))?;
        Ok(n.max(0) as u64)
    }
}
