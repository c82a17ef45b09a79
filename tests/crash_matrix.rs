//! The crash matrix: the delivery guarantees of docs/guarantees.md under faults, with real processes on a real SQLite file and a
//! real `redis-server`. Each scenario is written once and run against both backends.
//!
//! After every fault the same check runs ([`check_exactly_once`]): each event the pipeline
//! confirmed (202, or a 200 duplicate when the client sent it again) is applied exactly once,
//! nothing is applied twice, the DLQ is empty, and no process of the pipeline is left behind.
//! Each scenario prints one `RELIABILITY …` line with its figures; `RELIABILITY.md` collects
//! them:
//!
//! ```sh
//! scripts/reliability-figures.sh   # builds, runs this file, prints the figures as a table
//! ```

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Start-up, restart and drain deadlines: generous, the machine may be loaded.
const START: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM (DAY15_SHUTDOWN_TIMEOUT_SECONDS + margin).
const STOP: Duration = Duration::from_secs(30);
/// How long a load may take to reach its next milestone.
const PROGRESS: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
enum Store {
    Sqlite,
    Redis,
    /// A 3+3 Redis Cluster, the queue in its default 16 partitions.
    RedisCluster,
}

/// A pipeline environment and, for Redis, the server or cluster it owns.
struct Rig {
    p: Pipeline,
    redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
}

impl Rig {
    /// `None` (the test is skipped) when Redis is wanted and not installed outside CI.
    fn new(store: Store, persistent_redis: bool) -> Option<Rig> {
        let rig = match store {
            Store::Sqlite => Rig {
                p: Pipeline::sqlite(),
                redis: None,
                _cluster: None,
            },
            Store::RedisCluster => {
                let cluster = RedisCluster::start().unwrap_or_else(|e| panic!("{e}"))?;
                Rig {
                    p: Pipeline::redis_cluster(&cluster),
                    redis: None,
                    _cluster: Some(cluster),
                }
            }
            Store::Redis => {
                let server = if persistent_redis {
                    RedisServer::start_persistent()
                } else {
                    RedisServer::start()
                };
                let server = server.unwrap_or_else(|e| panic!("{e}"))?;
                Rig {
                    p: Pipeline::redis(&server),
                    redis: Some(server),
                    _cluster: None,
                }
            }
        };
        let mut rig = rig;
        // Which events a killed consumer had decided is read off its `Processed` lines: every
        // event keeps its own.
        rig.p.set("DAY15_LOG_EVENTS_PER_SECOND", "1000000000");
        Some(rig)
    }

    fn webhook(&self) -> Proc {
        let w = self.p.spawn("webhook", &[]);
        self.p.wait_healthy(START);
        w
    }

    fn consumer(&self) -> Proc {
        self.p.spawn("consumer", &[])
    }

    /// A consumer that holds its `batch`-th batch, claimed and decided, unsettled until it is
    /// stopped (`DAY15_FAULT_HOLD_BATCH`), and says so in its output: killed after that, it
    /// dies holding a batch by construction, however fast the build.
    fn consumer_holding(&self, batch: u64) -> Proc {
        let batch = batch.to_string();
        self.p.spawn_with(
            "consumer",
            &[],
            &[
                ("DAY15_FAULT_INJECTION", "true"),
                ("DAY15_FAULT_HOLD_BATCH", &batch),
            ],
        )
    }

    fn shut_down(&self, procs: Vec<&mut Proc>) {
        self.p.shut_down(procs, STOP);
    }

    fn assert_no_orphans(&self) {
        self.p.assert_no_orphans(STOP);
    }
}

/// Runs a scenario against both backends: `<scenario>::sqlite` and `<scenario>::redis`, and
/// with `+ redis_cluster` also on a Redis Cluster: `<scenario>::redis_cluster`.
macro_rules! on_both_backends {
    ($($scenario:ident $(+ $cluster:ident)?),* $(,)?) => {$(
        mod $scenario {
            #[test]
            fn sqlite() {
                super::$scenario(super::Store::Sqlite)
            }
            #[test]
            fn redis() {
                super::$scenario(super::Store::Redis)
            }
            $(
                #[test]
                fn $cluster() {
                    super::$scenario(super::Store::RedisCluster)
                }
            )?
        }
    )*};
}

on_both_backends!(
    sigkilled_consumer_loses_none_of_20000_events,
    consumer_sigkilled_twice_mid_batch_loses_nothing + redis_cluster,
    sigkilled_webhook_loses_nothing_it_accepted,
    sigkilled_orchestrator_takes_its_children_and_loses_nothing,
    sigterm_under_load_exits_0_and_loses_nothing,
);

/// How much of a busy consumer's output to look at: more than one batch of log lines.
const TAIL_BYTES: u64 = 256 * 1024;

