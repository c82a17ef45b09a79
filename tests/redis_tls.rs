//! The pipeline over `rediss://`, as on a managed Redis that requires TLS: the real binaries
//! against a TLS `redis-server` with a certificate made by the test, and the ways a TLS setup
//! goes wrong failing at start with one sentence and exit 1, never a hang.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Start-up and drain deadlines: generous, the machine may be loaded.
const START: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(30);

/// `None` (the test is skipped) when redis-server is not installed and CI is not set.
fn tls_server() -> Option<RedisTls> {
    RedisTls::start().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_pipeline_runs_over_rediss_with_its_ca_and_applies_every_event_once() {
    let Some(server) = tls_server() else {
        return;
    };
    let p = Pipeline::redis_tls(&server);
    let mut webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    let mut consumer = p.spawn("consumer", &[]);
    let load = Load::start(
        &p,
        "tls",
        LoadShape {
            senders: 2,
            batch: 50,
            limit: Some(2_000),
            pause: Duration::ZERO,
        },
    );
    let mut ledger = load.wait_done(START);
    let figures = check_exactly_once(&p, &mut ledger, "tls");
    assert_eq!(figures.applied, 2_000);
    p.shut_down(vec![&mut webhook, &mut consumer], STOP);
}

/// Starts `name` with `vars` on top of the pipeline's settings and expects it to exit 1 at
/// start, quickly, with one line naming the problem; that line.
fn fails_at_start(p: &Pipeline, name: &str, vars: &[(&str, &str)]) -> String {
    let started = Instant::now();
    let mut proc = p.spawn_with(name, &[], vars);
    let status = proc
        .wait_timeout(START)
        .unwrap_or_else(|| panic!("{name} did not exit"));
    let output = proc.output();
    assert_eq!(status.code(), Some(1), "{name}: {output}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{name} took {:?} to give up: {output}",
        started.elapsed()
    );
    assert!(!output.contains("panicked"), "{name}: {output}");
    let errors: Vec<&str> = output.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{name}: one error line: {output}");
    errors[0].to_string()
}

#[test]
fn a_wrong_ca_or_plain_redis_to_the_tls_port_exits_1_with_one_sentence() {
    let Some(server) = tls_server() else {
        return;
    };
    let p = Pipeline::redis_tls(&server);
    let unrelated = server
        .write_unrelated_ca()
        .unwrap_or_else(|e| panic!("{e}"));
    let unrelated = unrelated.display().to_string();
    for name in ["webhook", "consumer"] {
        let line = fails_at_start(&p, name, &[("DAY15_REDIS_CA_CERT", &unrelated)]);
        assert!(line.contains("certificate"), "{name}: {line}");

        let plain = format!("redis://127.0.0.1:{}/", server.port());
        let line = fails_at_start(&p, name, &[("DAY15_REDIS_URL", &plain)]);
        assert!(line.contains(&plain), "{name}: {line}");
    }
    p.assert_no_orphans(STOP);
}
