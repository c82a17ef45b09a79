//! The built `orchestrator` binary's command line: version, `--check` and the start-up checks
//! that end it before any child is spawned. (Supervision is tested end to end in the top-level
//! `tests/`, which run this binary too: having integration tests here is what makes
//! `cargo test --workspace` build it.)

use std::path::Path;
use std::process::{Command, Output};

use pipeline_core::testkit::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_orchestrator");

/// The binary with a clean environment, run in `dir` (so no `config/.env` is picked up).
fn orchestrator(dir: &Path, vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().current_dir(dir).args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run the orchestrator binary")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn version_names_the_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = orchestrator(dir.path(), &[], &["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out).starts_with("orchestrator "), "{}", text(&out));
}

#[test]
fn check_accepts_the_defaults_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = orchestrator(dir.path(), &[], &["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("Configuration OK"), "{}", text(&out));
}

#[test]
fn check_reports_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vars = [("DAY15_BATCH_SIZE", "0"), ("DAY15_WEBHOOK_PORT", "abc")];
    let out = orchestrator(dir.path(), &vars, &["--check"]);
    assert_eq!(out.status.code(), Some(2));
    let out = text(&out);
    assert!(out.contains("DAY15_BATCH_SIZE"), "{out}");
    assert!(out.contains("DAY15_WEBHOOK_PORT"), "{out}");
}

#[test]
fn unreachable_redis_is_one_clear_sentence_and_exit_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("a free port").to_string();
    let vars = [
        ("DAY15_QUEUE_BACKEND", "redis"),
        ("DAY15_REDIS_HOST", "127.0.0.1"),
        ("DAY15_REDIS_PORT", port.as_str()),
        ("DAY15_LOG_FILE", "orchestrator.log"),
    ];
    let out = orchestrator(dir.path(), &vars, &[]);
    assert_eq!(out.status.code(), Some(1));
    let out = text(&out);
    assert!(out.contains("Redis connection failed at"), "{out}");
    assert!(out.contains("DAY15_QUEUE_BACKEND=sqlite"), "{out}");
}