/// Where a consumer is, from the last batch line of its output.
fn holds_batch(consumer: &Proc) -> Option<bool> {
    tail(&consumer.output, TAIL_BYTES)
        .lines()
        .rev()
        .find_map(|line| {
            if line.contains(" - Processing batch of ") {
                Some(true)
            } else if line.contains(" - Batch complete: ") {
                Some(false)
            } else {
                None
            }
        })
}

/// Which batch a consumer started by [`Rig::consumer_holding`] holds: a few batches in, so the
/// kill lands while the load is under way, and few enough that it always gets that far.
const HELD_BATCH: u64 = 3;

/// The line a consumer started by [`Rig::consumer_holding`] logs once it holds its batch.
const HOLDING: &str = " - Fault injection: holding batch ";

/// SIGKILLs a consumer started by [`Rig::consumer_holding`] once its output says it holds its
/// batch, so the kill lands after the batch was claimed and before it is settled. Returns
/// whether its output confirms it died holding a batch (it never logged the batch complete).
fn sigkill_mid_batch(consumer: &mut Proc) -> bool {
    eventually("the consumer to hold its batch", PROGRESS, || {
        tail(&consumer.output, TAIL_BYTES)
            .contains(HOLDING)
            .then_some(())
    });
    consumer.signal(Signal::SIGKILL);
    consumer
        .wait_timeout(STOP)
        .expect("a SIGKILLed consumer exits");
    holds_batch(consumer) == Some(true)
}

/// Event ids a consumer's output says it decided ("Processed usage_tracked (<id>) - …").
fn decided_ids(output: &str) -> Vec<String> {
    const MARK: &str = " - Processed usage_tracked (";
    output
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find(MARK)? + MARK.len()..];
            Some(rest[..rest.find(')')?].to_string())
        })
        .collect()
}

/// Ids of the batch a killed consumer was working on: decided after its last "Processing
/// batch" line, with no "Batch complete" after it.
fn unfinished_batch(killed: &Proc) -> Vec<String> {
    let output = killed.output();
    let Some(start) = output.rfind(" - Processing batch of ") else {
        return Vec::new();
    };
    let last = &output[start..];
    if last.contains(" - Batch complete: ") {
        return Vec::new();
    }
    decided_ids(last)
}

/// How many of `ids` another consumer decided again: the killed consumer's batch was
/// delivered again after its lease ran out (the check proves it was still applied only once).
/// A figure, not an assertion: log lines are written by a background thread, so under load
/// the output can lag behind a consumer that had in fact already settled its batch.
fn redelivered(ids: &[String], others: &[&Proc]) -> usize {
    let seen: std::collections::HashSet<String> = others
        .iter()
        .flat_map(|p| decided_ids(&p.output()))
        .collect();
    ids.iter().filter(|id| seen.contains(*id)).count()
}

/// Issues 4 and 5: one webhook and two consumer processes on one queue, 20,000 events in
/// batches, one consumer SIGKILLed while it holds a batch: exactly 20,000 applied.
fn sigkilled_consumer_loses_none_of_20000_events(store: Store) {
    let Some(mut rig) = Rig::new(store, false) else {
        return;
    };
    rig.p.set("DAY15_BATCH_SIZE", "100");
    let mut webhook = rig.webhook();
    let (mut killed, mut survivor) = (rig.consumer_holding(HELD_BATCH), rig.consumer());
    let started = Instant::now();
    let load = Load::start(
        &rig.p,
        "m",
        LoadShape {
            senders: 2,
            batch: 100,
            limit: Some(20_000),
            pause: Duration::ZERO,
        },
    );
    load.wait_accepted(2_000, PROGRESS);
    let held = sigkill_mid_batch(&mut killed);
    let mut restarted = rig.consumer();
    let mut ledger = load.wait_done(PROGRESS);
    assert_eq!(ledger.sent.len(), 20_000);
    let mut figures = check_exactly_once(&rig.p, &mut ledger, "sigkill-consumer");
    assert_eq!(figures.accepted, 20_000);
    assert_eq!(figures.applied, 20_000);
    let elapsed = started.elapsed();
    rig.shut_down(vec![&mut webhook, &mut survivor, &mut restarted]);
    let unfinished = unfinished_batch(&killed);
    figures
        .note("kills", 1)
        .note("killed_holding_batch", held)
        .note("unfinished_batch", unfinished.len())
        .note(
            "redelivered",
            redelivered(&unfinished, &[&survivor, &restarted]),
        )
        .note("ms", elapsed.as_millis())
        .report();
}

