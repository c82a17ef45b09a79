//! The aggregates in the `metrics` table: summed increments written by the writer, and the
//! snapshot the reader thread reads back for `Backend::metrics`.

use foldhash::{HashMap, HashMapExt};

use rusqlite::{params, Connection, OptionalExtension};

use super::bucket_users;
use super::error::StoreResult;
use super::schema::DISTINCT_USERS_FULL;
use super::writer::Ctx;
use crate::analytics::bounds::{self, DimensionCap};
use crate::analytics::hll::{self, Hll};
use crate::analytics::rollup::{self, Buckets, Granularity, Retention};
use crate::analytics::{maps, Bounds, MapShape, StoredMetrics, Sums, TOP_USERS};

/// Adds to one field of one map, creating it at the added value.
const ADD_METRIC: &str = "INSERT INTO metrics (map, field, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (map, field) DO UPDATE SET value = value + excluded.value";

/// Raises one HyperLogLog register (or the "exact set is full" mark) to at least the value.
const RAISE_REGISTER: &str = "INSERT INTO distinct_users_hll (register, rank) VALUES (?1, ?2)
     ON CONFLICT (register) DO UPDATE SET rank = max(rank, excluded.rank)";

/// Writes summed increments under the analytics bounds, deciding from the rows of this
/// transaction: each plain metric row is touched once per batch. Rollup buckets past their
/// retention are not written (a late event still counts in the totals).
pub(super) fn add_metrics(c: &Connection, ctx: &Ctx<'_>, sums: &Sums<'_>) -> StoreResult<()> {
    let bounds = &ctx.bounds;
    let now = ctx.now / 1_000;
    let mut add = c.prepare_cached(ADD_METRIC)?;
    // Per dimension map: `None` when it has room for every field of the batch (no field can
    // become `other`, so none needs looking up), else the cap decision.
    let mut caps: HashMap<&str, Option<DimensionCap>> = HashMap::new();
    let mut users: Vec<&str> = Vec::new();
    let mut usage: Vec<(&str, f64)> = Vec::new();
    let mut bucket_users: HashMap<&str, Vec<&str>> = HashMap::new();
    let ordered = bounds::in_order(sums);
    let mut batch_fields: HashMap<&str, usize> = HashMap::new();
    for (map, _, _) in &ordered {
        *batch_fields.entry(map).or_default() += 1;
    }
    for (map, field, by) in ordered {
        if map.starts_with(rollup::PREFIX) && !bounds.rollup_retention.keeps(map, now) {
            continue;
        }
        match MapShape::of(map) {
            MapShape::BucketUsers => bucket_users.entry(map).or_default().push(field),
            MapShape::Distinct => users.push(field),
            MapShape::Ranked => usage.push((field, by)),
            MapShape::Summed if bounds::is_capped(map) => {
                let cap = match caps.get_mut(map) {
                    Some(cap) => cap,
                    None => {
                        let fields = batch_fields.get(map).copied().unwrap_or(0);
                        let cap = if map_size(c, map)? + fields <= bounds.max_dimension_values {
                            None
                        } else {
                            Some(DimensionCap::new(named_fields(c, map)?, bounds))
                        };
                        caps.entry(map).or_insert(cap)
                    }
                };
                let target = match cap {
                    None => field,
                    Some(cap) => cap.target(map, field, has_field(c, map, field)?),
                };
                add.execute(params![map, target, by])?;
            }
            MapShape::Summed => {
                add.execute(params![map, field, by])?;
            }
        }
    }
    add_users(c, &users, bounds)?;
    add_usage(c, &usage, bounds)?;
    bucket_users::add(c, &bucket_users)?;
    Ok(())
}

/// Fields of `map` that take a slot under its cap (an index count, not a read of each field).
fn named_fields(c: &Connection, map: &str) -> StoreResult<usize> {
    let mut named = map_size(c, map)?;
    for field in bounds::always_named_fields(map) {
        named -= usize::from(has_field(c, map, field)?);
    }
    Ok(named)
}

