//! The built `webhook` binary end to end: start-up, ingest, log file, SIGTERM, exit codes.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pipeline_core::testkit::free_port;
use pipeline_core::testkit::wait::{blocking, eventually};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_webhook");

/// The binary with a clean environment, run in `dir` (so no `config/.env` is picked up).
fn webhook(dir: &Path, vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().current_dir(dir);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_serves_logs_and_exits_0_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/pipeline.log");
    let port = free_port().unwrap().to_string();
    let child = webhook(
        dir.path(),
        &[
            ("DAY15_QUEUE_BACKEND", "memory"),
            ("DAY15_WEBHOOK_PORT", &port),
            ("DAY15_LOG_FILE", log.to_str().unwrap()),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut child = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    eventually("/health to answer 200", Duration::from_secs(15), || {
        let r = client.get(format!("{base}/health")).send();
        async move { r.await.is_ok_and(|r| r.status() == 200).then_some(()) }
    })
    .await;

    let event = json!({"event_id": "evt_bin_1", "event_type": "user_signup",
                       "timestamp": "2025-12-16T10:00:00Z"});
    let r = client
        .post(format!("{base}/webhook/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    eventually(
        &format!("an Event received line in {log:?}"),
        Duration::from_secs(5),
        || async {
            std::fs::read_to_string(&log)
                .is_ok_and(|text| {
                    text.lines().any(|l| {
                        l.contains(
                            " - webhook - INFO - Event received: user_signup (evt_bin_1) - latency: ",
                        ) && l.ends_with("ms")
                    })
                })
                .then_some(())
        },
    )
    .await;

    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = blocking::eventually("the webhook to exit", Duration::from_secs(10), || {
        child.0.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Webhook receiver listening on http://127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("Webhook receiver stopped"), "{text}");
    // Alone on the memory backend, the webhook says no consumer process can see its queue.
    assert!(
        text.contains(
            " - webhook - WARNING - DAY15_QUEUE_BACKEND=memory keeps the queue inside this process"
        ),
        "{text}"
    );
}

fn run(dir: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    webhook(dir, vars).args(args).output().unwrap()
}

#[test]
fn version_and_help_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(dir.path(), &["--version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("webhook "), "{text}");
    let out = run(dir.path(), &["--help"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--port"));
}

#[test]
fn bad_configuration_exits_2_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        &[],
        &[
            ("DAY15_WEBHOOK_PORT", "abc"),
            ("DAY15_QUEUE_BACKEND", "memory"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DAY15_WEBHOOK_PORT"), "{err}");

    let out = run(
        dir.path(),
        &[],
        &[
            ("DAY15_WEBHOOK_SECRET", "whsec_***"),
            ("DAY15_QUEUE_BACKEND", "memory"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DAY15_WEBHOOK_SECRET"));
}

#[test]
fn a_taken_port_exits_1_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let log = dir.path().join("w.log");
    let out = run(
        dir.path(),
        &[],
        &[
            ("DAY15_QUEUE_BACKEND", "memory"),
            ("DAY15_WEBHOOK_PORT", &port),
            ("DAY15_LOG_FILE", log.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("Cannot listen on 127.0.0.1:{port}")),
        "{text}"
    );
}
