//! Raw throughput of the SQLite backend, without HTTP in front of it.
//!
//! `cargo run --release -p pipeline-core --example sqlite_throughput [full|normal|both]
//! [batch|single|drain|wake]` (both modes and every figure by default). Each figure uses a fresh file in a temp dir:
//! - batch ingest: 100-event `enqueue` calls from 16 concurrent tasks (events/s);
//! - single ingest: 1-event `enqueue` calls from 32 concurrent tasks (ops/s);
//! - drain: claim 10 + settle (ack with the event's analytics effect), by 1 and by 4
//!   backend instances on one file, standing in for consumer processes (events/s);
//! - wake-up: how long a claimer blocked on an empty queue takes to get an event enqueued
//!   through another instance on the same file (another process, in effect).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use pipeline_core::analytics::effect_of;
use pipeline_core::backend::sqlite::SqliteBackend;
use pipeline_core::backend::{Backend, BackendOptions, QueuedEvent, Settlement};
use pipeline_core::config::SqliteSynchronous;
use pipeline_core::event::{Event, EventId};

const BATCH_EVENTS: usize = 200_000;
const SINGLE_EVENTS: usize = 40_000;
const DRAIN_EVENTS: usize = 100_000;

fn event(n: usize) -> QueuedEvent {
    let id = format!("evt_{n:012}");
    let payload = format!(
        r#"{{"event_id":"{id}","event_type":"usage_tracked","user_id":"user_{}","timestamp":"2025-12-16T10:00:00Z","metadata":{{"feature":"api_call","quantity":{}}},"received_at":"2025-12-16T10:00:00.000000Z"}}"#,
        n % 5000,
        n % 50 + 1
    );
    QueuedEvent {
        event_id: EventId::parse(&id).expect("generated ids are valid"),
        payload,
    }
}

async fn open(path: &Path, sync: SqliteSynchronous) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        SqliteBackend::open(path, sync, BackendOptions::default()).await?,
    ))
}

/// Enqueues `total` events in calls of `per_call` from `tasks` concurrent tasks; events/s.
async fn ingest(
    b: &Arc<dyn Backend>,
    first: usize,
    total: usize,
    per_call: usize,
    tasks: usize,
) -> anyhow::Result<f64> {
    let calls = total / per_call;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (b, next) = (b.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let call = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if call >= calls {
                        return anyhow::Ok(());
                    }
                    let base = first + call * per_call;
                    let events = (base..base + per_call).map(event).collect();
                    b.enqueue(events).await?;
                }
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    Ok((calls * per_call) as f64 / start.elapsed().as_secs_f64())
}

/// Drains the queue with one claim-10-and-settle loop per instance; events/s.
async fn drain(instances: Vec<Arc<dyn Backend>>) -> anyhow::Result<f64> {
    let start = Instant::now();
    let workers: Vec<_> = instances
        .into_iter()
        .enumerate()
        .map(|(n, b)| {
            tokio::spawn(async move {
                let consumer = format!("c{n}");
                let mut done = 0usize;
                loop {
                    let got = b
                        .claim_batch(&consumer, 10, Duration::ZERO, &CancellationToken::new())
                        .await?;
                    if got.is_empty() {
                        return anyhow::Ok(done);
                    }
                    done += got.len();
                    let now = chrono::Utc::now();
                    let settlements = got
                        .into_iter()
                        .map(|d| {
                            let effect = Event::from_slice(d.payload.as_bytes())
                                .ok()
                                .map(|e| effect_of(&e, now));
                            Settlement::Ack {
                                delivery: d,
                                effect,
                            }
                        })
                        .collect();
                    b.settle(settlements).await?;
                }
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Delays from an enqueue committing in one instance to a blocked claim in another
/// returning it; `idle` is how long the claimer waits first (its poll interval backs off).
async fn wake_ups(path: &Path, sync: SqliteSynchronous, idle: Duration) -> anyhow::Result<String> {
    let consumer = open(path, sync).await?;
    let webhook = open(path, sync).await?;
    let mut delays = Vec::new();
    for n in 0..40 {
        let waiter = {
            let consumer = consumer.clone();
            tokio::spawn(async move {
                let got = consumer
                    .claim_batch("c", 10, Duration::from_secs(10), &CancellationToken::new())
                    .await;
                (got, Instant::now())
            })
        };
        // Vary the phase against the poll interval.
        tokio::time::sleep(idle + Duration::from_micros(n * 613 % 25_000)).await;
        webhook
            .enqueue(vec![event(10_000_000 + n as usize)])
            .await?;
        let committed = Instant::now();
        let (got, at) = waiter.await?;
        let got = got?;
        consumer
            .settle(
                got.into_iter()
                    .map(|d| Settlement::Ack {
                        delivery: d,
                        effect: None,
                    })
                    .collect(),
            )
            .await?;
        delays.push(at.saturating_duration_since(committed));
    }
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(format!(
        "p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(delays[delays.len() / 2]),
        ms(delays[delays.len() * 9 / 10]),
        ms(delays[delays.len() - 1])
    ))
}

async fn run(sync: SqliteSynchronous, label: &str, only: Option<&str>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let want = |name: &str| only.is_none_or(|o| o == name);
    println!("synchronous={label}");

    if want("batch") {
        let b = open(&dir.path().join("batch.sqlite3"), sync).await?;
        let rate = ingest(&b, 0, BATCH_EVENTS, 100, 16).await?;
        println!("  batch ingest (100/call, 16 tasks):   {rate:>10.0} events/s");
    }

    if want("single") {
        let b = open(&dir.path().join("single.sqlite3"), sync).await?;
        let rate = ingest(&b, 0, SINGLE_EVENTS, 1, 32).await?;
        println!("  single ingest (1/call, 32 tasks):    {rate:>10.0} ops/s");
    }

    for consumers in [1, 4].into_iter().filter(|_| want("drain")) {
        let path = dir.path().join(format!("drain-{consumers}.sqlite3"));
        let b = open(&path, sync).await?;
        ingest(&b, 0, DRAIN_EVENTS, 100, 8).await?;
        let mut instances = vec![b];
        for _ in 1..consumers {
            instances.push(open(&path, sync).await?);
        }
        let rate = drain(instances).await?;
        println!("  drain (batch 10, {consumers} instance(s)):      {rate:>10.0} events/s");
    }

    if !want("wake") {
        return Ok(());
    }
    let wake = wake_ups(&dir.path().join("wake.sqlite3"), sync, Duration::ZERO).await?;
    println!("  cross-instance wake-up, fresh wait:  {wake}");
    let wake = wake_ups(
        &dir.path().join("wake-idle.sqlite3"),
        sync,
        Duration::from_millis(200),
    )
    .await?;
    println!("  cross-instance wake-up, idle wait:   {wake}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let which = std::env::args().nth(1);
    let only = std::env::args().nth(2);
    let modes: Vec<(SqliteSynchronous, &str)> = match which.as_deref() {
        Some("full") => vec![(SqliteSynchronous::Full, "full")],
        Some("normal") => vec![(SqliteSynchronous::Normal, "normal")],
        None | Some("both") => vec![
            (SqliteSynchronous::Full, "full"),
            (SqliteSynchronous::Normal, "normal"),
        ],
        Some(other) => anyhow::bail!("unknown mode {other:?}: expected full or normal"),
    };
    for (sync, label) in modes {
        run(sync, label, only.as_deref()).await?;
    }
    Ok(())
}
