//! Connection hygiene of the public endpoint, as an attacker would probe it over raw TCP:
//! sockets that connect and send nothing, idle kept-alive connections, more connections than
//! allowed, and a process out of file descriptors.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{test_config, ServerHandle};
use pipeline_core::config::Config;
use pipeline_core::testkit::wait::eventually;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_webhook");

/// The host:port of the server, for raw TCP.
fn address(server: &ServerHandle) -> String {
    server.base.trim_start_matches("http://").to_string()
}

/// Reads until the peer closes (end of stream or reset) or `deadline` passes; returns what
/// arrived and whether the peer closed.
async fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

/// Reads one whole HTTP/1 response with a `content-length` (the connection stays open).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("a content-length");
            if body.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the response arrives")
            .expect("the connection stays open");
        assert!(n > 0, "closed before the whole response: {text:?}");
        out.extend_from_slice(&buf[..n]);
    }
}

/// `GET /health` on a fresh connection; its status line, or `None` when refused or closed.
async fn health_on_fresh_connection(address: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let (response, _) =
        read_until_closed(&mut stream, Instant::now() + Duration::from_secs(3)).await;
    let status = response.lines().next()?.to_string();
    (!status.is_empty()).then_some(status)
}

fn config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config();
    edit(&mut c);
    c
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_head_deadline() {
    let head = Duration::from_secs(1);
    let server = ServerHandle::start_with(config(|c| c.http.request_head_timeout = head)).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(address(&server)).await.unwrap());
    }
    let started = Instant::now();
    for stream in &mut silent {
        let (sent, closed) =
            read_until_closed(stream, started + head + Duration::from_secs(3)).await;
        assert!(
            closed,
            "a silent socket is still open after {:?}",
            started.elapsed()
        );
        assert_eq!(sent, "", "a silent socket gets no answer, only closed");
    }
    // The deadline, not an eager close, ended them (connected just before `started`).
    let elapsed = started.elapsed();
    assert!(elapsed >= head - Duration::from_millis(200), "{elapsed:?}");
    assert_eq!(server.get("/health").await.status(), 200);
}

#[tokio::test]
async fn a_silent_http2_connection_is_closed_at_the_head_deadline() {
    let head = Duration::from_secs(1);
    let server = ServerHandle::start_with(config(|c| c.http.request_head_timeout = head)).await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    let started = Instant::now();
    // The HTTP/2 preface and an empty SETTINGS frame, then never a request.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut stream, started + head + Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    assert!(
        closed,
        "the HTTP/2 connection is still open after {elapsed:?}"
    );
    assert!(elapsed >= head - Duration::from_millis(200), "{elapsed:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let idle = Duration::from_secs(1);
    // A head timeout far longer, so only the keep-alive timeout can close it in time.
    let server = ServerHandle::start_with(config(|c| {
        c.http.keepalive_timeout = idle;
        c.http.request_head_timeout = Duration::from_secs(30);
    }))
    .await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let response = read_response(&mut stream).await;
        assert!(response.starts_with("HTTP/1.1 200 "), "{response:?}");
    }
    let answered = Instant::now();
    let (more, closed) =
        read_until_closed(&mut stream, answered + idle + Duration::from_secs(3)).await;
    let elapsed = answered.elapsed();
    assert!(
        closed,
        "the idle connection is still open after {elapsed:?}"
    );
    assert_eq!(more, "");
    assert!(
        elapsed >= idle - Duration::from_millis(200),
        "closed after only {elapsed:?}"
    );
}

#[tokio::test]
async fn a_streaming_answer_is_not_cut_off_as_idle() {
    let idle = Duration::from_millis(500);
    let server = ServerHandle::start_with(config(|c| {
        c.http.keepalive_timeout = idle;
        c.http.request_head_timeout = idle;
    }))
    .await;
    let mut stream = TcpStream::connect(address(&server)).await.unwrap();
    stream
        .write_all(b"GET /analytics/stream HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    // A request in flight for several times both timeouts.
    let (sent, closed) = read_until_closed(&mut stream, Instant::now() + 5 * idle).await;
    assert!(sent.starts_with("HTTP/1.1 200 "), "{sent:?}");
    assert!(
        !closed,
        "the stream was closed while being answered: {sent:?}"
    );
}

#[tokio::test]
async fn beyond_max_connections_a_new_connection_is_closed_at_once() {
    let server = ServerHandle::start_with(config(|c| c.http.max_connections = 3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(address(&server)).await.unwrap());
    }
    // Accepted in order, so this one comes after the three that fill the limit.
    let mut refused = TcpStream::connect(address(&server)).await.unwrap();
    let started = Instant::now();
    let (sent, closed) = read_until_closed(&mut refused, started + Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    assert!(closed && sent.is_empty(), "after {elapsed:?}: {sent:?}");
    assert!(
        elapsed < Duration::from_secs(1),
        "refused only after {elapsed:?}"
    );

    // Still full: another request is refused too, until a slot is freed.
    assert_eq!(health_on_fresh_connection(&address(&server)).await, None);
    drop(held.pop());
    let address = address(&server);
    eventually(
        "/health to be answered on the freed slot",
        Duration::from_secs(5),
        || async {
            health_on_fresh_connection(&address)
                .await
                .is_some_and(|s| s.starts_with("HTTP/1.1 200 "))
                .then_some(())
        },
    )
    .await;
}

/// Kills and reaps the child when dropped, so a failing test leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `webhook` binary under a limit of 64 file descriptors, in `dir`.
fn webhook_with_few_fds(dir: &Path, port: u16, log: &Path) -> KillOnDrop {
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\"")
        .arg(BIN)
        .env_clear()
        .current_dir(dir)
        .env("DAY15_QUEUE_BACKEND", "memory")
        .env("DAY15_WEBHOOK_PORT", port.to_string())
        .env("DAY15_LOG_FILE", log)
        .env("DAY15_REQUEST_HEAD_TIMEOUT_SECONDS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn accept_error_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Cannot accept"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn out_of_file_descriptors_the_log_stays_quiet_and_health_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("pipeline.log");
    let port = pipeline_core::testkit::free_port().unwrap();
    let _webhook = webhook_with_few_fds(dir.path(), port, &log);
    let address = format!("127.0.0.1:{port}");
    let healthy = || async {
        health_on_fresh_connection(&address)
            .await
            .is_some_and(|s| s.contains(" 200 "))
            .then_some(())
    };
    eventually("the webhook to start", Duration::from_secs(10), healthy).await;

    // More silent sockets than the process has descriptors.
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(TcpStream::connect(&address).await.unwrap());
    }
    eventually(
        "the webhook to run out of descriptors",
        Duration::from_secs(5),
        || async { (!accept_error_lines(&log).is_empty()).then_some(()) },
    )
    .await;
    // The deadline cuts the silent sockets off, freeing descriptors for real clients.
    eventually(
        "/health to be answered again after the flood",
        Duration::from_secs(20),
        healthy,
    )
    .await;

    // A few lines a second at most (each line carries the count of those not logged).
    let lines = accept_error_lines(&log);
    let mut per_second = std::collections::BTreeMap::<String, usize>::new();
    for line in &lines {
        *per_second
            .entry(line.chars().take(19).collect())
            .or_default() += 1;
    }
    assert!(
        per_second.values().all(|&n| n <= 2),
        "too many accept errors logged per second: {lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("Too many open files")),
        "{lines:#?}"
    );
    drop(silent);
}
