//! The backend conformance suite against the embedded SQLite backend, plus what only a file
//! shared by several processes can show: durability across reopen, group commit under many
//! concurrent writers, two instances on one file, and clear errors for unusable files.
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use common::conformance::{backend_conformance, Harness};
use pipeline_core::analytics::{counters, Increment};
use pipeline_core::backend::sqlite::{SqliteBackend, SCHEMA_VERSION};
use pipeline_core::backend::*;
use pipeline_core::config::SqliteSynchronous;
use pipeline_core::event::EventId;
use pipeline_core::testkit::wait::eventually;

/// Each `open` makes a new file in a temp dir; `reopen` opens another backend on the last
/// file, which is what another process does.
pub struct SqliteHarness {
    dir: tempfile::TempDir,
    files: AtomicUsize,
    last: Mutex<Option<PathBuf>>,
}

impl SqliteHarness {
    pub fn new() -> Self {
        SqliteHarness {
            dir: tempfile::tempdir().expect("temp dir"),
            files: AtomicUsize::new(0),
            last: Mutex::new(None),
        }
    }

    fn new_path(&self) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::SeqCst);
        self.dir.path().join(format!("queue-{n}.sqlite3"))
    }
}

impl Default for SqliteHarness {
    fn default() -> Self {
        Self::new()
    }
}

async fn open_at(path: &Path, options: BackendOptions) -> Arc<dyn Backend> {
    Arc::new(
        SqliteBackend::open(path, SqliteSynchronous::Full, options)
            .await
            .expect("open sqlite backend"),
    )
}

#[async_trait]
impl Harness for SqliteHarness {
    async fn open(&self, options: BackendOptions) -> Arc<dyn Backend> {
        let path = self.new_path();
        *self.last.lock().unwrap() = Some(path.clone());
        open_at(&path, options).await
    }

    async fn reopen(&self, options: BackendOptions) -> Arc<dyn Backend> {
        let last = self.last.lock().unwrap().clone();
        match last {
            Some(path) => open_at(&path, options).await,
            None => self.open(options).await,
        }
    }
}

backend_conformance!(SqliteHarness::new());

fn ev(id: &str) -> QueuedEvent {
    QueuedEvent {
        event_id: EventId::parse(id).unwrap(),
        payload: format!(r#"{{"event_id":"{id}","event_type":"user_signup"}}"#),
    }
}

async fn open_error(path: &Path) -> String {
    match SqliteBackend::open(path, SqliteSynchronous::Full, BackendOptions::default()).await {
        Ok(_) => panic!("opening {} should fail", path.display()),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_event_survives_dropping_and_reopening_the_backend() {
    let h = SqliteHarness::new();
    let b = h.open(BackendOptions::default()).await;
    assert_eq!(
        b.enqueue(vec![ev("keep")]).await.unwrap(),
        [EnqueueOutcome::Accepted]
    );
    drop(b);

    let b = h.reopen(BackendOptions::default()).await;
    assert_eq!(b.depths().await.unwrap().queue, 1);
    assert_eq!(
        b.enqueue(vec![ev("keep")]).await.unwrap(),
        [EnqueueOutcome::Duplicate],
        "the idempotency mark survives too"
    );
    let got = b
        .claim_batch("c1", 10, Duration::ZERO, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id.as_str(), "keep");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_enqueues_all_succeed_with_exact_counts() {
    let h = SqliteHarness::new();
    let b = h.open(BackendOptions::default()).await;
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.enqueue(vec![ev(&format!("e{i}"))]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), [EnqueueOutcome::Accepted]);
    }
    assert_eq!(b.depths().await.unwrap().queue, 500);
    let m = b.metrics().await.unwrap();
    assert_eq!(m.counter(counters::ACCEPTED), 500);
    assert_eq!(m.counter(counters::DUPLICATES), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_is_woken_by_an_enqueue_through_another_instance() {
    let h = SqliteHarness::new();
    let consumer = h.open(BackendOptions::default()).await;
    let webhook = h.reopen(BackendOptions::default()).await;
    let waiter = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            consumer
                .claim_batch("c1", 10, Duration::from_secs(30), &CancellationToken::new())
                .await
                .unwrap()
        })
    };
    // Give the claimer time to find the queue empty and start polling.
    tokio::time::sleep(Duration::from_millis(100)).await;
    webhook.enqueue(vec![ev("from-afar")]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("a claim must notice an event enqueued by another process")
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event_id.as_str(), "from-afar");
}

#[tokio::test]
async fn missing_parent_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/nested/queue.sqlite3");
    let b = open_at(&path, BackendOptions::default()).await;
    b.ping().await.unwrap();
    assert!(path.is_file());
}

#[tokio::test]
async fn unwritable_path_error_names_the_path_and_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "a plain file").unwrap();
    let path = blocker.join("queue.sqlite3");
    let msg = open_error(&path).await;
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.to_lowercase().contains("not a directory"), "{msg}");
}

#[tokio::test]
async fn a_directory_as_the_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let msg = open_error(dir.path()).await;
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("is a directory"), "{msg}");
}

#[tokio::test]
async fn corrupt_file_error_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    std::fs::write(&path, "this is not a database\n".repeat(400)).unwrap();
    let msg = open_error(&path).await;
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("not a SQLite database"), "{msg}");
}

