//! End to end, the rollups under a crash: 20,000 events with timestamps spread over the last
//! 30 days go through the real webhook and consumer processes while one consumer is SIGKILLed
//! holding a batch; once everything is processed, the day buckets of
//! `/analytics/timeseries` equal the counts this test computed itself from what it sent, and
//! their sum equals the totals. On SQLite and on a Redis queue split into four partitions.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const START: Duration = Duration::from_secs(60);
const STOP: Duration = Duration::from_secs(30);
const PROGRESS: Duration = Duration::from_secs(180);
const EVENTS: usize = 20_000;
const DAYS: i64 = 30;
const PER_REQUEST: usize = 100;
/// The batch the fault-injected consumer holds before it is killed.
const HELD_BATCH: &str = "3";
const HOLDING: &str = " - Fault injection: holding batch ";

/// Event `i`: a signup or usage event on day `i % 30` back, at a time of day fixed by `i`.
fn event(i: usize, today: NaiveDate) -> (NaiveDate, bool, Value) {
    let day = today - chrono::Duration::days((i as i64) % DAYS);
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    // Within the day, and never ahead of now (today's events fall in the past hours).
    let seconds_into_day = ((i as i64) * 7_919) % 86_400;
    let mut at = midnight + chrono::Duration::seconds(seconds_into_day);
    if at > Utc::now() {
        at = midnight + chrono::Duration::seconds(seconds_into_day % 60);
    }
    let signup = i.is_multiple_of(3);
    let source = ["organic", "ads", "referral"][(i / 3) % 3];
    let body = if signup {
        json!({
            "event_id": format!("ru-{i}"),
            "event_type": "user_signup",
            "user_id": format!("user_{}", i % 500),
            "timestamp": at.to_rfc3339(),
            "metadata": {"source": source, "country": "DE"},
        })
    } else {
        json!({
            "event_id": format!("ru-{i}"),
            "event_type": "usage_tracked",
            "user_id": format!("user_{}", i % 500),
            "timestamp": at.to_rfc3339(),
            "metadata": {"feature": "api_call", "quantity": 1 + i % 5},
        })
    };
    (day, signup, body)
}

/// Posts one batch until the webhook confirms it (202); a resend of a stored batch answers
/// duplicates, so each event is still stored once.
fn post_batch(p: &Pipeline, events: &[Value]) {
    let body = json!({ "events": events });
    eventually("a batch to be accepted", PROGRESS, || {
        let (status, answer) = p.post("/webhook/batch", &body);
        (status == 202 && answer["results"]["errors"] == 0).then_some(())
    });
}

fn rollups_survive_a_sigkilled_consumer(p: Pipeline) {
    let mut p = p;
    p.set("DAY15_BATCH_SIZE", "100");
    let mut webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    let mut killed = p.spawn_with(
        "consumer",
        &[],
        &[
            ("DAY15_FAULT_INJECTION", "true"),
            ("DAY15_FAULT_HOLD_BATCH", HELD_BATCH),
        ],
    );
    let mut survivor = p.spawn("consumer", &[]);

    let today = Utc::now().date_naive();
    let mut per_day: BTreeMap<NaiveDate, (u64, u64)> = BTreeMap::new();
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            let (day, signup, body) = event(i, today);
            let counts = per_day.entry(day).or_default();
            counts.0 += 1;
            counts.1 += u64::from(signup);
            body
        })
        .collect();
    let mut replacement = None;
    for (n, chunk) in events.chunks(PER_REQUEST).enumerate() {
        post_batch(&p, chunk);
        if n == 20 {
            // A tenth in: the fault-injected consumer holds a claimed, decided batch; kill it.
            eventually("the consumer to hold its batch", PROGRESS, || {
                tail(&killed.output, 256 * 1024)
                    .contains(HOLDING)
                    .then_some(())
            });
            killed.signal(Signal::SIGKILL);
            killed
                .wait_timeout(STOP)
                .expect("a SIGKILLed consumer exits");
            replacement = Some(p.spawn("consumer", &[]));
        }
    }
    let mut replacement = replacement.expect("the consumer was killed mid-run");
    p.wait_stat("processed", EVENTS as u64, PROGRESS);
    p.wait_queue_empty(PROGRESS);

    let first = *per_day.keys().next().expect("a day");
    let query = |metric: &str| {
        p.get_ok(&format!(
            "/analytics/timeseries?metric={metric}&granularity=day&from={first}T00:00:00Z&to={}",
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
    };
    let days = |doc: &Value| -> Vec<u64> {
        doc["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|b| b["value"].as_u64().expect("a count"))
            .collect()
    };
    let events_per_day = days(&query("events"));
    let signups_per_day = days(&query("signups"));
    let want_events: Vec<u64> = per_day.values().map(|c| c.0).collect();
    let want_signups: Vec<u64> = per_day.values().map(|c| c.1).collect();
    assert_eq!(events_per_day, want_events, "events per day");
    assert_eq!(signups_per_day, want_signups, "signups per day");
    let analytics = p.get_ok("/analytics");
    assert_eq!(
        events_per_day.iter().sum::<u64>(),
        analytics["events_processed"]
            .as_u64()
            .expect("events_processed"),
        "the day buckets add up to the totals"
    );

    for proc in [&mut webhook, &mut survivor, &mut replacement] {
        proc.signal(Signal::SIGTERM);
    }
    for proc in [&mut webhook, &mut survivor, &mut replacement] {
        let status = proc
            .wait_timeout(STOP)
            .unwrap_or_else(|| panic!("{} did not stop after SIGTERM", proc.name));
        assert_eq!(status.code(), Some(0), "{}: {}", proc.name, proc.output());
    }
}

#[test]
fn day_buckets_equal_what_was_sent_after_a_consumer_sigkill_sqlite() {
    rollups_survive_a_sigkilled_consumer(Pipeline::sqlite());
}

#[test]
fn day_buckets_equal_what_was_sent_after_a_consumer_sigkill_redis_partitioned() {
    let Some(server) = RedisServer::start().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let mut p = Pipeline::redis(&server);
    p.set("DAY15_REDIS_PARTITIONS", "4");
    rollups_survive_a_sigkilled_consumer(p);
    drop(server);
}