/// A consumer is SIGKILLed mid-batch, its replacement too: nothing is lost or applied twice.
fn consumer_sigkilled_twice_mid_batch_loses_nothing(store: Store) {
    let Some(mut rig) = Rig::new(store, false) else {
        return;
    };
    rig.p.set("DAY15_BATCH_SIZE", "50");
    let mut webhook = rig.webhook();
    let (mut first, mut survivor) = (rig.consumer_holding(HELD_BATCH), rig.consumer());
    let started = Instant::now();
    let load = Load::start(
        &rig.p,
        "t",
        LoadShape {
            senders: 1,
            batch: 50,
            limit: None,
            pause: Duration::from_millis(10),
        },
    );
    load.wait_accepted(500, PROGRESS);
    let held_first = sigkill_mid_batch(&mut first);
    let mut second = rig.consumer_holding(HELD_BATCH);
    let held_second = sigkill_mid_batch(&mut second);
    let mut restarted = rig.consumer();
    let mut ledger = load.finish();
    let mut figures = check_exactly_once(&rig.p, &mut ledger, "sigkill-consumer-twice");
    let elapsed = started.elapsed();
    rig.shut_down(vec![&mut webhook, &mut survivor, &mut restarted]);
    let unfinished: Vec<String> = [unfinished_batch(&first), unfinished_batch(&second)].concat();
    let redelivered = redelivered(&unfinished, &[&survivor, &second, &restarted]);
    figures
        .note("kills", 2)
        .note(
            "killed_holding_batch",
            format!("{held_first},{held_second}"),
        )
        .note("unfinished_batch", unfinished.len())
        .note("redelivered", redelivered)
        .note("ms", elapsed.as_millis())
        .report();
}

/// The webhook is SIGKILLed while two clients keep posting, then started again: every event
/// it confirmed (and every one it stored without managing to say so) is applied exactly once.
fn sigkilled_webhook_loses_nothing_it_accepted(store: Store) {
    let Some(rig) = Rig::new(store, false) else {
        return;
    };
    let mut webhook = rig.webhook();
    let (mut a, mut b) = (rig.consumer(), rig.consumer());
    let started = Instant::now();
    let load = Load::start(&rig.p, "w", busy_clients());
    load.wait_accepted(1_000, PROGRESS);
    webhook.signal(Signal::SIGKILL);
    webhook
        .wait_timeout(STOP)
        .expect("a SIGKILLed webhook exits");
    eventually("clients to see the webhook gone", PROGRESS, || {
        (load.responses(0) > 0).then_some(())
    });
    let before_restart = load.accepted();
    let mut webhook = rig.webhook();
    load.wait_accepted(before_restart + 1_000, PROGRESS);
    let mut ledger = load.finish();
    let failed_requests = ledger.statuses.get(&0).copied().unwrap_or(0);
    let mut figures = check_exactly_once(&rig.p, &mut ledger, "sigkill-webhook");
    let elapsed = started.elapsed();
    rig.shut_down(vec![&mut webhook, &mut a, &mut b]);
    figures
        .note("failed_requests", failed_requests)
        .note("ms", elapsed.as_millis())
        .report();
}

/// The orchestrator (webhook + 2 consumers) is SIGKILLed under load: its children go with it,
/// and a new orchestrator on the same queue applies everything accepted exactly once.
fn sigkilled_orchestrator_takes_its_children_and_loses_nothing(store: Store) {
    orchestrator_stopped_under_load(store, Signal::SIGKILL, "sigkill-orchestrator");
}

/// The orchestrator is SIGTERMed under load: it exits 0 with its children, and after a restart
/// everything accepted is applied exactly once.
fn sigterm_under_load_exits_0_and_loses_nothing(store: Store) {
    orchestrator_stopped_under_load(store, Signal::SIGTERM, "sigterm-orchestrator");
}

fn orchestrator_stopped_under_load(store: Store, signal: Signal, fault: &str) {
    let Some(mut rig) = Rig::new(store, false) else {
        return;
    };
    rig.p.set("DAY15_CONSUMERS", "2");
    let mut orchestrator = rig.p.spawn("orchestrator", &[]);
    rig.p.wait_healthy(START);
    let children = eventually("webhook and two consumers running", START, || {
        let c = children_of(orchestrator.pid());
        (c.len() == 3).then_some(c)
    });
    let started = Instant::now();
    let load = Load::start(&rig.p, "o", busy_clients());
    load.wait_accepted(1_000, PROGRESS);
    let stopping = Instant::now();
    orchestrator.signal(signal);
    let status = orchestrator
        .wait_timeout(STOP)
        .expect("the orchestrator exits");
    if signal == Signal::SIGTERM {
        assert_eq!(status.code(), Some(0), "{}", orchestrator.output());
    }
    eventually("the children to exit with the orchestrator", STOP, || {
        children.iter().all(|c| !alive(*c)).then_some(())
    });
    let children_gone = stopping.elapsed();
    rig.assert_no_orphans();

    let before_restart = load.accepted();
    let mut orchestrator = rig.p.spawn("orchestrator", &[]);
    rig.p.wait_healthy(START);
    load.wait_accepted(before_restart + 1_000, PROGRESS);
    let mut ledger = load.finish();
    let failed_requests = ledger.statuses.get(&0).copied().unwrap_or(0);
    let mut figures = check_exactly_once(&rig.p, &mut ledger, fault);
    let elapsed = started.elapsed();
    rig.shut_down(vec![&mut orchestrator]);
    figures
        .note(
            "exit",
            status.code().map_or("signal".into(), |c| c.to_string()),
        )
        .note("children_gone_ms", children_gone.as_millis())
        .note("failed_requests", failed_requests)
        .note("ms", elapsed.as_millis())
        .report();
}

