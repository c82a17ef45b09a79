//! The behaviour every backend must show, written once.
//!
//! Each backend's test file provides a [`Harness`] (which owns whatever the backend needs: a
//! temp dir, a redis-server) and invokes `backend_conformance!`, which expands to one
//! `#[tokio::test]` per case below. Cases poll with deadlines instead of sleeping.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use pipeline_core::analytics::bounds::OTHER;
use pipeline_core::analytics::{counters, maps, Bounds, Effect, Increment};
use pipeline_core::backend::*;
use pipeline_core::event::EventId;
use pipeline_core::testkit::wait::eventually;

/// Opens fresh, empty backends for a test. Two `open` calls share nothing unless the backend
/// is meant to be shared (then they see the same queue).
#[async_trait]
pub trait Harness: Send + Sync {
    async fn open(&self, options: BackendOptions) -> Arc<dyn Backend>;
    /// A second handle on the same store as the last `open` (another process, in effect).
    async fn reopen(&self, options: BackendOptions) -> Arc<dyn Backend>;
    /// Whether claims hand out events oldest first across the whole queue; a queue split into
    /// partitions is only ordered within each partition.
    fn fifo(&self) -> bool {
        true
    }
}

/// Expands to one test per conformance case for the harness expression given; with
/// `in_one_test NAME,` to one test running every case in turn on one harness (for servers
/// too costly to start once per case, such as a six-node cluster).
macro_rules! backend_conformance {
    (in_one_test $name:ident, $harness:expr) => {
        backend_conformance!(@list @sequence $name, $harness);
    };
    ($harness:expr) => {
        backend_conformance!(@list @cases $harness);
    };
    (@list $($head:tt)*) => {
        backend_conformance!($($head)*;
            enqueue_accepts_then_reports_duplicates,
            duplicates_inside_one_batch_are_detected,
            concurrent_identical_enqueues_accept_exactly_one,
            idempotency_expires_per_id,
            claim_then_ack_empties_the_queue,
            claim_waits_and_is_woken_by_an_enqueue,
            empty_claim_returns_after_the_wait,
            cancelled_claim_returns_at_once,
            expired_lease_is_delivered_again,
            concurrent_claimers_never_share_an_event,
            retry_is_not_delivered_before_it_is_due,
            dead_letter_list_replay_and_purge,
            effect_is_applied_once_under_redelivery,
            stale_ack_in_a_batch_leaves_the_rest_applied,
            stale_settlement_after_lost_lease_is_ignored,
            stale_ack_never_removes_a_newer_event,
            stale_lease_never_settles_the_current_claim,
            second_handle_sees_the_same_queue,
            metrics_record_and_shape,
            dimension_values_past_the_cap_count_as_other_exactly_once,
            recorded_dimension_values_are_capped_too,
            distinct_users_are_exact_up_to_the_limit_then_estimated,
            top_users_are_exact_below_k_and_bounded_at_k,
            delivery_mark_refuses_the_same_delivery_whole,
            concurrent_deliveries_with_one_mark_store_exactly_one,
            delivery_mark_expires_after_its_ttl,
            oldest_queued_event_counts_in_flight_and_waiting_retries,
            rollups_are_applied_once_under_redelivery,
            a_late_event_lands_in_its_buckets_that_are_still_kept,
            retention_drops_old_buckets,
            bucket_sums_equal_the_totals,
                );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $harness;
                crate::common::conformance::$case(&harness).await;
            }
        )*
    };
    (@sequence $name:ident, $harness:expr; $($case:ident),* $(,)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let harness = $harness;
            $(
                eprintln!("conformance case {}", stringify!($case));
                crate::common::conformance::$case(&harness).await;
            )*
        }
    };
}
pub(crate) use backend_conformance;

fn opts() -> BackendOptions {
    BackendOptions::default()
}

fn ev(id: &str) -> QueuedEvent {
    QueuedEvent {
        event_id: EventId::parse(id).unwrap(),
        payload: format!(
            r#"{{"event_id":"{id}","event_type":"user_signup","timestamp":"2025-12-16T10:00:00Z"}}"#
        ),
    }
}

/// An event stamped `received_at` = `at_ms` (epoch ms), as the webhook stores it.
fn ev_received(id: &str, at_ms: i64) -> QueuedEvent {
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap();
    let received_at = pipeline_core::event::format_received_at(at);
    QueuedEvent {
        event_id: EventId::parse(id).unwrap(),
        payload: format!(
            r#"{{"event_id":"{id}","event_type":"user_signup","timestamp":"2025-12-16T10:00:00Z","received_at":"{received_at}"}}"#
        ),
    }
}

async fn claim(b: &Arc<dyn Backend>, max: usize, wait_ms: u64) -> Vec<Delivery> {
    b.claim_batch(
        "c1",
        max,
        Duration::from_millis(wait_ms),
        &CancellationToken::new(),
    )
    .await
    .unwrap()
}

fn ack(d: Delivery, with_effect: bool) -> Settlement {
    let effect = with_effect.then(|| Effect {
        event_id: d.event_id.clone(),
        event_time: None,
        increments: vec![
            Increment::counter(counters::PROCESSED),
            Increment::new(maps::EVENTS_BY_TYPE, "user_signup", 1.0),
        ],
    });
    Settlement::Ack {
        delivery: d,
        effect,
    }
}

async fn counter(b: &Arc<dyn Backend>, name: &str) -> u64 {
    b.metrics().await.unwrap().counter(name)
}

pub async fn enqueue_accepts_then_reports_duplicates(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let out = b.enqueue(vec![ev("a"), ev("b")]).await.unwrap();
    assert_eq!(out, [EnqueueOutcome::Accepted, EnqueueOutcome::Accepted]);
    let out = b.enqueue(vec![ev("a"), ev("c")]).await.unwrap();
    assert_eq!(out, [EnqueueOutcome::Duplicate, EnqueueOutcome::Accepted]);
    assert_eq!(b.depths().await.unwrap().queue, 3);
    assert_eq!(counter(&b, counters::ACCEPTED).await, 3);
    assert_eq!(counter(&b, counters::DUPLICATES).await, 1);
}

