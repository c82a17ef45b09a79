//! The aggregates in the `metrics` table: summed increments written by the writer, and the
//! snapshot the reader thread reads back for `Backend::metrics`.

use rusqlite::{params, Connection};

use super::error::StoreResult;
use crate::analytics::{maps, MapShape, StoredMetrics, Sums, TOP_USERS};

/// Adds to one field of one map, creating it at the added value.
const ADD_METRIC: &str = "INSERT INTO metrics (map, field, value) VALUES (?1, ?2, ?3)
     ON CONFLICT (map, field) DO UPDATE SET value = value + excluded.value";

/// Writes summed increments: each metric row is touched once per batch.
pub(super) fn add_metrics(c: &Connection, sums: &Sums<'_>) -> StoreResult<()> {
    let mut add = c.prepare_cached(ADD_METRIC)?;
    for (map, field, by) in sums.iter() {
        add.execute(params![map, field, by])?;
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
    snapshot.distinct_users = c
        .prepare_cached("SELECT count(*) FROM metrics WHERE map = ?1")?
        .query_row([maps::USERS], |r| r.get::<_, i64>(0))? as u64;
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
