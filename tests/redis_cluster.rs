//! The pipeline's real binaries on a real Redis Cluster (3 primaries + 3 replicas, started by
//! the test), and on one server with a partitioned queue: the work spreads over every primary,
//! and a coordinated failover or a killed primary leaves every confirmed event applied exactly
//! once. Each fault scenario prints one `RELIABILITY …` line, as the crash matrix does
//! (`scripts/reliability-figures.sh` collects both).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Start-up and drain deadlines: generous, the machine may be loaded.
const START: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(30);
/// How long a load may take to reach its next milestone.
const PROGRESS: Duration = Duration::from_secs(120);

/// `None` (the test is skipped) when redis-server is not installed and CI is not set.
fn cluster() -> Option<RedisCluster> {
    RedisCluster::start().unwrap_or_else(|e| panic!("{e}"))
}

/// A second webhook process of the same pipeline on a port of its own; its `/health` answers.
fn second_webhook(p: &Pipeline) -> (Proc, u16) {
    let port = pipeline_core::testkit::free_port().expect("a free port");
    let webhook = p.spawn_with("webhook", &[], &[("DAY15_WEBHOOK_PORT", &port.to_string())]);
    let url = format!("http://127.0.0.1:{port}/health");
    eventually("the second webhook's /health to answer 200", START, || {
        let r = p.http.get(&url).send().ok()?;
        r.status().is_success().then_some(())
    });
    (webhook, port)
}

/// Every process is still the one the test started: none exited (so none was restarted).
fn assert_all_running(procs: &mut [&mut Proc]) {
    for proc in procs {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("{} exited ({status}): {}", proc.name, proc.output());
        }
    }
}

/// One queue stream as a primary holds it: entries ever added, entries left.
#[derive(Debug, Default, Clone, Copy)]
struct StreamFigures {
    added: u64,
    left: u64,
}

/// The queue streams the node on `port` holds, summed (`XINFO STREAM` of every `…:stream`
/// key it has; a node holds only the keys of its own slots).
fn streams_on(cluster: &RedisCluster, port: u16) -> StreamFigures {
    let keys = cluster
        .cli(port, &["--scan", "--pattern", "*:stream"])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut sum = StreamFigures::default();
    for key in keys.lines().map(str::trim).filter(|k| !k.is_empty()) {
        let info = cluster
            .cli(port, &["XINFO", "STREAM", key])
            .unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<&str> = info.lines().map(str::trim).collect();
        let field = |name: &str| -> u64 {
            lines
                .iter()
                .position(|l| *l == name)
                .and_then(|i| lines.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("XINFO STREAM {key} has no {name}: {info}"))
        };
        sum.added += field("entries-added");
        sum.left += field("length");
    }
    sum
}

/// 10,000 events through two webhook processes and three consumer processes on a 3-primary
/// cluster: the analytics are exact, and every primary held and drained some of the events.
#[test]
fn ten_thousand_events_through_two_webhooks_and_three_consumers_use_every_primary() {
    let Some(cluster) = cluster() else {
        return;
    };
    let mut p = Pipeline::redis_cluster(&cluster);
    p.set("DAY15_BATCH_SIZE", "100");
    let mut first = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    let (mut second, second_port) = second_webhook(&p);
    let mut consumers: Vec<Proc> = (0..3).map(|_| p.spawn("consumer", &[])).collect();
    let shape = LoadShape {
        senders: 2,
        batch: 100,
        limit: Some(5_000),
        pause: Duration::ZERO,
    };
    let started = Instant::now();
    let to_first = Load::start(&p, "a", shape);
    let to_second = Load::start_to(
        &format!("http://127.0.0.1:{second_port}/webhook/batch"),
        "b",
        shape,
    );
    let mut ledger = to_first.wait_done(PROGRESS);
    ledger.absorb(to_second.wait_done(PROGRESS));
    assert_eq!(ledger.sent.len(), 10_000);
    let mut figures = check_exactly_once(&p, &mut ledger, "two-webhooks-three-consumers");
    assert_eq!(figures.accepted, 10_000);
    assert_eq!(figures.applied, 10_000);

    let primaries = cluster.primaries().expect("the cluster's primaries");
    assert_eq!(primaries.len(), 3);
    let mut spread = Vec::new();
    for port in &primaries {
        let held = streams_on(&cluster, *port);
        assert!(held.added > 0, "primary {port} held none of the events");
        assert_eq!(held.left, 0, "primary {port} still holds events");
        spread.push(held.added.to_string());
    }
    let health = p.get_ok("/health");
    assert_eq!(health["redis"]["mode"], "cluster", "{health}");
    assert_eq!(health["redis"]["partitions"], 16, "{health}");
    assert_eq!(health["redis"]["primaries"], 3, "{health}");
    assert_eq!(health["redis"]["primaries_reachable"], 3, "{health}");
    let elapsed = started.elapsed();
    let mut procs: Vec<&mut Proc> = vec![&mut first, &mut second];
    procs.extend(consumers.iter_mut());
    p.shut_down(procs, STOP);
    figures
        .note("entries_per_primary", spread.join(","))
        .note("ms", elapsed.as_millis())
        .report();
}

