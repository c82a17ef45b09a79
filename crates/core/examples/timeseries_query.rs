//! How long one `GET /analytics/timeseries` query over 30 days by hour with a 1,000-value
//! `group_by` takes: the backend read of the hour buckets plus shaping and serialising the
//! answer, as the webhook's handler does (HTTP itself excluded).
//!
//! `cargo run --release -p pipeline-core --example timeseries_query -- [redis url]`
//!
//! Two shapes of data, each on SQLite and in memory (and on Redis when a URL is given; it
//! uses its own key prefix and deletes its keys afterwards):
//! - sparse: 1,000 sources over the month, 40 of them in each hour (28,800 stored values);
//! - dense: all 1,000 sources in every one of the 720 hours (720,000 stored values, a 14 MB
//!   answer), the worst case the dimension cap allows.
//!
//! Prints the median and the slowest of 20 queries, and the answer's size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use pipeline_core::analytics::rollup::{self, Granularity};
use pipeline_core::analytics::timeseries::{RawParameters, TimeseriesQuery};
use pipeline_core::analytics::{maps, Increment};
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::redis::RedisBackend;
use pipeline_core::backend::sqlite::SqliteBackend;
use pipeline_core::backend::{Backend, BackendOptions};
use pipeline_core::config::{Config, SqliteSynchronous};

const HOURS: i64 = 30 * 24;
const VALUES: usize = 1_000;
const RUNS: usize = 20;

/// Writes hour buckets of signups by source for the last 30 days: `per_hour` sources each
/// hour, walking through all [`VALUES`].
async fn fill(b: &Arc<dyn Backend>, per_hour: usize) -> anyhow::Result<()> {
    let now = Utc::now().timestamp();
    let first = Granularity::Hour.bucket_start(now) - (HOURS - 1) * 3_600;
    let mut next = 0usize;
    for h in 0..HOURS {
        let map = rollup::map_name(
            maps::SIGNUPS_BY_SOURCE,
            Granularity::Hour,
            first + h * 3_600,
        );
        let increments: Vec<Increment> = (0..per_hour)
            .map(|_| {
                next = (next + 1) % VALUES;
                Increment::new(&map, format!("source_{next:04}"), 1.0 + (next % 7) as f64)
            })
            .collect();
        b.record(increments).await?;
    }
    Ok(())
}

/// `(median, slowest, answer bytes)` of [`RUNS`] queries.
async fn measure(b: &Arc<dyn Backend>) -> anyhow::Result<(Duration, Duration, usize)> {
    let mut times = Vec::with_capacity(RUNS);
    let mut bytes = 0;
    for _ in 0..RUNS {
        let now = Utc::now();
        let from = (now - chrono::Duration::hours(HOURS - 1)).to_rfc3339();
        let to = now.to_rfc3339();
        let started = Instant::now();
        let query = TimeseriesQuery::parse(
            &RawParameters {
                metric: Some("signups"),
                granularity: Some("hour"),
                from: Some(&from),
                to: Some(&to),
                group_by: Some("source"),
                tz: None,
            },
            &rollup::Retention::default(),
            now,
        )
        .map_err(|p| anyhow::anyhow!("{}: {}", p.parameter, p.problem))?;
        let answer = query.run(b.as_ref()).await?;
        let json = serde_json::to_vec(&answer)?;
        times.push(started.elapsed());
        bytes = json.len();
    }
    times.sort();
    Ok((times[RUNS / 2], times[RUNS - 1], bytes))
}

async fn report(name: &str, b: Arc<dyn Backend>, per_hour: usize) -> anyhow::Result<()> {
    let filled = Instant::now();
    fill(&b, per_hour).await?;
    let fill_time = filled.elapsed();
    let (median, slowest, bytes) = measure(&b).await?;
    println!(
        "{name:<7} {:>7} values ({per_hour:>4}/hour): median {:>7.1} ms, slowest {:>7.1} ms, \
         answer {:>6} KB (filled in {:.1} s)",
        per_hour * HOURS as usize,
        median.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3,
        bytes / 1024,
        fill_time.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let redis_url = std::env::args().nth(1);
    for (shape, per_hour) in [("sparse", 40), ("dense", VALUES)] {
        println!("{shape}: 30 days by hour, group_by source, {VALUES} sources");
        let dir = tempfile::tempdir()?;
        let sqlite: Arc<dyn Backend> = Arc::new(
            SqliteBackend::open(
                &dir.path().join("timeseries.sqlite3"),
                SqliteSynchronous::Normal,
                BackendOptions::default(),
            )
            .await?,
        );
        report("sqlite", sqlite, per_hour).await?;
        let memory: Arc<dyn Backend> = Arc::new(MemoryBackend::new(BackendOptions::default()));
        report("memory", memory, per_hour).await?;
        if let Some(url) = &redis_url {
            let mut config = Config::defaults();
            config.redis.url = url.clone();
            config.redis.key_prefix = format!("tsbench{}", std::process::id());
            let redis = RedisBackend::open(&config.redis, BackendOptions::default()).await?;
            let redis: Arc<dyn Backend> = Arc::new(redis);
            report("redis", redis, per_hour).await?;
            let client = ::redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{{{}}}*", config.redis.key_prefix))
                .query_async(&mut conn)
                .await?;
            for chunk in keys.chunks(500) {
                let _: () = ::redis::cmd("DEL")
                    .arg(chunk)
                    .query_async(&mut conn)
                    .await?;
            }
        }
    }
    Ok(())
}
