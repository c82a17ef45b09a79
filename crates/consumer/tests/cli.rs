//! The `consumer` binary. The memory backend lives in one process, so these are smoke tests;
//! cross-process behaviour is tested with a durable backend.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary in a scratch directory with no inherited `DAY15_*` settings.
fn consumer(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_consumer"));
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DAY15_QUEUE_BACKEND", "memory")
        .env("DAY15_LOG_FILE", dir.join("consumer.log"));
    cmd
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the consumer binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn version_prints_name_and_version() {
    let dir = scratch();
    let out = run(consumer(dir.path()).arg("--version"));
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("consumer {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn dlq_list_json_on_an_empty_backend_prints_an_empty_array() {
    let dir = scratch();
    let out = run(consumer(dir.path()).args(["dlq", "list", "--json"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "[]");
}

#[test]
fn dlq_commands_report_what_they_did() {
    let dir = scratch();
    let out = run(consumer(dir.path()).args(["dlq", "list"]));
    assert_eq!(stdout(&out).trim(), "The dead-letter queue is empty.");
    let out = run(consumer(dir.path()).args(["dlq", "replay", "--all"]));
    assert_eq!(stdout(&out).trim(), "Replayed 0 dead letters");
    let out = run(consumer(dir.path()).args(["dlq", "replay", "--id", "evt_1", "--id", "evt_2"]));
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).starts_with("Replayed 0 of 2 requested"),
        "{out:?}"
    );
    let out = run(consumer(dir.path()).args(["dlq", "purge"]));
    assert_eq!(stdout(&out).trim(), "Purged 0 dead letters");
}

#[test]
fn usage_errors_and_bad_configuration_exit_2() {
    let dir = scratch();
    let out = run(consumer(dir.path()).args(["dlq", "replay"]));
    assert_eq!(out.status.code(), Some(2), "replay needs --id or --all");
    let out = run(consumer(dir.path()).args(["dlq", "replay", "--all", "--id", "evt_1"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(consumer(dir.path()).args(["dlq", "replay", "--id", "has space"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(consumer(dir.path())
        .env("DAY15_BATCH_SIZE", "0")
        .args(["dlq", "list"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DAY15_BATCH_SIZE"));
}

#[test]
fn sigterm_stops_the_loop_with_statistics_and_exit_0() {
    let dir = scratch();
    let log = dir.path().join("consumer.log");
    let mut child = consumer(dir.path())
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_log().contains("started") {
        assert!(Instant::now() < deadline, "no start line: {}", read_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("consumer did not stop on SIGTERM: {}", read_log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let text = read_log();
    assert!(text.contains("PROCESSING STATISTICS"), "{text}");
}