/// `CLUSTER FAILOVER` on a replica while clients keep sending: no process restarts, the
/// pipeline carries on, and every confirmed event is applied exactly once.
#[test]
fn a_coordinated_failover_under_load_restarts_nothing_and_loses_nothing() {
    let Some(cluster) = cluster() else {
        return;
    };
    let p = Pipeline::redis_cluster(&cluster);
    let mut webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    let (mut a, mut b) = (p.spawn("consumer", &[]), p.spawn("consumer", &[]));
    let started = Instant::now();
    let load = Load::start(&p, "f", busy_clients());
    load.wait_accepted(1_000, PROGRESS);
    let replica = cluster.replicas().expect("the cluster's replicas")[0];
    let failover_started = Instant::now();
    cluster.failover(replica).unwrap_or_else(|e| panic!("{e}"));
    let failover_ms = failover_started.elapsed().as_millis();
    let after = load.accepted();
    load.wait_accepted(after + 1_000, PROGRESS);
    let mut ledger = load.finish();
    assert_all_running(&mut [&mut webhook, &mut a, &mut b]);
    let answered_503 = ledger.statuses.get(&503).copied().unwrap_or(0);
    let mut figures = check_exactly_once(&p, &mut ledger, "cluster-failover");
    assert_all_running(&mut [&mut webhook, &mut a, &mut b]);
    let elapsed = started.elapsed();
    p.shut_down(vec![&mut webhook, &mut a, &mut b], STOP);
    figures
        .note("failover_ms", failover_ms)
        .note("answered_503", answered_503)
        .note("ms", elapsed.as_millis())
        .report();
}

/// With `DAY15_REDIS_WAIT_REPLICAS=1` a 202 means a replica holds the event: a primary
/// SIGKILLed under load loses none of them once its replica has taken over. Meanwhile
/// `/health` is unhealthy, and healthy again after the takeover without a restart.
#[test]
fn a_killed_primary_loses_nothing_confirmed_with_wait_replicas_1() {
    killed_primary_under_load(1);
}

/// With `DAY15_REDIS_WAIT_REPLICAS=0` (the default) replication is asynchronous: a primary
/// SIGKILLed under load may take the last events it confirmed with it. The test measures how
/// many (RELIABILITY.md states the figure) and checks that nothing is applied twice and every
/// event confirmed after the takeover is applied exactly once.
#[test]
fn a_killed_primary_with_wait_replicas_0_loses_at_most_what_it_had_not_replicated() {
    killed_primary_under_load(0);
}

