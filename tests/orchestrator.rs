//! End-to-end: the orchestrator runs the real webhook and consumer binaries on a real SQLite
//! file, supervises them, and stops them cleanly. (Its command line alone is tested in
//! `crates/orchestrator/tests/`.)

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::json;

const START: Duration = Duration::from_secs(30);

fn consumer_children(orchestrator: i32) -> Vec<i32> {
    children_of(orchestrator)
        .into_iter()
        .filter(|p| cmdline(*p).contains("consumer"))
        .collect()
}

#[test]
fn sample_events_are_processed_and_sigterm_stops_everything_with_exit_0() {
    let p = Pipeline::sqlite();
    let mut o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let out = o.output();
    assert!(out.contains("Real-Time Analytics Orchestrator"), "{out}");
    assert!(
        out.contains(&format!("http://127.0.0.1:{}/health", p.port)),
        "{out}"
    );

    let samples = sample_events();
    for e in &samples {
        let (status, body) = p.post("/webhook/events", e);
        assert_eq!(status, 202, "{body}");
    }
    p.wait_stat("processed", samples.len() as u64, START);
    let a = p.get("/analytics");
    assert_eq!(a["events_processed"], samples.len() as u64);
    assert_eq!(a["signups"]["total"], 2);
    assert_eq!(a["subscriptions"]["by_plan"]["premium"]["count"], 1);
    // 99.99 monthly + 2400 annual / 12
    assert_eq!(a["subscriptions"]["mrr"], 299.99);
    assert_eq!(a["usage"]["quantity"], 51);

    let children = children_of(o.pid());
    assert_eq!(children.len(), 2, "webhook + 1 consumer");
    o.signal(Signal::SIGTERM);
    let status = o
        .wait_timeout(Duration::from_secs(15))
        .expect("orchestrator exits within the shutdown timeout");
    assert_eq!(status.code(), Some(0), "{}", o.output());
    for c in children {
        assert!(!alive(c), "child {c} outlived the orchestrator");
    }
    let log = p.log();
    assert!(
        log.contains(" - consumer - INFO - Processing batch of"),
        "{log}"
    );
    assert!(log.contains("PROCESSING STATISTICS"), "{log}");
    // Three processes appended to one file: every line is whole and in the original's shape.
    for line in log.lines() {
        assert!(is_log_line(line), "torn or malformed log line: {line:?}");
    }
}

/// `2025-12-16 19:30:15,234 - webhook - INFO - message`
fn is_log_line(line: &str) -> bool {
    let b = line.as_bytes();
    let stamp_ok = b.len() > 26
        && b[4] == b'-'
        && b[10] == b' '
        && b[19] == b','
        && line[..23].bytes().filter(u8::is_ascii_digit).count() == 17;
    let mut parts = line.get(23..).unwrap_or("").splitn(4, " - ");
    stamp_ok
        && parts.next() == Some("")
        && matches!(parts.next(), Some("webhook" | "consumer" | "orchestrator"))
        && matches!(parts.next(), Some("DEBUG" | "INFO" | "WARNING" | "ERROR"))
        && parts.next().is_some()
}

#[test]
fn killed_consumer_is_restarted_and_nothing_is_lost() {
    let p = Pipeline::sqlite();
    let o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let first = eventually("consumer child", START, || consumer_children(o.pid()).pop());
    kill_pid(first, Signal::SIGKILL);
    let events: Vec<_> = (0..20)
        .map(|i| {
            event(
                &format!("k{i}"),
                "user_signup",
                json!({"source": "organic"}),
            )
        })
        .collect();
    let (status, _) = p.post("/webhook/batch", &json!({ "events": events }));
    assert_eq!(status, 202);
    let second = eventually("a new consumer child", START, || {
        consumer_children(o.pid()).into_iter().find(|c| *c != first)
    });
    assert!(alive(second));
    p.wait_stat("processed", 20, START);
    assert_eq!(p.get("/analytics")["signups"]["total"], 20);
    assert!(p.log().contains("exited unexpectedly"), "{}", p.log());
}

#[test]
fn sigkilled_orchestrator_takes_its_children_down() {
    let p = Pipeline::sqlite();
    let mut o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let children = eventually("webhook and consumer running", START, || {
        let c = children_of(o.pid());
        (c.len() == 2).then_some(c)
    });
    o.signal(Signal::SIGKILL);
    o.wait_timeout(Duration::from_secs(5))
        .expect("SIGKILL ends it");
    eventually(
        "children to exit after the orchestrator died",
        Duration::from_secs(5),
        || children.iter().all(|c| !alive(*c)).then_some(()),
    );
}

