//! The backend conformance suite, and Redis-specific behaviour (lost consumer group, outage,
//! key layout), each test against its own `redis-server` on a free port.
mod common;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use common::conformance::backend_conformance;
use pipeline_core::backend::redis::RedisBackend;
use pipeline_core::backend::*;
use pipeline_core::event::EventId;
use pipeline_core::testkit::wait::eventually;
use pipeline_core::testkit::RedisServer;

type RedisHarness = common::redis_harness::RedisHarness<RedisServer>;

/// `None` (the test is skipped) when redis-server is not installed and CI is not set.
fn start() -> Option<RedisHarness> {
    let server = RedisServer::start().unwrap_or_else(|e| panic!("{e}"))?;
    let url = server.url();
    Some(RedisHarness::new(server, url, Default::default()))
}

backend_conformance!(match start() {
    Some(h) => h,
    None => return,
});

fn ev(id: &str) -> QueuedEvent {
    QueuedEvent {
        event_id: EventId::parse(id).unwrap(),
        payload: format!(r#"{{"event_id":"{id}","event_type":"user_signup"}}"#),
    }
}

async fn redis_cli(server: &RedisServer, args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .arg("-p")
        .arg(server.port().to_string())
        .args(args)
        .output()
        .await
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Claims until something arrives or `deadline` passes, retrying through errors.
async fn claim_eventually(b: &RedisBackend, deadline: Duration) -> Vec<Delivery> {
    eventually("something to claim", deadline, || async {
        b.claim_batch(
            "c1",
            10,
            Duration::from_millis(200),
            &CancellationToken::new(),
        )
        .await
        .ok()
        .filter(|got| !got.is_empty())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_consumer_group_is_recreated_and_work_continues() {
    let Some(h) = start() else {
        return;
    };
    let b = h.backend("nogroup", BackendOptions::default()).await;
    b.enqueue(vec![ev("before")]).await.unwrap();
    // Redis lost everything (restarted without persistence): stream and group are gone.
    redis_cli(&h.server, &["FLUSHALL"]).await;
    assert_eq!(
        b.enqueue(vec![ev("after")]).await.unwrap(),
        [EnqueueOutcome::Accepted]
    );
    let got = claim_eventually(&b, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id.as_str(), "after");
    b.settle(vec![Settlement::Ack {
        delivery: got[0].clone(),
        effect: None,
    }])
    .await
    .unwrap();
    assert_eq!(b.depths().await.unwrap().queue, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_gives_unavailable_fast_and_the_same_backend_recovers() {
    let Some(mut h) = start() else {
        return;
    };
    let b = h.backend("outage", BackendOptions::default()).await;
    b.enqueue(vec![ev("one")]).await.unwrap();

    h.server.stop();
    // The first call finds the dead connection, later ones find reconnection refused: both fast.
    for attempt in ["first", "second"] {
        let started = Instant::now();
        let err = b.enqueue(vec![ev("two")]).await.unwrap_err();
        assert!(
            matches!(err, BackendError::Unavailable(_)),
            "an unreachable redis is Unavailable (503), got {err:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{attempt} enqueue must fail fast when redis is down, took {:?}",
            started.elapsed()
        );
    }

    h.server.restart().unwrap();
    let start = Instant::now();
    loop {
        match b.enqueue(vec![ev("three")]).await {
            Ok(out) => {
                assert_eq!(out, [EnqueueOutcome::Accepted]);
                break;
            }
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(15),
                "no reconnect after restart: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = claim_eventually(&b, Duration::from_secs(15)).await;
    assert_eq!(got[0].event_id.as_str(), "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_shares_the_prefix_hash_tag() {
    let Some(h) = start() else {
        return;
    };
    let b = h
        .backend(
            "tagged",
            BackendOptions {
                visibility_timeout: Duration::from_millis(100),
                ..BackendOptions::default()
            },
        )
        .await;
    b.enqueue(vec![ev("k1"), ev("k2"), ev("k3")]).await.unwrap();
    let got = claim_eventually(&b, Duration::from_secs(10)).await;
    let mut settle = Vec::new();
    for d in got {
        settle.push(match d.event_id.as_str() {
            "k1" => Settlement::Ack {
                effect: Some(pipeline_core::analytics::Effect {
                    event_id: d.event_id.clone(),
                    event_time: None,
                    increments: vec![pipeline_core::analytics::Increment::new(
                        &pipeline_core::analytics::maps::per_minute(1),
                        "user_signup",
                        1.0,
                    )],
                }),
                delivery: d,
            },
            "k2" => Settlement::Retry {
                delivery: d,
                not_before: std::time::SystemTime::now() + Duration::from_secs(60),
                error: "later".into(),
            },
            _ => Settlement::DeadLetter {
                delivery: d,
                reason: FailureReason::Permanent,
                error: "bad".into(),
            },
        });
    }
    b.settle(settle).await.unwrap();
    b.metrics().await.unwrap();

    let keys = redis_cli(&h.server, &["--scan"]).await;
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    for expected in [
        "{tagged}:stream",
        "{tagged}:retry",
        "{tagged}:dlq",
        "{tagged}:maps",
        "{tagged}:seen:k1",
        "{tagged}:m:counters",
    ] {
        assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
    }
    for k in &keys {
        assert!(k.starts_with("{tagged}:"), "key outside the hash tag: {k}");
    }
    let ttl = redis_cli(&h.server, &["TTL", "{tagged}:m:epm:0000000001"]).await;
    let ttl: i64 = ttl.trim().parse().unwrap();
    assert!(ttl > 0, "per-minute maps expire (TTL {ttl})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_enqueue_leaves_no_mark() {
    let Some(h) = start() else {
        return;
    };
    let b = h.backend("failmark", BackendOptions::default()).await;
    let mark = || Some(DeliveryMark::new("msg_fail", Duration::from_secs(60)).unwrap());
    // The stream key holds a string, so the script's XADD fails half-way.
    redis_cli(&h.server, &["DEL", "{failmark}:stream"]).await;
    redis_cli(&h.server, &["SET", "{failmark}:stream", "not a stream"]).await;
    b.enqueue_delivery(vec![ev("f1")], mark())
        .await
        .expect_err("the XADD fails");
    let exists = redis_cli(&h.server, &["EXISTS", "{failmark}:delivery:msg_fail"]).await;
    assert_eq!(
        exists.trim(),
        "0",
        "a failed enqueue leaves no delivery mark"
    );
    // (The event's own duplicate mark, written before the XADD failed, is cleared too.)
    redis_cli(
        &h.server,
        &["DEL", "{failmark}:stream", "{failmark}:seen:f1"],
    )
    .await;
    assert_eq!(
        b.enqueue_delivery(vec![ev("f1")], mark()).await.unwrap(),
        [EnqueueOutcome::Accepted],
        "the retry of a failed delivery is stored"
    );
    assert_eq!(
        b.enqueue_delivery(vec![ev("f2")], mark()).await.unwrap(),
        [EnqueueOutcome::DuplicateDelivery]
    );
}

/// A rollup bucket's expiry is set by the write that creates it: every bucket expires, the one
/// written once and the one written again by a later batch (which adds a new dimension value
/// and a new user to it) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rollup_bucket_expires_however_often_it_is_written() {
    use pipeline_core::analytics::{maps, Effect, Increment};
    let Some(h) = start() else {
        return;
    };
    let b = h.backend("expiring", BackendOptions::default()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut expiries = Vec::new();
    for (round, (kind, user)) in [("user_signup", "user_a"), ("usage_tracked", "user_b")]
        .into_iter()
        .enumerate()
    {
        b.enqueue(vec![ev(&format!("r{round}"))]).await.unwrap();
        let got = claim_eventually(&b, Duration::from_secs(10)).await;
        let settle = got
            .into_iter()
            .map(|d| Settlement::Ack {
                effect: Some(Effect {
                    event_id: d.event_id.clone(),
                    event_time: Some(now),
                    increments: vec![
                        Increment::new(maps::EVENTS_BY_TYPE, kind, 1.0),
                        Increment::new(maps::USERS, user, 1.0),
                    ],
                }),
                delivery: d,
            })
            .collect();
        b.settle(settle).await.unwrap();
        let keys = redis_cli(&h.server, &["--scan", "--pattern", "{expiring}:m:ru:*"]).await;
        let mut buckets: Vec<String> = keys.lines().map(str::to_string).collect();
        buckets.sort();
        assert!(
            buckets.len() >= 6,
            "minute, hour and day buckets: {buckets:?}"
        );
        let mut round_expiries = Vec::new();
        for k in &buckets {
            let at: i64 = redis_cli(&h.server, &["EXPIRETIME", k])
                .await
                .trim()
                .parse()
                .unwrap();
            assert!(at > now, "{k} expires (EXPIRETIME {at})");
            round_expiries.push((k.clone(), at));
        }
        expiries.push(round_expiries);
    }
    // The second batch found its buckets in place and left their expiry as it was.
    assert_eq!(expiries[0], expiries[1]);
}