fn has_field(c: &Connection, map: &str, field: &str) -> StoreResult<bool> {
    Ok(
        c.prepare_cached("SELECT 1 FROM metrics WHERE map = ?1 AND field = ?2")?
            .query_row(params![map, field], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

fn map_size(c: &Connection, map: &str) -> StoreResult<usize> {
    Ok(
        c.prepare_cached("SELECT count(*) FROM metrics WHERE map = ?1")?
            .query_row([map], |r| r.get::<_, i64>(0))? as usize,
    )
}

/// Feeds every user to the HyperLogLog registers and keeps the first
/// [`Bounds::exact_distinct_users`] in the exact set (rows of [`maps::USERS`]); a user left
/// out raises the [`DISTINCT_USERS_FULL`] mark, after which the estimate is the count.
fn add_users(c: &Connection, users: &[&str], bounds: &Bounds) -> StoreResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let mut ranks: HashMap<usize, u8> = HashMap::new();
    for user in users {
        let (register, rank) = hll::position(user);
        let r = ranks.entry(register).or_insert(0);
        *r = (*r).max(rank);
    }
    let mut raise = c.prepare_cached(RAISE_REGISTER)?;
    for (register, rank) in ranks {
        raise.execute(params![register as i64, rank])?;
    }
    let mut size = map_size(c, maps::USERS)?;
    let mut insert = c.prepare_cached(
        "INSERT INTO metrics (map, field, value) VALUES (?1, ?2, 1) ON CONFLICT DO NOTHING",
    )?;
    let mut left_out = false;
    for user in users {
        if size < bounds.exact_distinct_users {
            size += insert.execute(params![maps::USERS, user])?;
        } else if !has_field(c, maps::USERS, user)? {
            left_out = true;
        }
    }
    if left_out {
        raise.execute(params![DISTINCT_USERS_FULL, 1])?;
    }
    Ok(())
}

/// Space-Saving top-K on [`maps::USAGE_BY_USER`]: a tracked user adds up; a new one is added
/// while fewer than K are tracked, else replaces the smallest entry (found through the
/// `metrics_top_users` index) and inherits its count.
fn add_usage(c: &Connection, usage: &[(&str, f64)], bounds: &Bounds) -> StoreResult<()> {
    if usage.is_empty() {
        return Ok(());
    }
    let mut add = c.prepare_cached(ADD_METRIC)?;
    let mut tracked = map_size(c, maps::USAGE_BY_USER)?;
    // Smallest first; ties: the field that ranks last in the top. The literal map name is
    // what lets SQLite use the partial index.
    let smallest = format!(
        "SELECT field, value FROM metrics INDEXED BY metrics_top_users
         WHERE map = '{}' ORDER BY value ASC, field DESC LIMIT 1",
        maps::USAGE_BY_USER
    );
    for &(user, by) in usage {
        let known = has_field(c, maps::USAGE_BY_USER, user)?;
        if known || tracked < bounds.top_users_tracked.max(1) {
            tracked += usize::from(!known);
            add.execute(params![maps::USAGE_BY_USER, user, by])?;
            continue;
        }
        let evicted: Option<(String, f64)> = c
            .prepare_cached(&smallest)?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let inherited = match evicted {
            Some((field, value)) => {
                c.prepare_cached("DELETE FROM metrics WHERE map = ?1 AND field = ?2")?
                    .execute(params![maps::USAGE_BY_USER, field])?;
                value
            }
            None => 0.0,
        };
        add.execute(params![maps::USAGE_BY_USER, user, inherited + by])?;
    }
    Ok(())
}

/// Adds the non-zero counters to the counters map.
pub(super) fn add_counters(c: &Connection, pairs: &[(&str, u64)]) -> StoreResult<()> {
    let mut add = c.prepare_cached(ADD_METRIC)?;
    for &(name, n) in pairs {
        if n > 0 {
            add.execute(params![maps::COUNTERS, name, n as f64])?;
        }
    }
    Ok(())
}

/// Every summed map, the number of distinct users and the top users, from one snapshot.
pub(super) fn metrics(c: &Connection) -> StoreResult<StoredMetrics> {
    let mut snapshot = StoredMetrics::default();
    // Walk map names by index seeks, so the (large) users and per-user maps are never scanned.
    let mut next_map = c.prepare_cached("SELECT MIN(map) FROM metrics WHERE map > ?1")?;
    let mut fields = c.prepare_cached("SELECT field, value FROM metrics WHERE map = ?1")?;
    let mut after = String::new();
    while let Some(name) = next_map.query_row([&after], |r| r.get::<_, Option<String>>(0))? {
        if name.starts_with(rollup::PREFIX) {
            // Rollup buckets are read by range (below, and `rollups`): skip them all in one
            // seek. `;` is the byte after the prefix's `:`.
            after = format!("{};", rollup::PREFIX.trim_end_matches(':'));
            continue;
        }
        if MapShape::of(&name) == MapShape::Summed {
            let map = fields
                .query_map([&name], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
                })?
                .collect::<Result<_, _>>()?;
            snapshot.maps.insert(name.clone(), map);
        }
        after = name;
    }
    snapshot.distinct_users = distinct_users(c)?;
    let (from, to) = rollup::minute_window(now_seconds());
    let minutes = rollups(
        c,
        &RollupRange {
            aggregate: maps::EVENTS_BY_TYPE.to_string(),
            granularity: Granularity::Minute,
            from,
            to,
            // The window is far shorter than any minute retention.
            retention: Retention::default(),
            now: now_seconds(),
        },
    )?;
    rollup::add_minutes(&mut snapshot, minutes);
    // The partial index holds this map's rows in exactly this order: reading the top is a
    // scan of its first rows, however many users there are. (The literal map name is what
    // lets SQLite use a partial index.)
    let top = format!(
        "SELECT field, value FROM metrics INDEXED BY metrics_top_users
         WHERE map = '{}' ORDER BY value DESC, field LIMIT {}",
        maps::USAGE_BY_USER,
        TOP_USERS
    );
    snapshot.top_users = c
        .prepare_cached(&top)?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(snapshot)
}

fn now_seconds() -> i64 {
    crate::backend::epoch_millis(std::time::SystemTime::now()) / 1_000
}

/// One range of rollup buckets to read (see `Backend::rollups`).
#[derive(Debug)]
pub(super) struct RollupRange {
    pub(super) aggregate: String,
    pub(super) granularity: Granularity,
    /// First bucket start, inclusive (unix seconds).
    pub(super) from: i64,
    /// Last bucket start, exclusive.
    pub(super) to: i64,
    pub(super) retention: Retention,
    /// The reader's clock (unix seconds): buckets past their retention at it are left out.
    pub(super) now: i64,
}

/// The buckets of a range: one index range scan of the `metrics` primary key, since bucket
/// names sort by time.
pub(super) fn rollups(c: &Connection, range: &RollupRange) -> StoreResult<Buckets> {
    let mut out = Buckets::new();
    if range.from >= range.to {
        return Ok(out);
    }
    let first = rollup::map_name(&range.aggregate, range.granularity, range.from);
    let end = rollup::map_name(&range.aggregate, range.granularity, range.to);
    if range.aggregate == rollup::ACTIVE_USERS {
        let mut rows = c.prepare_cached(
            "SELECT map, registers FROM rollup_users WHERE map >= ?1 AND map < ?2",
        )?;
        let mut rows = rows.query(params![first, end])?;
        while let Some(row) = rows.next()? {
            let map: String = row.get(0)?;
            let Some((_, _, start)) = rollup::parse(&map) else {
                continue;
            };
            if !range.retention.keeps(&map, range.now) {
                continue;
            }
            let blob: Vec<u8> = row.get(1)?;
            let registers = bucket_users::decode(&blob)
                .into_iter()
                .map(|(register, rank)| (register.to_string(), f64::from(rank)))
                .collect();
            out.insert(start, registers);
        }
        return Ok(out);
    }
    let mut rows = c.prepare_cached(
        "SELECT map, field, value FROM metrics WHERE map >= ?1 AND map < ?2 ORDER BY map",
    )?;
    let mut rows = rows.query(params![first, end])?;
    // The bucket of the rows being read: its name, start and whether it is still kept.
    let mut current: Option<(String, i64, bool)> = None;
    while let Some(row) = rows.next()? {
        let map: String = row.get(0)?;
        let start = match &current {
            Some((name, start, kept)) if *name == map => kept.then_some(*start),
            _ => {
                let kept = range.retention.keeps(&map, range.now);
                let start = rollup::parse(&map).map(|(_, _, start)| start);
                current = Some((map, start.unwrap_or(0), kept && start.is_some()));
                start.filter(|_| kept)
            }
        };
        let Some(start) = start else {
            continue;
        };
        out.entry(start)
            .or_default()
            .insert(row.get(1)?, row.get(2)?);
    }
    Ok(out)
}

/// Deletes at most `limit` rollup rows past their retention at `now` (unix seconds), oldest
/// buckets first: the writer's upkeep calls it between jobs, so retention never holds the
/// write lock for long. Returns how many rows went.
pub(super) fn delete_expired_rollups(
    c: &Connection,
    retention: &Retention,
    now: i64,
    limit: i64,
) -> StoreResult<i64> {
    let mut deleted = 0;
    let mut delete_fields = c.prepare_cached(
        "DELETE FROM metrics WHERE (map, field) IN
         (SELECT map, field FROM metrics WHERE map >= ?1 AND map < ?2 LIMIT ?3)",
    )?;
    let mut delete_users = c.prepare_cached(
        "DELETE FROM rollup_users WHERE map IN
         (SELECT map FROM rollup_users WHERE map >= ?1 AND map < ?2 LIMIT ?3)",
    )?;
    for aggregate in rollup::AGGREGATES {
        let delete = if aggregate == rollup::ACTIVE_USERS {
            &mut delete_users
        } else {
            &mut delete_fields
        };
        for g in Granularity::ALL {
            if deleted >= limit {
                return Ok(deleted);
            }
            // Before every bucket start (`-` sorts before the digits), up to the oldest kept.
            let first = format!("{}{aggregate}:{}:", rollup::PREFIX, g.letter());
            let kept = rollup::map_name(aggregate, g, retention.oldest_kept(g, now));
            deleted += delete.execute(params![first, kept, limit - deleted])? as i64;
        }
    }
    Ok(deleted)
}

/// The exact set's size until a user was left out of it, then the HyperLogLog estimate
/// (never below the exact set).
fn distinct_users(c: &Connection) -> StoreResult<u64> {
    let exact = map_size(c, maps::USERS)? as u64;
    let full = c
        .prepare_cached("SELECT 1 FROM distinct_users_hll WHERE register = ?1")?
        .query_row([DISTINCT_USERS_FULL], |_| Ok(()))
        .optional()?
        .is_some();
    if !full {
        return Ok(exact);
    }
    let mut hll = Hll::new();
    let mut registers = c.prepare_cached("SELECT register, rank FROM distinct_users_hll")?;
    let mut rows = registers.query([])?;
    while let Some(row) = rows.next()? {
        let register: i64 = row.get(0)?;
        let rank: i64 = row.get(1)?;
        if let (Ok(register), Ok(rank)) = (usize::try_from(register), u8::try_from(rank)) {
            hll.raise(register, rank);
        }
    }
    Ok(hll.estimate().max(exact))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::Increment;

    /// What the file holds after 5,000 distinct users, each with some usage, under small bounds.
    #[test]
    fn stored_rows_stay_within_the_bounds_however_many_users_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bounded.sqlite3");
        let mut c = Connection::open(&path).unwrap();
        super::super::schema::migrate(&mut c, &path).unwrap();
        let ctx = Ctx {
            now: 0,
            lease_ms: 1_000,
            ttl_ms: 1_000,
            path: &path,
            bounds: Bounds {
                max_dimension_values: 3,
                exact_distinct_users: 100,
                top_users_tracked: 50,
                ..Bounds::default()
            },
        };
        for batch in 0..10 {
            let mut incs = Vec::new();
            for u in batch * 500..(batch + 1) * 500 {
                incs.push(Increment::new(maps::USERS, format!("user_{u}"), 1.0));
                incs.push(Increment::new(
                    maps::USAGE_BY_USER,
                    format!("user_{u}"),
                    1.0,
                ));
                incs.push(Increment::new(
                    maps::SIGNUPS_BY_SOURCE,
                    format!("s{u}"),
                    1.0,
                ));
            }
            // One transaction per batch, as the writer runs it.
            let tx = c.transaction().unwrap();
            add_metrics(&tx, &ctx, &Sums::of(&incs)).unwrap();
            tx.commit().unwrap();
        }
        let rows = |map: &str| map_size(&c, map).unwrap();
        assert_eq!(rows(maps::USERS), 100);
        assert_eq!(rows(maps::USAGE_BY_USER), 50);
        assert_eq!(rows(maps::SIGNUPS_BY_SOURCE), 4);
        let registers: i64 = c
            .query_row("SELECT count(*) FROM distinct_users_hll", [], |r| r.get(0))
            .unwrap();
        assert!(registers <= hll::REGISTERS as i64 + 1, "{registers}");
        let m = metrics(&c).unwrap();
        let n = m.distinct_users as f64;
        assert!((n - 5_000.0).abs() / 5_000.0 < 0.03, "{n}");
        let usage: f64 = c
            .query_row(
                "SELECT sum(value) FROM metrics WHERE map = ?1",
                [maps::USAGE_BY_USER],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(usage, 5_000.0, "inherited counts keep the total");
    }
}