pub async fn duplicates_inside_one_batch_are_detected(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let out = b.enqueue(vec![ev("x"), ev("x"), ev("y")]).await.unwrap();
    assert_eq!(
        out,
        [
            EnqueueOutcome::Accepted,
            EnqueueOutcome::Duplicate,
            EnqueueOutcome::Accepted
        ]
    );
    assert_eq!(b.depths().await.unwrap().queue, 2);
}

pub async fn concurrent_identical_enqueues_accept_exactly_one(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.enqueue(vec![ev("same")]).await.unwrap()[0] })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap() == EnqueueOutcome::Accepted {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1);
    assert_eq!(b.depths().await.unwrap().queue, 1);
}

pub async fn idempotency_expires_per_id(h: &dyn Harness) {
    let b = h
        .open(BackendOptions {
            idempotency_ttl: Duration::from_millis(1500),
            ..opts()
        })
        .await;
    b.enqueue(vec![ev("first")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.enqueue(vec![ev("second")]).await.unwrap();
    // Once "first" is forgotten, "second" (marked 0.7 s later) must still be remembered.
    eventually("first id to expire", Duration::from_secs(10), || {
        let b = b.clone();
        async move {
            (b.enqueue(vec![ev("first")]).await.unwrap()[0] == EnqueueOutcome::Accepted)
                .then_some(())
        }
    })
    .await;
    let out = b.enqueue(vec![ev("second")]).await.unwrap();
    assert_eq!(
        out,
        [EnqueueOutcome::Duplicate],
        "TTL must be per id, not per set"
    );
}

pub async fn claim_then_ack_empties_the_queue(h: &dyn Harness) {
    let b = h.open(opts()).await;
    b.enqueue(vec![ev("a"), ev("b"), ev("c")]).await.unwrap();
    let got = claim(&b, 2, 0).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|d| d.attempt == 1));
    let ids: HashSet<_> = got.iter().map(|d| d.event_id.to_string()).collect();
    if h.fifo() {
        assert_eq!(
            ids,
            HashSet::from(["a".to_string(), "b".to_string()]),
            "oldest first"
        );
    }
    assert!(got[0].payload.contains(r#""event_id":"#));
    b.settle(got.into_iter().map(|d| ack(d, true)).collect())
        .await
        .unwrap();
    assert_eq!(b.depths().await.unwrap().queue, 1);
    let rest = claim(&b, 10, 0).await;
    assert_eq!(rest.len(), 1);
    b.settle(rest.into_iter().map(|d| ack(d, true)).collect())
        .await
        .unwrap();
    assert_eq!(
        b.depths().await.unwrap(),
        Depths {
            queue: 0,
            dlq: 0,
            oldest_at: None
        }
    );
    assert_eq!(counter(&b, counters::PROCESSED).await, 3);
}

pub async fn claim_waits_and_is_woken_by_an_enqueue(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.claim_batch("c1", 10, Duration::from_secs(20), &CancellationToken::new())
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.enqueue(vec![ev("wake")]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("claim must return well before its 20 s wait once an event arrives")
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id.as_str(), "wake");
}

pub async fn empty_claim_returns_after_the_wait(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let got = tokio::time::timeout(Duration::from_secs(10), claim(&b, 10, 200))
        .await
        .expect("an empty claim must give up after its wait");
    assert!(got.is_empty());
}

pub async fn cancelled_claim_returns_at_once(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let cancel = CancellationToken::new();
    let waiter = {
        let (b, cancel) = (b.clone(), cancel.clone());
        tokio::spawn(async move {
            b.claim_batch("c1", 10, Duration::from_secs(60), &cancel)
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    cancel.cancel();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("cancellation must end the wait")
        .unwrap();
    assert!(got.is_empty());
}

pub async fn expired_lease_is_delivered_again(h: &dyn Harness) {
    let b = h
        .open(BackendOptions {
            visibility_timeout: Duration::from_millis(500),
            ..opts()
        })
        .await;
    b.enqueue(vec![ev("crashy")]).await.unwrap();
    let first = claim(&b, 10, 0).await;
    assert_eq!(first.len(), 1);
    assert!(
        claim(&b, 10, 0).await.is_empty(),
        "leased events are invisible"
    );
    // The claimer "crashed": never settles. The event must come back.
    let again = eventually(
        "redelivery after the lease",
        Duration::from_secs(10),
        || {
            let b = b.clone();
            async move {
                let got = claim(&b, 10, 100).await;
                (!got.is_empty()).then_some(got)
            }
        },
    )
    .await;
    assert_eq!(again[0].event_id.as_str(), "crashy");
    assert_eq!(again[0].attempt, 1, "a lost lease is not a failed attempt");
    b.settle(again.into_iter().map(|d| ack(d, true)).collect())
        .await
        .unwrap();
    assert_eq!(b.depths().await.unwrap().queue, 0);
}

pub async fn concurrent_claimers_never_share_an_event(h: &dyn Harness) {
    // Two handles, as two consumer processes would have, two claimers on each.
    let b = h.open(opts()).await;
    let other = h.reopen(opts()).await;
    let events: Vec<_> = (0..200).map(|i| ev(&format!("e{i}"))).collect();
    b.enqueue(events).await.unwrap();
    let claimers: Vec<_> = (0..4)
        .map(|n| {
            let b = if n % 2 == 0 { b.clone() } else { other.clone() };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                loop {
                    let got = b
                        .claim_batch(
                            &format!("c{n}"),
                            7,
                            Duration::ZERO,
                            &CancellationToken::new(),
                        )
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return seen;
                    }
                    seen.extend(got.iter().map(|d| d.event_id.to_string()));
                    b.settle(got.into_iter().map(|d| ack(d, true)).collect())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 200, "every event delivered exactly once");
    assert_eq!(unique.len(), 200);
    assert_eq!(counter(&b, counters::PROCESSED).await, 200);
}

pub async fn retry_is_not_delivered_before_it_is_due(h: &dyn Harness) {
    let b = h.open(opts()).await;
    b.enqueue(vec![ev("flaky"), ev("fine")]).await.unwrap();
    let got = claim(&b, 10, 0).await;
    assert_eq!(got.len(), 2);
    let due = SystemTime::now() + Duration::from_millis(800);
    let mut settle = Vec::new();
    for d in got {
        if d.event_id.as_str() == "flaky" {
            settle.push(Settlement::Retry {
                delivery: d,
                not_before: due,
                error: "boom".into(),
            });
        } else {
            settle.push(ack(d, true));
        }
    }
    b.settle(settle).await.unwrap();
    assert_eq!(
        b.depths().await.unwrap().queue,
        1,
        "a waiting retry still counts as queued"
    );
    assert!(claim(&b, 10, 0).await.is_empty(), "not before it is due");
    let again = claim(&b, 10, 10_000).await;
    assert!(SystemTime::now() >= due, "delivered only once due");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_id.as_str(), "flaky");
    assert_eq!(again[0].attempt, 2);
    assert_eq!(counter(&b, counters::FAILED).await, 1);
    assert_eq!(counter(&b, counters::RETRIED).await, 1);
}

pub async fn dead_letter_list_replay_and_purge(h: &dyn Harness) {
    let b = h.open(opts()).await;
    b.enqueue(vec![ev("bad1"), ev("bad2"), ev("bad3")])
        .await
        .unwrap();
    let got = claim(&b, 10, 0).await;
    b.settle(
        got.into_iter()
            .map(|d| Settlement::DeadLetter {
                delivery: Delivery { attempt: 4, ..d },
                reason: FailureReason::MaxRetriesExceeded,
                error: "handler failed".into(),
            })
            .collect(),
    )
    .await
    .unwrap();
    assert_eq!(
        b.depths().await.unwrap(),
        Depths {
            queue: 0,
            dlq: 3,
            oldest_at: None
        }
    );
    let list = b.dlq_list(10, 0).await.unwrap();
    assert_eq!(list.len(), 3);
    let first = &list[0];
    assert_eq!(first.event_id.as_str(), "bad1");
    assert_eq!(first.failure_reason, "max_retries_exceeded");
    assert_eq!(first.error, "handler failed");
    assert_eq!(first.attempts, 4);
    assert_eq!(first.event["event_id"], "bad1");
    assert!(first.failed_at.ends_with('Z'));
    assert_eq!(b.dlq_list(10, 2).await.unwrap().len(), 1, "offset applies");
    assert_eq!(counter(&b, counters::DEAD_LETTERED).await, 3);

    let n = b
        .dlq_replay(DlqSelection::Ids(vec![EventId::parse("bad2").unwrap()]))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        b.depths().await.unwrap(),
        Depths {
            queue: 1,
            dlq: 2,
            oldest_at: None
        }
    );
    let back = claim(&b, 10, 0).await;
    assert_eq!(back[0].event_id.as_str(), "bad2");
    assert_eq!(back[0].attempt, 1, "replay resets attempts");

    assert_eq!(b.dlq_purge().await.unwrap(), 2);
    assert_eq!(b.depths().await.unwrap().dlq, 0);
    assert_eq!(b.dlq_replay(DlqSelection::All).await.unwrap(), 0);
}

/// A backend with a 300 ms lease and one event `id` delivered twice: the first lease ran out
/// before a second claim got the event. Returns the backend, the stale delivery and the
/// current one.
async fn lost_lease(h: &dyn Harness, id: &str) -> (Arc<dyn Backend>, Delivery, Delivery) {
    let b = h
        .open(BackendOptions {
            visibility_timeout: Duration::from_millis(300),
            ..opts()
        })
        .await;
    b.enqueue(vec![ev(id)]).await.unwrap();
    let stale = claim(&b, 1, 0).await.remove(0);
    let current = eventually("redelivery", Duration::from_secs(10), || {
        let b = b.clone();
        async move { claim(&b, 1, 100).await.pop() }
    })
    .await;
    (b, stale, current)
}

pub async fn effect_is_applied_once_under_redelivery(h: &dyn Harness) {
    // The slow consumer's lease runs out; a second consumer gets the same event and applies it.
    let (b, slow, fast) = lost_lease(h, "once").await;
    b.settle(vec![ack(fast, true)]).await.unwrap();
    // The slow consumer finally acks too: must not apply again.
    b.settle(vec![ack(slow, true)]).await.unwrap();
    let m = b.metrics().await.unwrap();
    assert_eq!(m.counter(counters::PROCESSED), 1);
    assert_eq!(m.map(maps::EVENTS_BY_TYPE)["user_signup"], 1.0);
    assert_eq!(b.depths().await.unwrap().queue, 0);
}

/// One batch mixing a stale ack (its event was applied meanwhile by another consumer) with
/// current ones: the current events are applied and acked, the stale one not applied again.
pub async fn stale_ack_in_a_batch_leaves_the_rest_applied(h: &dyn Harness) {
    let (b, slow, fast) = lost_lease(h, "first").await;
    b.settle(vec![ack(fast, true)]).await.unwrap();
    b.enqueue(vec![ev("second"), ev("third")]).await.unwrap();
    let mut batch = vec![ack(slow, true)];
    batch.extend(claim(&b, 2, 0).await.into_iter().map(|d| ack(d, true)));
    assert_eq!(batch.len(), 3);
    b.settle(batch).await.unwrap();
    let m = b.metrics().await.unwrap();
    assert_eq!(m.counter(counters::PROCESSED), 3);
    assert_eq!(m.map(maps::EVENTS_BY_TYPE)["user_signup"], 3.0);
    assert_eq!(b.depths().await.unwrap().queue, 0);
}

pub async fn stale_settlement_after_lost_lease_is_ignored(h: &dyn Harness) {
    let (b, stale, current) = lost_lease(h, "contested").await;
    b.settle(vec![Settlement::DeadLetter {
        delivery: stale,
        reason: FailureReason::Permanent,
        error: "stale".into(),
    }])
    .await
    .unwrap();
    assert_eq!(
        b.depths().await.unwrap().dlq,
        0,
        "the old lease no longer owns it"
    );
    b.settle(vec![ack(current, true)]).await.unwrap();
    assert_eq!(
        b.depths().await.unwrap(),
        Depths {
            queue: 0,
            dlq: 0,
            oldest_at: None
        }
    );
}

/// A consumer whose lease ran out acks late, after the event was redelivered, acked, and a
/// new event was enqueued: the late ack must remove nothing but its own lease (a store that
/// reuses row ids once the newest row is gone would otherwise drop the new event unapplied).
pub async fn stale_ack_never_removes_a_newer_event(h: &dyn Harness) {
    let (b, slow, fast) = lost_lease(h, "first").await;
    b.settle(vec![ack(fast, true)]).await.unwrap();
    b.enqueue(vec![ev("second")]).await.unwrap();
    b.settle(vec![ack(slow, true)]).await.unwrap();
    assert_eq!(
        b.depths().await.unwrap().queue,
        1,
        "the late ack removed the newer event"
    );
    let next = claim(&b, 10, 1000).await;
    let ids: Vec<&str> = next.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids, ["second"]);
    assert_eq!(counter(&b, counters::PROCESSED).await, 1);
}

/// A lease that ran out while the event was claimed again can neither ack, retry nor
/// dead-letter it, and neither can a lease no claim of this backend made: the current
/// holder's claim stays untouched until it settles it.
pub async fn stale_lease_never_settles_the_current_claim(h: &dyn Harness) {
    let (b, stale, current) = lost_lease(h, "contested").await;
    let foreign = Delivery {
        lease: match current.lease {
            Lease::Memory { .. } => Lease::Sqlite { row: 1, token: 1 },
            _ => Lease::Memory { key: 0, token: 1 },
        },
        ..current.clone()
    };
    for old in [stale, foreign] {
        b.settle(vec![
            ack(old.clone(), true),
            Settlement::Retry {
                delivery: old.clone(),
                not_before: SystemTime::now(),
                error: "stale".into(),
            },
            Settlement::DeadLetter {
                delivery: old,
                reason: FailureReason::Permanent,
                error: "stale".into(),
            },
        ])
        .await
        .unwrap();
        assert_eq!(
            b.depths().await.unwrap(),
            Depths {
                queue: 1,
                dlq: 0,
                oldest_at: None
            }
        );
        let m = b.metrics().await.unwrap();
        assert_eq!(
            m.counter(counters::PROCESSED),
            0,
            "a stale ack applied its effect"
        );
        assert_eq!(
            m.counter(counters::FAILED),
            0,
            "a stale failure was counted"
        );
    }
    b.settle(vec![ack(current, true)]).await.unwrap();
    assert_eq!(
        b.depths().await.unwrap(),
        Depths {
            queue: 0,
            dlq: 0,
            oldest_at: None
        }
    );
    assert_eq!(counter(&b, counters::PROCESSED).await, 1);
}

pub async fn second_handle_sees_the_same_queue(h: &dyn Harness) {
    let a = h.open(opts()).await;
    let b = h.reopen(opts()).await;
    a.enqueue(vec![ev("shared")]).await.unwrap();
    assert_eq!(
        b.enqueue(vec![ev("shared")]).await.unwrap(),
        [EnqueueOutcome::Duplicate]
    );
    let got = b
        .claim_batch("c2", 10, Duration::from_secs(10), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    b.settle(got.into_iter().map(|d| ack(d, true)).collect())
        .await
        .unwrap();
    assert_eq!(counter(&a, counters::PROCESSED).await, 1);
}

pub async fn metrics_record_and_shape(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let mut incs = vec![
        Increment::counter(counters::RECEIVED),
        Increment::counter(counters::RECEIVED),
        Increment::new(maps::MRR_BY_PLAN, "pro", 9.5),
        Increment::latency(maps::LATENCY_INGEST, 250),
    ];
    for u in 0..15 {
        incs.push(Increment::new(maps::USERS, format!("u{u}"), 1.0));
        incs.push(Increment::new(
            maps::USAGE_BY_USER,
            format!("u{u}"),
            u as f64,
        ));
    }
    b.record(incs).await.unwrap();
    let m = b.metrics().await.unwrap();
    assert_eq!(m.counter(counters::RECEIVED), 2);
    assert_eq!(m.map(maps::MRR_BY_PLAN)["pro"], 9.5);
    assert_eq!(m.distinct_users, 15);
    assert!(!m.maps.contains_key(maps::USERS));
    assert_eq!(m.top_users.len(), pipeline_core::analytics::TOP_USERS);
    assert_eq!(m.top_users[0], ("u14".to_string(), 14.0));
    assert_eq!(
        pipeline_core::latency::percentiles(&m.map(maps::LATENCY_INGEST)).count,
        1
    );
}

/// Harness for the memory backend: `reopen` returns the same instance (one process).
pub struct MemoryHarness {
    last: std::sync::Mutex<Option<Arc<dyn Backend>>>,
}

impl MemoryHarness {
    pub fn new() -> Self {
        MemoryHarness {
            last: std::sync::Mutex::new(None),
        }
    }
}

impl Default for MemoryHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn open(&self, options: BackendOptions) -> Arc<dyn Backend> {
        let b: Arc<dyn Backend> =
            Arc::new(pipeline_core::backend::memory::MemoryBackend::new(options));
        *self.last.lock().unwrap() = Some(b.clone());
        b
    }

    async fn reopen(&self, options: BackendOptions) -> Arc<dyn Backend> {
        match self.last.lock().unwrap().clone() {
            Some(b) => b,
            None => Arc::new(pipeline_core::backend::memory::MemoryBackend::new(options)),
        }
    }
}

/// Options with the analytics bounds `bounds` and a short lease.
fn bounded(bounds: Bounds) -> BackendOptions {
    BackendOptions {
        visibility_timeout: Duration::from_millis(300),
        bounds,
        ..opts()
    }
}

fn cap(n: usize) -> Bounds {
    Bounds {
        max_dimension_values: n,
        ..Bounds::default()
    }
}

/// Claims until `n` deliveries were collected.
async fn claim_n(b: &Arc<dyn Backend>, n: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "only {} of {n} delivered",
            got.len()
        );
        got.extend(claim(b, n - got.len(), 100).await);
    }
    got
}

/// The effect of a signup from `source` that also buys `plan` for `mrr`.
fn dimension_effect(d: &Delivery, source: &str, plan: &str, mrr: f64) -> Effect {
    Effect {
        event_id: d.event_id.clone(),
        event_time: None,
        increments: vec![
            Increment::counter(counters::PROCESSED),
            Increment::new(maps::SIGNUPS_BY_SOURCE, source, 1.0),
            Increment::new(maps::SUBSCRIPTIONS_BY_PLAN, plan, 1.0),
            Increment::new(maps::MRR_BY_PLAN, plan, mrr),
            Increment::new(&maps::per_minute(7), format!("type_{source}"), 1.0),
        ],
    }
}

fn sum(m: &std::collections::BTreeMap<String, f64>) -> f64 {
    m.values().sum()
}

pub async fn dimension_values_past_the_cap_count_as_other_exactly_once(h: &dyn Harness) {
    let b = h.open(bounded(cap(3))).await;
    let ids: Vec<String> = (1..=5).map(|i| format!("dim{i}")).collect();
    b.enqueue(ids.iter().map(|id| ev(id)).collect())
        .await
        .unwrap();
    // The first claim's lease runs out; the same five are delivered again.
    let stale = claim_n(&b, 5).await;
    let current = claim_n(&b, 5).await;
    let settle = |ds: Vec<Delivery>| {
        ds.into_iter()
            .map(|d| {
                let i: usize = d.event_id.as_str()[3..].parse().unwrap();
                let effect =
                    dimension_effect(&d, &format!("s{i}"), &format!("p{i}"), i as f64 * 10.0);
                Settlement::Ack {
                    delivery: d,
                    effect: Some(effect),
                }
            })
            .collect::<Vec<_>>()
    };
    b.settle(settle(current)).await.unwrap();
    // The batch settled again under the lost lease changes nothing.
    b.settle(settle(stale)).await.unwrap();

    // An existing value keeps its name past the cap; a new one is "other".
    b.enqueue(vec![ev("dim1b"), ev("dim6")]).await.unwrap();
    let late = claim_n(&b, 2).await;
    let late: Vec<Settlement> = late
        .into_iter()
        .map(|d| {
            let (source, plan, mrr) = if d.event_id.as_str() == "dim1b" {
                ("s1", "p1", 1.0)
            } else {
                ("s6", "p6", 60.0)
            };
            let effect = dimension_effect(&d, source, plan, mrr);
            Settlement::Ack {
                delivery: d,
                effect: Some(effect),
            }
        })
        .collect();
    b.settle(late).await.unwrap();

    let m = b.metrics().await.unwrap();
    assert_eq!(m.counter(counters::PROCESSED), 7);
    let by_source = m.map(maps::SIGNUPS_BY_SOURCE);
    let expected: std::collections::BTreeMap<String, f64> =
        [("s1", 2.0), ("s2", 1.0), ("s3", 1.0), (OTHER, 3.0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(by_source, expected);
    let plans = m.map(maps::SUBSCRIPTIONS_BY_PLAN);
    let mrr = m.map(maps::MRR_BY_PLAN);
    assert_eq!(
        plans.keys().collect::<Vec<_>>(),
        mrr.keys().collect::<Vec<_>>(),
        "plans and their MRR agree on which plans are other"
    );
    assert_eq!(sum(&plans), 7.0);
    assert_eq!(sum(&mrr), 10.0 + 20.0 + 30.0 + 40.0 + 50.0 + 1.0 + 60.0);
    assert_eq!(mrr[OTHER], 40.0 + 50.0 + 60.0);
    let minute = m.map(&maps::per_minute(7));
    assert_eq!(minute.len(), 4, "per-minute maps are capped: {minute:?}");
    assert_eq!(sum(&minute), 7.0);
}

pub async fn recorded_dimension_values_are_capped_too(h: &dyn Harness) {
    let b = h.open(bounded(cap(3))).await;
    let mut incs: Vec<Increment> = (0..5)
        .map(|i| Increment::new(maps::SIGNUPS_BY_COUNTRY, format!("c{i}"), 1.0))
        .collect();
    // Known event types are always counted by name, however many junk types came first.
    incs.extend((0..5).map(|i| Increment::new(maps::EVENTS_BY_TYPE, format!("junk{i}"), 1.0)));
    b.record(incs).await.unwrap();
    b.record(vec![
        Increment::new(maps::EVENTS_BY_TYPE, "user_signup", 2.0),
        Increment::new(maps::LATENCY_INGEST, "1", 1.0),
        Increment::new(maps::LATENCY_INGEST, "2", 1.0),
        Increment::new(maps::LATENCY_INGEST, "3", 1.0),
        Increment::new(maps::LATENCY_INGEST, "4", 1.0),
    ])
    .await
    .unwrap();
    let m = b.metrics().await.unwrap();
    let countries = m.map(maps::SIGNUPS_BY_COUNTRY);
    assert_eq!(countries.len(), 4, "{countries:?}");
    assert_eq!(countries[OTHER], 2.0);
    assert_eq!(sum(&countries), 5.0);
    let types = m.map(maps::EVENTS_BY_TYPE);
    assert_eq!(types["user_signup"], 2.0);
    assert_eq!(types[OTHER], 2.0);
    assert_eq!(sum(&types), 7.0);
    assert_eq!(
        m.map(maps::LATENCY_INGEST).len(),
        4,
        "histograms are not capped"
    );
}

pub async fn distinct_users_are_exact_up_to_the_limit_then_estimated(h: &dyn Harness) {
    let b = h
        .open(bounded(Bounds {
            exact_distinct_users: 100,
            ..Bounds::default()
        }))
        .await;
    let users = |range: std::ops::Range<usize>| {
        range
            .map(|u| Increment::new(maps::USERS, format!("user_{u}"), 1.0))
            .collect::<Vec<_>>()
    };
    b.record(users(0..60)).await.unwrap();
    b.record(users(30..100)).await.unwrap();
    assert_eq!(b.metrics().await.unwrap().distinct_users, 100);
    b.record(users(0..100)).await.unwrap();
    assert_eq!(b.metrics().await.unwrap().distinct_users, 100);
    // One more user through a settle: past the exact set, the count is an estimate.
    b.enqueue(vec![ev("user-event")]).await.unwrap();
    let d = claim_n(&b, 1).await.remove(0);
    let effect = Effect {
        event_id: d.event_id.clone(),
        event_time: None,
        increments: vec![Increment::new(maps::USERS, "user_100", 1.0)],
    };
    b.settle(vec![Settlement::Ack {
        delivery: d,
        effect: Some(effect),
    }])
    .await
    .unwrap();
    let n = b.metrics().await.unwrap().distinct_users;
    assert!((100..=104).contains(&n), "101 users counted as {n}");
    for from in (101..5_000).step_by(500) {
        b.record(users(from..(from + 500).min(5_000)))
            .await
            .unwrap();
    }
    let n = b.metrics().await.unwrap().distinct_users as f64;
    assert!(
        (n - 5_000.0).abs() / 5_000.0 < 0.03,
        "5,000 users estimated as {n}"
    );
}

pub async fn top_users_are_exact_below_k_and_bounded_at_k(h: &dyn Harness) {
    let b = h
        .open(bounded(Bounds {
            top_users_tracked: 5,
            ..Bounds::default()
        }))
        .await;
    let usage = |user: &str, q: f64| vec![Increment::new(maps::USAGE_BY_USER, user, q)];
    for (u, q) in [("u1", 10.0), ("u2", 20.0), ("u3", 30.0), ("u4", 40.0)] {
        b.record(usage(u, q)).await.unwrap();
    }
    b.record(usage("u2", 1.0)).await.unwrap();
    let top = b.metrics().await.unwrap().top_users;
    let owned = |v: &[(&str, f64)]| {
        v.iter()
            .map(|(u, q)| (u.to_string(), *q))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        top,
        owned(&[("u4", 40.0), ("u3", 30.0), ("u2", 21.0), ("u1", 10.0)]),
        "exact below K"
    );
    b.record(usage("u5", 5.0)).await.unwrap();
    // Full: a new user replaces the smallest (u5, 5) and inherits its count.
    b.record(usage("u6", 1.0)).await.unwrap();
    b.record(usage("u4", 2.0)).await.unwrap();
    let top = b.metrics().await.unwrap().top_users;
    assert_eq!(
        top,
        owned(&[
            ("u4", 42.0),
            ("u3", 30.0),
            ("u2", 21.0),
            ("u1", 10.0),
            ("u6", 6.0)
        ]),
        "bounded at K"
    );
}

fn mark(id: &str, ttl: Duration) -> Option<DeliveryMark> {
    Some(DeliveryMark::new(id, ttl).unwrap())
}

pub async fn delivery_mark_refuses_the_same_delivery_whole(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let minute = Duration::from_secs(60);
    let out = b
        .enqueue_delivery(vec![ev("d1"), ev("d2")], mark("msg_1", minute))
        .await
        .unwrap();
    assert_eq!(out, [EnqueueOutcome::Accepted, EnqueueOutcome::Accepted]);
    // The same delivery id with other events: nothing of it is stored or marked.
    let out = b
        .enqueue_delivery(vec![ev("d3"), ev("d1")], mark("msg_1", minute))
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            EnqueueOutcome::DuplicateDelivery,
            EnqueueOutcome::DuplicateDelivery
        ]
    );
    assert_eq!(b.depths().await.unwrap().queue, 2);
    assert_eq!(counter(&b, counters::ACCEPTED).await, 2);
    assert_eq!(counter(&b, counters::DUPLICATES).await, 2);
    // "d3" was not marked seen by the refused delivery; another delivery id is independent.
    let out = b
        .enqueue_delivery(vec![ev("d3")], mark("msg_2", minute))
        .await
        .unwrap();
    assert_eq!(out, [EnqueueOutcome::Accepted]);
    // Unmarked enqueues are unaffected by delivery marks.
    assert_eq!(
        b.enqueue(vec![ev("d4")]).await.unwrap(),
        [EnqueueOutcome::Accepted]
    );
    // A mark is a delivery id, never an event id.
    assert_eq!(
        b.enqueue_delivery(vec![ev("msg_1")], None).await.unwrap(),
        [EnqueueOutcome::Accepted]
    );
    // An empty call marks nothing.
    assert!(b
        .enqueue_delivery(Vec::new(), mark("msg_empty", minute))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        b.enqueue_delivery(vec![ev("d5")], mark("msg_empty", minute))
            .await
            .unwrap(),
        [EnqueueOutcome::Accepted]
    );
}

pub async fn concurrent_deliveries_with_one_mark_store_exactly_one(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                let events = vec![ev(&format!("c{i}")), ev(&format!("c{i}_b"))];
                b.enqueue_delivery(events, mark("msg_same", Duration::from_secs(60)))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        let out = t.await.unwrap();
        if out == [EnqueueOutcome::Accepted, EnqueueOutcome::Accepted] {
            stored += 1;
        } else {
            assert_eq!(
                out,
                [
                    EnqueueOutcome::DuplicateDelivery,
                    EnqueueOutcome::DuplicateDelivery
                ]
            );
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(b.depths().await.unwrap().queue, 2);
    assert_eq!(counter(&b, counters::DUPLICATES).await, 58);
}

pub async fn delivery_mark_expires_after_its_ttl(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let ttl = Duration::from_millis(300);
    let out = b
        .enqueue_delivery(vec![ev("t1")], mark("msg_ttl", ttl))
        .await
        .unwrap();
    assert_eq!(out, [EnqueueOutcome::Accepted]);
    let out = b
        .enqueue_delivery(vec![ev("t2")], mark("msg_ttl", ttl))
        .await
        .unwrap();
    assert_eq!(out, [EnqueueOutcome::DuplicateDelivery]);
    eventually("delivery mark to expire", Duration::from_secs(10), || {
        let b = b.clone();
        async move {
            let out = b
                .enqueue_delivery(vec![ev("t2")], mark("msg_ttl", ttl))
                .await
                .unwrap();
            (out == [EnqueueOutcome::Accepted]).then_some(())
        }
    })
    .await;
}

/// `Depths::oldest_at` is the `received_at` of the oldest event not yet applied: queued, in
/// flight or waiting for a retry; `None` once everything is applied.
pub async fn oldest_queued_event_counts_in_flight_and_waiting_retries(h: &dyn Harness) {
    let b = h.open(opts()).await;
    assert_eq!(b.depths().await.unwrap().oldest_at, None, "empty queue");
    let (t1, t2) = (1_765_879_200_123, 1_765_879_260_456);
    b.enqueue(vec![ev_received("old", t1), ev_received("new", t2)])
        .await
        .unwrap();
    assert_eq!(b.depths().await.unwrap().oldest_at, Some(t1));
    // Claim until "old" is in hand (a partitioned queue may hand out "new" first).
    let mut got = claim(&b, 1, 0).await;
    let mut new_in_hand = None;
    if got[0].event_id.as_str() != "old" {
        assert!(!h.fifo(), "oldest first");
        new_in_hand = Some(std::mem::replace(&mut got, claim(&b, 1, 0).await));
        assert_eq!(got[0].event_id.as_str(), "old");
    }
    assert_eq!(b.depths().await.unwrap().oldest_at, Some(t1), "in flight");
    let due = SystemTime::now() + Duration::from_millis(300);
    let first = got.into_iter().next().unwrap();
    b.settle(vec![Settlement::Retry {
        delivery: first,
        not_before: due,
        error: "boom".into(),
    }])
    .await
    .unwrap();
    assert_eq!(
        b.depths().await.unwrap().oldest_at,
        Some(t1),
        "waiting retry"
    );
    let rest = match new_in_hand {
        Some(new) => new,
        None => claim(&b, 10, 0).await,
    };
    assert_eq!(rest.len(), 1);
    b.settle(rest.into_iter().map(|d| ack(d, false)).collect())
        .await
        .unwrap();
    assert_eq!(
        b.depths().await.unwrap().oldest_at,
        Some(t1),
        "the retry is left"
    );
    let again = claim(&b, 10, 10_000).await;
    assert_eq!(again.len(), 1);
    b.settle(again.into_iter().map(|d| ack(d, false)).collect())
        .await
        .unwrap();
    assert_eq!(b.depths().await.unwrap(), Depths::default(), "all applied");
}

// ---- Rollups (event-time buckets) ----

use pipeline_core::analytics::hll::Hll;
use pipeline_core::analytics::rollup::{self, Buckets, Granularity};

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An event of `event_type` at unix second `at`, with the metadata the analytics read.
fn ev_at(id: &str, event_type: &str, at: i64, user: &str, meta: &str) -> QueuedEvent {
    let ts = chrono::DateTime::from_timestamp(at, 0)
        .unwrap()
        .to_rfc3339();
    QueuedEvent {
        event_id: EventId::parse(id).unwrap(),
        payload: format!(
            r#"{{"event_id":"{id}","event_type":"{event_type}","user_id":"{user}","timestamp":"{ts}","metadata":{meta}}}"#
        ),
    }
}

/// Acks a delivery with the real analytics effect of its payload.
fn ack_real(d: Delivery) -> Settlement {
    let event = pipeline_core::event::Event::from_slice(d.payload.as_bytes()).unwrap();
    let effect = Some(pipeline_core::analytics::effect_of(
        &event,
        chrono::Utc::now(),
    ));
    Settlement::Ack {
        delivery: d,
        effect,
    }
}

/// Every bucket of `aggregate` at `g` around now (the last 400 days, the next one).
async fn buckets(b: &Arc<dyn Backend>, aggregate: &str, g: Granularity) -> Buckets {
    let now = unix_now();
    b.rollups(aggregate, g, now - 400 * 86_400, now + 86_400)
        .await
        .unwrap()
}

fn bucket_total(buckets: &Buckets) -> f64 {
    buckets.values().flat_map(|b| b.values()).sum()
}

pub async fn rollups_are_applied_once_under_redelivery(h: &dyn Harness) {
    let b = h
        .open(BackendOptions {
            visibility_timeout: Duration::from_millis(300),
            ..opts()
        })
        .await;
    let at = unix_now() - 3_600;
    b.enqueue(vec![ev_at(
        "r1",
        "user_signup",
        at,
        "u1",
        r#"{"source":"ads"}"#,
    )])
    .await
    .unwrap();
    let slow = claim(&b, 1, 0).await.remove(0);
    let fast = eventually("redelivery", Duration::from_secs(10), || {
        let b = b.clone();
        async move { claim(&b, 1, 100).await.pop() }
    })
    .await;
    b.settle(vec![ack_real(fast)]).await.unwrap();
    b.settle(vec![ack_real(slow)]).await.unwrap();
    for g in Granularity::ALL {
        let got = buckets(&b, maps::SIGNUPS_BY_SOURCE, g).await;
        let start = g.bucket_start(at);
        assert_eq!(got.len(), 1, "{g:?}: {got:?}");
        assert_eq!(got[&start]["ads"], 1.0, "{g:?}");
    }
}

pub async fn a_late_event_lands_in_its_buckets_that_are_still_kept(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let now = unix_now();
    // Three days late: past the minute retention (48 h), within the hour one (90 days).
    let three_days = now - 3 * 86_400 - 1_234;
    // A year late: only the day buckets (3650 days) still keep it.
    let a_year = now - 365 * 86_400;
    let two_hours = now - 7_200;
    b.enqueue(vec![
        ev_at("late3d", "page_view", three_days, "u1", "{}"),
        ev_at("late1y", "page_view", a_year, "u2", "{}"),
        ev_at("late2h", "page_view", two_hours, "u3", "{}"),
    ])
    .await
    .unwrap();
    let got = claim_n(&b, 3).await;
    b.settle(got.into_iter().map(ack_real).collect())
        .await
        .unwrap();
    let m = b.metrics().await.unwrap();
    assert_eq!(
        m.map(maps::EVENTS_BY_TYPE)["page_view"],
        3.0,
        "totals count all"
    );
    let minutes = buckets(&b, maps::EVENTS_BY_TYPE, Granularity::Minute).await;
    assert_eq!(
        minutes.keys().copied().collect::<Vec<_>>(),
        [Granularity::Minute.bucket_start(two_hours)]
    );
    let hours = buckets(&b, maps::EVENTS_BY_TYPE, Granularity::Hour).await;
    assert_eq!(
        hours.keys().copied().collect::<Vec<_>>(),
        [three_days, two_hours].map(|t| Granularity::Hour.bucket_start(t))
    );
    let days = buckets(&b, maps::EVENTS_BY_TYPE, Granularity::Day).await;
    assert_eq!(bucket_total(&days), 3.0);
    assert_eq!(
        days[&Granularity::Day.bucket_start(a_year)]["page_view"],
        1.0
    );
    let users = buckets(&b, rollup::ACTIVE_USERS, Granularity::Hour).await;
    assert_eq!(users.len(), 2, "one register set per hour bucket");
}

pub async fn retention_drops_old_buckets(h: &dyn Harness) {
    // A minute retention chosen so that one old minute bucket expires a few seconds after it
    // was written; on a slow backend (a cluster) the attempt is repeated with a longer margin.
    let mut margin = 8;
    let (b, start) = loop {
        let now = unix_now();
        let start = Granularity::Minute.bucket_start(now - 7_200);
        let bounds = Bounds {
            rollup_retention: rollup::Retention {
                minute_seconds: now + margin - start - 60,
                ..rollup::Retention::default()
            },
            ..Bounds::default()
        };
        let b = h.open(bounded(bounds)).await;
        let id = format!("old-{margin}");
        b.enqueue(vec![ev_at(&id, "page_view", start + 1, "u1", "{}")])
            .await
            .unwrap();
        let got = claim_n(&b, 1).await;
        b.settle(got.into_iter().map(ack_real).collect())
            .await
            .unwrap();
        let kept = buckets(&b, maps::EVENTS_BY_TYPE, Granularity::Minute).await;
        if kept.len() == 1 {
            break (b, start);
        }
        assert!(
            margin < 300,
            "the bucket was never seen before its retention ended"
        );
        margin *= 3;
    };
    let deadline = Duration::from_secs(margin as u64 + 30);
    eventually("the minute bucket to go", deadline, || {
        let b = b.clone();
        async move {
            buckets(&b, maps::EVENTS_BY_TYPE, Granularity::Minute)
                .await
                .is_empty()
                .then_some(())
        }
    })
    .await;
    // A later write to the forgotten bucket does not bring it back; coarser ones still count.
    b.enqueue(vec![ev_at("old2", "page_view", start + 2, "u1", "{}")])
        .await
        .unwrap();
    let got = claim_n(&b, 1).await;
    b.settle(got.into_iter().map(ack_real).collect())
        .await
        .unwrap();
    assert!(buckets(&b, maps::EVENTS_BY_TYPE, Granularity::Minute)
        .await
        .is_empty());
    let hours = buckets(&b, maps::EVENTS_BY_TYPE, Granularity::Hour).await;
    assert_eq!(bucket_total(&hours), 2.0);
}

pub async fn bucket_sums_equal_the_totals(h: &dyn Harness) {
    let b = h.open(opts()).await;
    let now = unix_now();
    let mut events = Vec::new();
    for i in 0..240i64 {
        let at = now - (i * 3_607) % (10 * 86_400);
        let user = format!("u{}", i % 37);
        let id = format!("sum{i}");
        events.push(match i % 3 {
            0 => ev_at(
                &id,
                "user_signup",
                at,
                &user,
                &format!(r#"{{"source":"s{}","country":"c{}"}}"#, i % 5, i % 4),
            ),
            1 => ev_at(
                &id,
                "subscription_created",
                at,
                &user,
                &format!(r#"{{"plan":"p{}","amount":{}.5}}"#, i % 3, i % 50),
            ),
            _ => ev_at(
                &id,
                "usage_tracked",
                at,
                &user,
                &format!(r#"{{"feature":"f{}","quantity":{}}}"#, i % 6, i % 9 + 1),
            ),
        });
    }
    b.enqueue(events).await.unwrap();
    let mut left = 240;
    while left > 0 {
        let got = claim_n(&b, left.min(50)).await;
        left -= got.len();
        b.settle(got.into_iter().map(ack_real).collect())
            .await
            .unwrap();
    }
    let m = b.metrics().await.unwrap();
    for aggregate in rollup::ROLLED_UP {
        let total = sum(&m.map(aggregate));
        assert!(total > 0.0, "{aggregate}");
        for g in [Granularity::Hour, Granularity::Day] {
            let rolled = buckets(&b, aggregate, g).await;
            let got = bucket_total(&rolled);
            assert!(
                (got - total).abs() < 1e-6,
                "{aggregate} {g:?}: {got} vs {total}"
            );
        }
    }
    // The union of the day buckets' registers counts the distinct users.
    let mut union = Hll::new();
    for registers in buckets(&b, rollup::ACTIVE_USERS, Granularity::Day)
        .await
        .values()
    {
        for (register, rank) in registers {
            union.raise(register.parse().unwrap(), *rank as u8);
        }
    }
    // 37 users in 2^14 registers: exact unless two share a register (Redis hashes its own way).
    assert_eq!(m.distinct_users, 37);
    assert!(union.estimate().abs_diff(37) <= 1, "{}", union.estimate());
}
