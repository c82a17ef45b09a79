//! The built `orchestrator` binary's command line: version, `--check`, the start-up checks
//! that end it before any child is spawned, and start-up failures of its roles. (Supervision is
//! tested end to end in the top-level `tests/`, which run this binary too: having integration
//! tests here is what makes `cargo test --workspace` build it.)

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

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

/// How long a start-up failure may take to end the orchestrator on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// The orchestrator running in `dir` with a clean environment plus `vars`, its stdout and
/// stderr in `dir/out.txt`.
fn start(dir: &Path, vars: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(dir.join("out.txt")).expect("output file");
    let err = out.try_clone().expect("output file");
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .current_dir(dir)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    cmd.spawn().expect("start the orchestrator binary")
}

/// Polls until `child` exits, killing it and failing the test after [`DEADLINE`].
fn exit_status(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("poll the orchestrator") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the orchestrator did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `check` holds for the file at `path`, failing the test after [`DEADLINE`].
fn wait_for_file(path: &Path, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A pipeline's settings in `dir`: its own port, SQLite file and log file.
fn settings<'a>(backend: &'a str, port: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DAY15_QUEUE_BACKEND", backend),
        ("DAY15_SQLITE_PATH", "queue.sqlite3"),
        ("DAY15_WEBHOOK_PORT", port),
        ("DAY15_LOG_FILE", "pipeline.log"),
        ("DAY15_SHUTDOWN_TIMEOUT_SECONDS", "5"),
    ]
}

fn a_taken_port_is_one_clear_sentence_and_exit_1_before_any_role(backend: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let taken = TcpListener::bind("127.0.0.1:0").expect("a port to hold");
    let port = taken.local_addr().expect("its address").port().to_string();
    let mut orchestrator = start(dir.path(), &settings(backend, &port));
    let status = exit_status(&mut orchestrator);
    let (out, log) = (
        read(&dir.path().join("out.txt")),
        read(&dir.path().join("pipeline.log")),
    );
    assert_eq!(status.code(), Some(1), "{out}");
    let sentence = format!(
        "Cannot listen on 127.0.0.1:{port}: the address is already in use (is another pipeline running?) — stop it or set DAY15_WEBHOOK_PORT"
    );
    assert!(out.contains(&sentence), "{out}");
    assert_eq!(log.matches(&sentence).count(), 1, "{log}");
    // No role ever ran: nothing was started, nothing logged as the webhook or a consumer.
    for never in [
        "Started ",
        " - webhook - ",
        " - consumer - ",
        "healthy",
        "restarting",
    ] {
        assert!(!log.contains(never), "{never:?} in\n{log}");
    }
}

#[test]
fn a_taken_port_stops_the_process_pipeline_before_any_child() {
    a_taken_port_is_one_clear_sentence_and_exit_1_before_any_role("sqlite");
}

#[test]
fn a_taken_port_stops_the_in_process_pipeline_before_any_task() {
    a_taken_port_is_one_clear_sentence_and_exit_1_before_any_role("memory");
}

/// A secret the configuration accepts but the webhook refuses at start (not base64): a
/// webhook that fails the same way on every start.
const UNUSABLE_SECRET: (&str, &str) = ("DAY15_WEBHOOK_SECRET", "whsec_not*base64");

#[test]
fn a_webhook_child_that_exits_during_start_up_is_a_failure_with_its_exit_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("a free port").to_string();
    let mut vars = settings("sqlite", &port);
    vars.push(UNUSABLE_SECRET);
    let mut orchestrator = start(dir.path(), &vars);
    let status = exit_status(&mut orchestrator);
    let log = read(&dir.path().join("pipeline.log"));
    assert_eq!(
        status.code(),
        Some(1),
        "{}",
        read(&dir.path().join("out.txt"))
    );
    assert!(log.contains("Started webhook"), "{log}");
    assert!(
        log.contains("the webhook exited during start-up (exit code 2)"),
        "{log}"
    );
    assert!(!log.contains("Started consumer"), "{log}");
    assert!(!log.contains("healthy"), "{log}");
}

#[test]
fn an_in_process_role_that_fails_is_restarted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().expect("a free port").to_string();
    let mut vars = settings("memory", &port);
    vars.push(UNUSABLE_SECRET);
    let mut orchestrator = start(dir.path(), &vars);
    let log_path = dir.path().join("pipeline.log");
    // The second failure is the first restart's: the role was started again, and failed again.
    let log = wait_for_file(&log_path, "the webhook task to be restarted", |log| {
        log.contains("(restart 2 of at most 5 per minute)")
    });
    assert!(
        log.contains("webhook failed (invalid webhook configuration"),
        "{log}"
    );
    assert!(log.contains("restarting in 500 ms"), "{log}");
    assert!(log.contains("Started webhook"), "{log}");
    // Stopping while a restart is pending is a clean stop.
    let pid = nix::unistd::Pid::from_raw(orchestrator.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = exit_status(&mut orchestrator);
    assert_eq!(status.code(), Some(0), "{}", read(&log_path));
}
