//! End-to-end: the SQLite store stays the one every process uses, `/health` means writable,
//! the file is private, and no secret is printed. Real binaries on real files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

const START: Duration = Duration::from_secs(30);
const LOST_STORE: &str = "was deleted or replaced while in use";

fn db_path(p: &Pipeline) -> PathBuf {
    p.dir.path().join("queue.sqlite3")
}

/// The main file and its `-wal` and `-shm` companions.
fn store_files(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| PathBuf::from(format!("{}{suffix}", db.display()));
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

fn remove_store(db: &Path) {
    for f in store_files(db) {
        let _ = std::fs::remove_file(f);
    }
}

/// `(status, body)` of `/health`, `None` when nothing answers.
fn health(p: &Pipeline) -> Option<(u16, serde_json::Value)> {
    let r = p.http.get(p.url("/health")).send().ok()?;
    let status = r.status().as_u16();
    Some((status, r.json().unwrap_or_default()))
}

fn accept_one(p: &Pipeline, id: &str) {
    let (status, body) = p.post(
        "/webhook/events",
        &event(id, "user_signup", json!({"source": "organic"})),
    );
    assert_eq!(status, 202, "{body}");
}

#[test]
fn a_webhook_whose_store_is_deleted_answers_503_with_the_reason_then_exits_1() {
    let p = Pipeline::sqlite();
    let db = db_path(&p);
    let mut webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    accept_one(&p, "before_delete");

    remove_store(&db);
    let (_, body) = eventually("/health to answer 503 for the lost store", START, || {
        health(&p).filter(|(status, _)| *status == 503)
    });
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert!(
        body["reason"].as_str().unwrap_or("").contains(LOST_STORE),
        "{body}"
    );
    let status = webhook
        .wait_timeout(START)
        .expect("the webhook stops by itself");
    assert_eq!(status.code(), Some(1), "{}", webhook.output());
    let log = p.log();
    let line = format!(
        " - webhook - ERROR - SQLite queue file {} was deleted or replaced while in use; stopping \
         so no event is accepted into a store nobody reads",
        db.display()
    );
    assert_eq!(log.matches(&line).count(), 1, "{log}");
    assert!(!db.exists(), "no new, empty store was created at the path");
}

#[test]
fn an_orchestrator_whose_store_is_deleted_stops_everything_with_exit_1_and_restarts_nothing() {
    let p = Pipeline::sqlite();
    let db = db_path(&p);
    let mut o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let children = eventually("webhook and consumer running", START, || {
        let c = children_of(o.pid());
        (c.len() == 2).then_some(c)
    });
    // Both children have their store open (a child still starting would create a new one).
    eventually("the consumer to run", START, || {
        p.log()
            .contains(" - consumer - INFO - Consumer ")
            .then_some(())
    });
    accept_one(&p, "before_delete");

    remove_store(&db);
    let status = o
        .wait_timeout(START)
        .expect("the orchestrator stops by itself");
    assert_eq!(status.code(), Some(1), "{}", o.output());
    for c in children {
        assert!(!alive(c), "child {c} outlived the orchestrator");
    }
    let log = p.log();
    assert!(
        log.contains(" - orchestrator - ERROR - SQLite queue file ")
            && log.contains("was deleted or replaced while the pipeline was running"),
        "{log}"
    );
    assert_eq!(log.matches("Started webhook").count(), 1, "{log}");
    assert_eq!(log.matches("Started consumer-1").count(), 1, "{log}");
    assert!(!db.exists(), "no new, empty store was created at the path");
}

#[test]
fn health_is_503_while_another_connection_holds_the_write_lock_and_200_after() {
    let p = Pipeline::sqlite();
    let db = db_path(&p);
    let _webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);

    let conn = rusqlite::Connection::open(&db).expect("open the store");
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let (_, body) = eventually(
        "/health to answer 503 while writes cannot start",
        START,
        || health(&p).filter(|(status, _)| *status == 503),
    );
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert!(
        body["reason"].as_str().unwrap_or("").contains("locked"),
        "{body}"
    );

    conn.execute_batch("ROLLBACK")
        .expect("release the write lock");
    eventually("/health to answer 200 again", START, || {
        health(&p).filter(|(status, _)| *status == 200)
    });
    accept_one(&p, "after_unlock");
}

#[test]
fn the_store_and_its_wal_files_are_private_to_their_owner() {
    let mut p = Pipeline::sqlite();
    let dir = p.dir.path().join("new_dir");
    let db = dir.join("queue.sqlite3");
    p.set("DAY15_SQLITE_PATH", db.display().to_string());
    let _webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    accept_one(&p, "private");

    let mode = |path: &Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    for f in store_files(&db) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
}

fn check(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(bin("orchestrator"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DAY15_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .arg("--check")
        .current_dir(dir.path())
        .envs(vars.iter().copied())
        .output()
        .expect("run orchestrator --check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn check_prints_a_redis_url_with_an_at_sign_in_its_password_redacted() {
    let (code, out) = check(&[
        ("DAY15_QUEUE_BACKEND", "redis"),
        ("DAY15_REDIS_URL", "redis://:p@ss@127.0.0.1:6390/0"),
        ("DAY15_WEBHOOK_SECRET", "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="),
        ("DAY15_ADMIN_TOKEN", "admin-token-value"),
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("redis://:***@127.0.0.1:6390/0"), "{out}");
    for secret in ["p@ss", "ss@", "c2VjcmV0", "admin-token-value"] {
        assert!(!out.contains(secret), "{secret} printed: {out}");
    }
}

#[test]
fn a_signature_tolerance_above_the_idempotency_window_is_a_configuration_error() {
    let (code, out) = check(&[
        ("DAY15_IDEMPOTENCY_TTL_HOURS", "0.01"),
        ("DAY15_SIGNATURE_TOLERANCE_SECONDS", "60"),
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("DAY15_SIGNATURE_TOLERANCE_SECONDS=\"60\"")
            && out.contains("at most DAY15_IDEMPOTENCY_TTL_HOURS"),
        "{out}"
    );
}
