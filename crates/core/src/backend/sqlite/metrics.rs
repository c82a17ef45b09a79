//! The aggregates in the `metrics` table: summed increments written by the writer, and the
//! snapshot the reader thread reads back for `Backend::metrics`.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::error::StoreResult;
use super::schema::DISTINCT_USERS_FULL;
use super::writer::Ctx;
use crate::analytics::bounds::{self, DimensionCap};
use crate::analytics::hll::{self, Hll};
use crate::analytics::{maps, Bounds, MapShape, StoredMetrics, Sums, TOP_USERS};

/// Adds to one field of one map, creating it at the added value.
const ADD_METRIC: &str = "INSERT INTO metrics (map, field, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (map, field) DO UPDATE SET value = value + excluded.value";

/// Raises one HyperLogLog register (or the "exact set is full" mark) to at least the value.
const RAISE_REGISTER: &str = "INSERT INTO distinct_users_hll (register, rank) VALUES (?1, ?2)
     ON CONFLICT (register) DO UPDATE SET rank = max(rank, excluded.rank)";

/// Writes summed increments under the analytics bounds, deciding from the rows of this
/// transaction: each plain metric row is touched once per batch.
pub(super) fn add_metrics(c: &Connection, ctx: &Ctx<'_>, sums: &Sums<'_>) -> StoreResult<()> {
    let bounds = &ctx.bounds;
    let mut add = c.prepare_cached(ADD_METRIC)?;
    let mut caps: HashMap<&str, DimensionCap> = HashMap::new();
    let mut users: Vec<&str> = Vec::new();
    let mut usage: Vec<(&str, f64)> = Vec::new();
    for (map, field, by) in bounds::in_order(sums) {
        match MapShape::of(map) {
            MapShape::Distinct => users.push(field),
            MapShape::Ranked => usage.push((field, by)),
            MapShape::Summed if bounds::is_capped(map) => {
                let cap = match caps.get_mut(map) {
                    Some(cap) => cap,
                    None => caps
                        .entry(map)
                        .or_insert(DimensionCap::new(named_fields(c, map)?, bounds)),
                };
                let target = cap.target(map, field, has_field(c, map, field)?);
                add.execute(params![map, target, by])?;
            }
            MapShape::Summed => {
                add.execute(params![map, field, by])?;
            }
        }
    }
    add_users(c, &users, bounds)?;
    add_usage(c, &usage, bounds)?;
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