fn killed_primary_under_load(wait_replicas: u32) {
    let Some(mut cluster) = cluster() else {
        return;
    };
    let mut p = Pipeline::redis_cluster(&cluster);
    p.set("DAY15_REDIS_WAIT_REPLICAS", wait_replicas.to_string());
    // A loaded test machine can take longer than the default 100 ms to replicate.
    p.set("DAY15_REDIS_WAIT_TIMEOUT_MS", "500");
    let mut webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    let (mut a, mut b) = (p.spawn("consumer", &[]), p.spawn("consumer", &[]));
    let started = Instant::now();
    let load = Load::start(&p, "k", busy_clients());
    load.wait_accepted(1_000, PROGRESS);

    let victim = cluster.primaries().expect("the cluster's primaries")[0];
    cluster.kill(victim).unwrap_or_else(|e| panic!("{e}"));
    let killed_at = Instant::now();
    // Until a replica has taken over, a primary does not answer: the pipeline says so.
    let unhealthy = eventually("/health to report the lost primary", START, || {
        let health = p.health();
        (health["status"] == "unhealthy").then_some(health)
    });
    // With the topology when it could be read in time (else the reason is the timeout).
    if let Some(redis) = unhealthy.get("redis") {
        assert_eq!(redis["primaries_reachable"], 2, "{unhealthy}");
    }
    // Its replica takes over once the others count it as failed (cluster-node-timeout).
    eventually("a replica to take over the killed primary", START, || {
        (cluster.primaries().ok()?.len() == 3).then_some(())
    });
    cluster
        .wait_until_ok(START)
        .unwrap_or_else(|e| panic!("{e}"));
    let takeover_ms = killed_at.elapsed().as_millis();
    // Whatever the dead primary confirmed was confirmed before its replica took over.
    let confirmed_before_takeover = load.accepted_ids();
    let deadline = Instant::now() + START;
    let mut health = p.health();
    while health["status"] != "healthy" {
        assert!(
            Instant::now() < deadline,
            "/health not healthy again after the takeover: {health}"
        );
        std::thread::sleep(Duration::from_millis(50));
        health = p.health();
    }
    // Back to a replica per primary, so WAIT can be satisfied on every partition again.
    cluster.restart(victim).unwrap_or_else(|e| panic!("{e}"));
    let after = load.accepted();
    load.wait_accepted(after + 1_000, PROGRESS);
    let mut ledger = load.finish();
    assert_all_running(&mut [&mut webhook, &mut a, &mut b]);
    let answered_503 = ledger.statuses.get(&503).copied().unwrap_or(0);
    let fault = format!("sigkill-primary-wait-replicas-{wait_replicas}");
    let mut figures = if wait_replicas > 0 {
        check_exactly_once(&p, &mut ledger, &fault)
    } else {
        check_applied(&p, &mut ledger, &fault, &confirmed_before_takeover)
    };
    let elapsed = started.elapsed();
    p.shut_down(vec![&mut webhook, &mut a, &mut b], STOP);
    figures
        .note("takeover_ms", takeover_ms)
        .note("answered_503", answered_503)
        .note("ms", elapsed.as_millis())
        .report();
}

/// Every process of a pipeline must agree on the partition count: a webhook, a consumer or
/// an orchestrator started with another count than the one recorded exits 2 with one
/// sentence naming both numbers, before doing anything.
#[test]
fn another_partition_count_exits_2_naming_both_counts() {
    let Some(server) = RedisServer::start().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let mut p = Pipeline::redis(&server);
    p.set("DAY15_REDIS_PARTITIONS", "4");
    let mut webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    let (status, body) = p.post(
        "/webhook/events",
        &event("evt_part_1", "user_signup", serde_json::json!({})),
    );
    assert_eq!(status, 202, "{body}");

    p.set("DAY15_REDIS_PARTITIONS", "8");
    for name in ["webhook", "consumer", "orchestrator"] {
        let mut proc = p.spawn(name, &[]);
        let status = proc
            .wait_timeout(START)
            .unwrap_or_else(|| panic!("{name} did not exit"));
        let output = proc.output();
        assert_eq!(status.code(), Some(2), "{name}: {output}");
        let sentence = output
            .lines()
            .find(|l| l.contains("partition"))
            .unwrap_or_else(|| panic!("{name} did not name the partitions: {output}"));
        assert!(
            sentence.contains('4') && sentence.contains('8'),
            "{name}: {sentence}"
        );
        assert!(!output.contains("panicked"), "{name}: {output}");
    }
    // The running pipeline was not disturbed.
    assert_eq!(p.health()["status"], "healthy");
    p.shut_down(vec![&mut webhook], STOP);
}
