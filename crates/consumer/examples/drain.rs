//! Drain rate of one in-process consumer on the memory backend.
//!
//! Fills the queue, starts a consumer, and times how long it takes to empty it, for each
//! batch size given. Logging is off, so this measures the loop, the decisions and the backend
//! calls, not the terminal.
//!
//! ```text
//! cargo run --release -p consumer --example drain -- [EVENTS] [BATCH_SIZE...]
//! cargo run --release -p consumer --example drain -- 100000 10 500
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use pipeline_core::backend::memory::MemoryBackend;
use pipeline_core::backend::{Backend, BackendOptions, QueuedEvent};
use pipeline_core::config::{Config, ConfigArgs};
use pipeline_core::event::Event;
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn events(n: usize) -> Vec<QueuedEvent> {
    (0..n)
        .map(|i| {
            let v = match i % 3 {
                0 => json!({"event_id": format!("evt_{i}"), "event_type": "user_signup",
                    "user_id": format!("user_{}", i % 1000), "timestamp": "2025-12-16T10:00:00Z",
                    "metadata": {"source": "organic", "country": "US", "email": "a@example.com"}}),
                1 => json!({"event_id": format!("evt_{i}"), "event_type": "subscription_created",
                    "user_id": format!("user_{}", i % 1000), "timestamp": "2025-12-16T10:00:00Z",
                    "metadata": {"plan": "pro", "amount": 99.99, "billing_cycle": "monthly"}}),
                _ => json!({"event_id": format!("evt_{i}"), "event_type": "usage_tracked",
                    "user_id": format!("user_{}", i % 1000), "timestamp": "2025-12-16T10:00:00Z",
                    "metadata": {"feature": "api_call", "quantity": 5}}),
            };
            let mut e = Event::from_value(v).expect("generated events are valid");
            e.stamp_received_at(Utc::now());
            QueuedEvent::of(&e)
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: usize = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(50_000);
    let sizes: Vec<usize> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?
    } else {
        vec![10, 500]
    };
    println!("draining {count} events per run (memory backend, one consumer, logging off)");
    for size in sizes {
        let config = Config::load_from(
            &ConfigArgs::default(),
            [
                ("DAY15_QUEUE_BACKEND", "memory".to_string()),
                ("DAY15_BATCH_SIZE", size.to_string()),
                ("DAY15_BATCH_TIMEOUT_SECONDS", "0.1".to_string()),
                ("DAY15_LOG_FILE", String::new()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        )?;
        let backend = Arc::new(MemoryBackend::new(BackendOptions::from_config(&config)));
        backend.enqueue(events(count)).await?;

        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let consumer = tokio::spawn(consumer::run(
            config,
            backend.clone() as Arc<dyn Backend>,
            shutdown.clone(),
        ));
        while backend.depths().await?.queue > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        shutdown.cancel();
        let stats = consumer.await??;
        println!(
            "batch {size:>5}: {:>9.0} events/s ({count} in {:.3}s, {} batches, e2e p99 {:.1}ms)",
            count as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64(),
            stats.batches,
            stats.latency().p99_ms
        );
    }
    Ok(())
}
