//! `event-generator backfill`: a month (or any number of days) of history in a minute.
//!
//! Sends `--events-per-day` realistic events for each of the last `--days` UTC days, today
//! included (today's only up to now), with timestamps spread over the day, in
//! `/webhook/batch` requests of `--batch-size`, `--concurrency` at a time. The rollups bucket
//! by event time, so the timeseries API and the dashboard's history show them at once. A
//! request answered 429 or 503 is sent again after a short pause: the same event ids, so a
//! request that was in fact stored answers duplicates instead of counting twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::cli::BackfillArgs;
use crate::client::{BatchAnswer, BatchResults, WebhookClient, BATCH_PATH, JSON};
use crate::events::EventFactory;
use pipeline_core::runtime::exit;

/// Sends of one request before it counts as failed.
const ATTEMPTS: u32 = 20;
/// Pause before sending a refused (429/503) or failed request again; doubles up to 2 s.
const FIRST_PAUSE: Duration = Duration::from_millis(100);

/// What a backfill did.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct BackfillReport {
    pub days: u32,
    pub events_per_day: u64,
    pub sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    /// Events the webhook refused (it should refuse none: they are valid and in the past).
    pub rejected: u64,
    /// Events of requests that never got an answer after every attempt.
    pub failed: u64,
    /// Events sent per UTC day (`YYYY-MM-DD`), oldest first.
    pub per_day: BTreeMap<String, u64>,
}

impl BackfillReport {
    pub fn exit_code(&self) -> i32 {
        if self.rejected == 0 && self.failed == 0 {
            exit::OK
        } else {
            exit::FAILURE
        }
    }
}

/// The timestamps of one day's events: `n` instants spread at random over
/// `[midnight, min(next midnight, now))`, sorted.
pub fn day_timestamps(
    rng: &mut StdRng,
    day: NaiveDate,
    n: u64,
    now: DateTime<Utc>,
) -> Vec<DateTime<Utc>> {
    let start = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).unwrap_or(now);
    let end = (start + chrono::Duration::days(1)).min(now);
    let span_ms = (end - start).num_milliseconds().max(1);
    let mut out: Vec<DateTime<Utc>> = (0..n)
        .map(|_| start + chrono::Duration::milliseconds(rng.gen_range(0..span_ms)))
        .collect();
    out.sort();
    out
}

/// Runs a backfill and prints its report (text, or one JSON document with `json`).
pub async fn run(
    client: WebhookClient,
    args: &BackfillArgs,
    seed: u64,
    nonce: u64,
    json: bool,
) -> i32 {
    let now = Utc::now();
    let today = now.date_naive();
    let mut factory = EventFactory::new(seed, nonce, 0);
    let mut rng = StdRng::seed_from_u64(seed ^ 0xbac4_f111);
    let mut report = BackfillReport {
        days: args.days,
        events_per_day: args.events_per_day,
        ..BackfillReport::default()
    };
    // Built up front, oldest day first: the bodies are small next to what they exercise.
    let mut bodies: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let batch = args.batch_size as usize;
    for days_ago in (0..i64::from(args.days)).rev() {
        let day = today - chrono::Duration::days(days_ago);
        let stamps = day_timestamps(&mut rng, day, args.events_per_day, now);
        report
            .per_day
            .insert(day.format("%Y-%m-%d").to_string(), stamps.len() as u64);
        for at in stamps {
            let mut event = factory.random_event();
            event.timestamp = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            pending.push(event.to_bytes());
            if pending.len() == batch {
                bodies.push(batch_body(&mut pending));
            }
        }
    }
    if !pending.is_empty() {
        bodies.push(batch_body(&mut pending));
    }
    if !json {
        println!(
            "Backfilling {} events over {} days into {} ({} requests of up to {batch})",
            args.events_per_day * u64::from(args.days),
            args.days,
            client.base_text(),
            bodies.len()
        );
    }
    let client = Arc::new(client);
    let slots = Arc::new(Semaphore::new(usize::from(args.concurrency)));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, body) in bodies {
        let client = client.clone();
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        tasks.spawn(async move {
            let answer = send(&client, body).await;
            drop(slot);
            (n, answer)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let Ok((n, answer)) = done else {
            continue;
        };
        report.sent += n;
        match answer {
            Some(a) => {
                report.accepted += a.accepted;
                report.duplicates += a.duplicates;
                report.rejected += a.errors;
            }
            None => report.failed += n,
        }
    }
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cannot print the report: {e}"),
        }
    } else {
        println!(
            "sent {}, accepted {}, duplicates {}, rejected {}, failed {}",
            report.sent, report.accepted, report.duplicates, report.rejected, report.failed
        );
    }
    report.exit_code()
}

fn batch_body(events: &mut Vec<Vec<u8>>) -> (u64, Vec<u8>) {
    let n = events.len() as u64;
    let mut body =
        Vec::with_capacity(16 + events.iter().map(Vec::len).sum::<usize>() + events.len());
    body.extend_from_slice(b"{\"events\":[");
    for (i, e) in events.drain(..).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&e);
    }
    body.extend_from_slice(b"]}");
    (n, body)
}

/// Sends one batch until it is answered 202 (or refused for good); `None` when it never was.
async fn send(client: &WebhookClient, body: Vec<u8>) -> Option<BatchResults> {
    let mut pause = FIRST_PAUSE;
    for _ in 0..ATTEMPTS {
        match client.post(BATCH_PATH, body.clone(), JSON).await {
            Ok(reply) if reply.status.is_success() => {
                let answer: BatchAnswer =
                    reply.json().and_then(|v| serde_json::from_value(v).ok())?;
                return Some(answer.results);
            }
            Ok(reply) if reply.status.as_u16() != 429 && reply.status.as_u16() != 503 => {
                eprintln!(
                    "a backfill batch was refused with {}: {}",
                    reply.status,
                    reply.body_text()
                );
                return None;
            }
            _ => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_filled_and_today_stops_at_now() {
        let mut rng = StdRng::seed_from_u64(1);
        let now: DateTime<Utc> = "2026-12-02T06:00:00Z".parse().unwrap();
        let past = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let got = day_timestamps(&mut rng, past, 500, now);
        assert_eq!(got.len(), 500);
        assert!(got.iter().all(|t| t.date_naive() == past));
        assert!(got.windows(2).all(|w| w[0] <= w[1]));
        let today = day_timestamps(&mut rng, now.date_naive(), 500, now);
        assert!(today
            .iter()
            .all(|t| *t < now && t.date_naive() == now.date_naive()));
    }
}