#[test]
fn events_accepted_before_a_sigterm_are_processed_after_the_next_start() {
    let mut p = Pipeline::sqlite();
    p.set("DAY15_BATCH_SIZE", "5");
    let mut o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let mut accepted = 0;
    for b in 0..5 {
        let events: Vec<_> = (0..100)
            .map(|i| {
                event(
                    &format!("r{b}-{i}"),
                    "usage_tracked",
                    json!({"feature": "api_call", "quantity": 2}),
                )
            })
            .collect();
        let (status, body) = p.post("/webhook/batch", &json!({ "events": events }));
        assert_eq!(status, 202, "{body}");
        accepted += body["results"]["accepted"].as_u64().unwrap_or(0);
    }
    assert_eq!(accepted, 500);
    o.signal(Signal::SIGTERM);
    let status = o.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", o.output());

    let _o2 = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    p.wait_stat("processed", 500, START);
    let a = p.get("/analytics");
    assert_eq!(a["events_processed"], 500, "applied exactly once each");
    assert_eq!(a["usage"]["quantity"], 1000);
}

fn kill_pid(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

#[test]
fn a_lone_orchestrator_binary_runs_every_role_itself() {
    // What `cargo run --release --bin orchestrator` leaves on a fresh clone: no sibling
    // webhook or consumer binaries. Its children are always its own executable in a role.
    let p = Pipeline::sqlite();
    let alone = p.dir.path().join("bin");
    std::fs::create_dir(&alone).expect("bin dir");
    let program = alone.join("orchestrator");
    std::fs::copy(bin("orchestrator"), &program).expect("copy the orchestrator");
    let mut o = p.spawn_program(&program, "orchestrator", &[]);
    p.wait_healthy(START);
    let children = eventually("webhook and consumer running", START, || {
        let c = children_of(o.pid());
        (c.len() == 2).then_some(c)
    });
    let roles: Vec<String> = children.iter().map(|c| cmdline(*c)).collect();
    assert!(
        roles.iter().any(|r| r.contains("orchestrator run-webhook")),
        "{roles:?}"
    );
    assert!(
        roles
            .iter()
            .any(|r| r.contains("orchestrator run-consumer")),
        "{roles:?}"
    );

    let (status, _) = p.post("/webhook/events", &sample_events()[0]);
    assert_eq!(status, 202);
    p.wait_stat("processed", 1, START);
    o.signal(Signal::SIGTERM);
    let status = o.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", o.output());
    // Each role logs under its own name, as the separate binaries do.
    let log = p.log();
    assert!(
        log.contains(" - webhook - INFO - Webhook receiver listening on"),
        "{log}"
    );
    assert!(log.contains(" - consumer - INFO - Consumer "), "{log}");
}

#[test]
fn a_second_orchestrator_on_a_taken_port_exits_1_and_leaves_the_first_alone() {
    let p = Pipeline::sqlite();
    let first = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let mut children = eventually("webhook and consumer running", START, || {
        let c = children_of(first.pid());
        (c.len() == 2).then_some(c)
    });
    children.sort_unstable();
    let mut second = p.spawn("orchestrator", &[]);
    let status = second.wait_timeout(START).expect("the second one exits");
    let out = second.output();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "Cannot listen on 127.0.0.1:{}: the address is already in use (is another pipeline running?) — stop it or set DAY15_WEBHOOK_PORT",
            p.port
        )),
        "{out}"
    );
    assert!(!out.contains("Started webhook"), "{out}");
    assert!(!out.contains("Webhook healthy"), "{out}");
    // The first pipeline runs on untouched.
    assert!(children.iter().all(|c| alive(*c)));
    let mut now = children_of(first.pid());
    now.sort_unstable();
    assert_eq!(now, children, "no child of the first one was restarted");
    assert_eq!(p.health()["status"], "healthy");
}

#[test]
fn the_memory_backend_runs_every_role_in_process_and_stops_with_exit_0() {
    let mut p = Pipeline::sqlite();
    p.set("DAY15_QUEUE_BACKEND", "memory");
    let mut o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    assert!(children_of(o.pid()).is_empty(), "no child process");
    let (status, body) = p.post("/webhook/events", &sample_events()[0]);
    assert_eq!(status, 202, "{body}");
    p.wait_stat("processed", 1, START);
    o.signal(Signal::SIGTERM);
    let status = o.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", o.output());
    assert!(
        p.log().contains("All components stopped cleanly"),
        "{}",
        p.log()
    );
}