#[tokio::test]
async fn file_from_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    drop(open_at(&path, BackendOptions::default()).await);
    let newer = SCHEMA_VERSION + 1;
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();
    let msg = open_error(&path).await;
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("schema version {newer}")), "{msg}");
}

#[tokio::test]
async fn reopening_a_current_file_keeps_its_schema_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    let b = open_at(&path, BackendOptions::default()).await;
    b.record(vec![Increment::counter(counters::RECEIVED)])
        .await
        .unwrap();
    drop(b);
    let b = open_at(&path, BackendOptions::default()).await;
    assert_eq!(b.metrics().await.unwrap().counter(counters::RECEIVED), 1);
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}

#[tokio::test]
async fn dropping_the_backend_closes_the_file_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    let b = open_at(&path, BackendOptions::default()).await;
    b.enqueue(vec![ev("kept")]).await.unwrap();
    let wal = dir.path().join("queue.sqlite3-wal");
    assert!(wal.exists(), "WAL mode while open");
    drop(b);
    // SQLite checkpoints and removes the WAL when the last connection closes.
    eventually(
        "the backend's threads to close their connections once it is dropped",
        Duration::from_secs(10),
        || async { (!wal.exists()).then_some(()) },
    )
    .await;
    let b = open_at(&path, BackendOptions::default()).await;
    assert_eq!(b.depths().await.unwrap().queue, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_changes_nothing_and_leaves_other_work_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    let b = open_at(&path, BackendOptions::default()).await;
    // A row this build cannot read back (an empty event id), as a damaged file might hold.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO queue (event_id, payload, failures, visible_at) VALUES ('', '{}', 0, 0)",
            [],
        )
        .unwrap();
    let err = b
        .claim_batch("c1", 10, Duration::ZERO, &CancellationToken::new())
        .await
        .expect_err("the unreadable row fails the claim");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // The failed claim leased nothing: the row is still visible to the next claim.
    let next_visible: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT visible_at FROM queue WHERE event_id = ''",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(next_visible, 0);
    assert_eq!(
        b.enqueue(vec![ev("fine")]).await.unwrap(),
        [EnqueueOutcome::Accepted]
    );
    assert_eq!(b.depths().await.unwrap().queue, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_enqueue_leaves_no_mark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    let b = open_at(&path, BackendOptions::default()).await;
    let mark = || Some(DeliveryMark::new("msg_fail", Duration::from_secs(60)).unwrap());
    // Every queue insert fails, after the delivery mark was written in the same transaction.
    // (Short-lived second connections, as another process would hold them.)
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON queue BEGIN SELECT RAISE(ABORT, 'disk says no'); END;",
        )
        .unwrap();
    b.enqueue_delivery(vec![ev("f1")], mark())
        .await
        .expect_err("the insert fails");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("DROP TRIGGER refuse;")
        .unwrap();
    assert_eq!(
        b.enqueue_delivery(vec![ev("f1")], mark()).await.unwrap(),
        [EnqueueOutcome::Accepted],
        "the retry of a failed delivery is stored"
    );
    assert_eq!(
        b.enqueue_delivery(vec![ev("f2")], mark()).await.unwrap(),
        [EnqueueOutcome::DuplicateDelivery]
    );
}

/// Set in a copy of this test binary started as another process on the queue file.
const PEER_FILE: &str = "CONFORMANCE_SQLITE_PEER_FILE";

/// Another process opens the file, reads the idempotency marks and closes: what a consumer
/// does when it stops. Returns the ids it saw.
fn marks_seen_by_another_process(path: &Path) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "another_process_closing_the_file_loses_nothing_accepted_after",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PEER_FILE, path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The test harness may print its own words before the line on the same line.
    stdout
        .lines()
        .find_map(|l| Some(l[l.find("seen: ")? + "seen: ".len()..].to_string()))
        .unwrap_or_else(|| panic!("no marks in {stdout}"))
}

/// Each SQLite connection of a process holds POSIX locks on the file, which the operating
/// system drops for the whole process when any descriptor of that file is closed. The backend
/// must never close one of its own: without its lock, the last other process to close the
/// file thinks it is alone, checkpoints and deletes the WAL the backend still writes to, and
/// what the backend commits after that is answered but never reaches the file.
#[tokio::test]
async fn another_process_closing_the_file_loses_nothing_accepted_after() {
    if let Some(path) = std::env::var_os(PEER_FILE) {
        let c = rusqlite::Connection::open(PathBuf::from(path)).unwrap();
        let ids: Vec<String> = c
            .prepare("SELECT event_id FROM seen ORDER BY event_id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        println!("seen: {}", ids.join(","));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.sqlite3");
    let b = open_at(&path, BackendOptions::default()).await;
    b.enqueue(vec![ev("a")]).await.unwrap();
    assert_eq!(marks_seen_by_another_process(&path), "a");
    assert_eq!(
        b.enqueue(vec![ev("b")]).await.unwrap(),
        [EnqueueOutcome::Accepted]
    );
    assert_eq!(
        marks_seen_by_another_process(&path),
        "a,b",
        "an accepted event is in the file for every other process"
    );
    assert!(
        dir.path().join("queue.sqlite3-wal").exists(),
        "the WAL stays while the backend is open"
    );
}
