//! Throughput of the Redis backend: batch enqueue (100-event batches) and drain (claim + ack
//! with a real analytics effect) at batch sizes 10 and 500.
//!
//! `cargo run --release -p pipeline-core --example redis_throughput -- <redis url> [events] [concurrency]`
//!
//! Uses a unique key prefix and deletes its keys afterwards, so it may point at a shared Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use pipeline_core::analytics::effect_of;
use pipeline_core::backend::redis::RedisBackend;
use pipeline_core::backend::{Backend, BackendOptions, QueuedEvent, Settlement};
use pipeline_core::event::{Event, EventId};

const ENQUEUE_BATCH: usize = 100;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let events: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let concurrency: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let prefix = format!(
        "bench-{}-{}",
        std::process::id(),
        Utc::now().timestamp_millis()
    );
    let backend = Arc::new(
        RedisBackend::connect(
            &url,
            &prefix,
            &Default::default(),
            BackendOptions::default(),
        )
        .await
        .context("connect")?,
    );
    println!(
        "redis {} | prefix {prefix} | {events} events | concurrency {concurrency}",
        pipeline_core::config::redact_url(&url)
    );

    let outcome = run(&backend, events, concurrency).await;
    cleanup(&url, &prefix).await?;
    outcome
}

async fn run(backend: &Arc<RedisBackend>, events: u64, concurrency: u64) -> Result<()> {
    for (round, batch) in [10usize, 500].into_iter().enumerate() {
        let rate = enqueue_all(backend, events, concurrency, round).await?;
        println!("ingest  (batches of {ENQUEUE_BATCH}): {rate:>10.0} events/s");
        let rate = drain_all(backend, events, concurrency, batch).await?;
        println!("drain   (batch size {batch:>3}):    {rate:>10.0} events/s");
    }
    Ok(())
}

async fn enqueue_all(
    backend: &Arc<RedisBackend>,
    events: u64,
    concurrency: u64,
    round: usize,
) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (backend, next) = (backend.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(ENQUEUE_BATCH as u64, Ordering::Relaxed);
                if from >= events {
                    return Ok::<(), anyhow::Error>(());
                }
                let to = (from + ENQUEUE_BATCH as u64).min(events);
                let batch = (from..to).map(|i| event(round, i)).collect::<Result<_>>()?;
                backend.enqueue(batch).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

async fn drain_all(
    backend: &Arc<RedisBackend>,
    events: u64,
    concurrency: u64,
    batch: usize,
) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..concurrency {
        let (backend, done) = (backend.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let cancel = CancellationToken::new();
            let consumer = format!("bench-{n}");
            while done.load(Ordering::Relaxed) < events {
                let got = backend
                    .claim_batch(&consumer, batch, Duration::from_millis(50), &cancel)
                    .await?;
                let now = Utc::now();
                let mut settle = Vec::with_capacity(got.len());
                for d in got {
                    let e = Event::from_slice(d.payload.as_bytes())
                        .map_err(|e| anyhow::anyhow!("stored event invalid: {e:?}"))?;
                    settle.push(Settlement::Ack {
                        effect: Some(effect_of(&e, now)),
                        delivery: d,
                    });
                }
                let n = settle.len() as u64;
                backend.settle(settle).await?;
                done.fetch_add(n, Ordering::Relaxed);
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

fn event(round: usize, i: u64) -> Result<QueuedEvent> {
    let id = format!("evt_{round}_{i}");
    let received = Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
    Ok(QueuedEvent {
        event_id: EventId::parse(&id).map_err(|e| anyhow::anyhow!("{id}: {e}"))?,
        payload: format!(
            r#"{{"event_id":"{id}","event_type":"user_signup","user_id":"user_{u}","timestamp":"2025-12-16T10:00:00Z","metadata":{{"source":"organic","country":"US"}},"received_at":"{received}"}}"#,
            u = i % 1000
        ),
    })
}

/// Deletes every key of the run's prefix.
async fn cleanup(url: &str, prefix: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{{{prefix}}}:*");
    let mut cursor: u64 = 0;
    let mut deleted = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len();
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut conn)
                .await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    println!("cleaned up {deleted} keys");
    Ok(())
}