/// Redis is killed under load and started again on the same port with its append-only file,
/// so what it acknowledged survives: the webhook answers 503 quickly while it is down — never
/// another 5xx, never a hang — and, without any process restarted, everything accepted before
/// and after is applied exactly once.
#[test]
fn redis_outage_gives_quick_503s_and_loses_nothing() {
    redis_outage_under_load(true);
}

/// Redis is killed under load and comes back empty (no persistence: by docs/guarantees.md its own
/// settings decide what survives, so what it held is gone). The pipeline recovers by itself:
/// no process restarted, the queue and consumer group are re-created, everything accepted
/// after the restart is applied exactly once, and nothing is ever applied twice.
#[test]
fn redis_restarted_empty_recovers_without_restarting_anything() {
    redis_outage_under_load(false);
}

fn redis_outage_under_load(persistent: bool) {
    let Some(mut rig) = Rig::new(Store::Redis, persistent) else {
        return;
    };
    let mut webhook = rig.webhook();
    let (mut a, mut b) = (rig.consumer(), rig.consumer());
    // A consumer that is still starting when Redis goes down exits, as it should: the
    // outage must find both connected.
    for consumer in [&a, &b] {
        eventually("the consumer connected to Redis", START, || {
            tail(&consumer.output, TAIL_BYTES)
                .contains(" started: backend redis")
                .then_some(())
        });
    }
    let started = Instant::now();
    let load = Load::start(&rig.p, "r", busy_clients());
    load.wait_accepted(1_000, PROGRESS);
    let redis = rig.redis.as_mut().expect("a redis rig has a server");
    redis.stop();
    let down = Instant::now();
    eventually("clients to get 503s", PROGRESS, || {
        (load.responses(503) >= 20).then_some(())
    });
    let outage = down.elapsed();
    let held_by_redis = if persistent {
        Default::default()
    } else {
        load.accepted_ids()
    };
    let before_restart = load.accepted();
    redis.restart().unwrap_or_else(|e| panic!("{e}"));
    let back = Instant::now();
    load.wait_accepted(before_restart + 1_000, PROGRESS);
    let recovered = back.elapsed();
    let mut ledger = load.finish();

    let slowest_503 = ledger.slowest.get(&503).copied().unwrap_or_default();
    let responses_503 = ledger.statuses.get(&503).copied().unwrap_or(0);
    let not_ok: Vec<(u16, u64)> = ledger
        .statuses
        .iter()
        .filter(|(s, _)| **s != 202)
        .map(|(s, n)| (*s, *n))
        .collect();
    let fault = if persistent {
        "redis-outage"
    } else {
        "redis-restarted-empty"
    };
    // A batch a consumer claimed before the outage may still be settling (its settle is
    // retried until Redis answers, and an empty Redis then applies it as new): wait until no
    // consumer holds a batch, so the figures read below are final.
    ledger.confirm(&rig.p, PROGRESS);
    eventually(
        "the queue empty and no consumer holding a batch",
        PROGRESS,
        || {
            let idle = [&a, &b].iter().all(|c| holds_batch(c) != Some(true));
            (idle && rig.p.health()["queue_depth"] == 0).then_some(())
        },
    );
    let mut figures = check_applied(&rig.p, &mut ledger, fault, &held_by_redis);
    // 503 is the only failure a client may see: no other 5xx, no dropped connection.
    assert!(
        not_ok.iter().all(|(s, _)| *s == 503),
        "answers other than 202 and 503 (0 = no answer): {not_ok:?}"
    );
    // docs/api.md: within 1 s; the bound is generous because the machine may be loaded.
    assert!(
        slowest_503 < Duration::from_secs(3),
        "a 503 took {slowest_503:?}"
    );
    for proc in [&webhook, &a, &b] {
        assert!(
            alive(proc.pid()),
            "{} did not survive the outage",
            proc.name
        );
    }
    let elapsed = started.elapsed();
    rig.shut_down(vec![&mut webhook, &mut a, &mut b]);
    figures
        .note("responses_503", responses_503)
        .note("slowest_503_ms", slowest_503.as_millis())
        .note("outage_ms", outage.as_millis())
        .note("recovered_ms", recovered.as_millis())
        .note("ms", elapsed.as_millis())
        .report();
}
