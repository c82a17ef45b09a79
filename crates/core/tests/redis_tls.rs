//! `rediss://`: the backend conformance suite over TLS, mutual TLS, and the ways a TLS setup
//! goes wrong failing at connect, fast, with one sentence.
mod common;

use std::time::{Duration, Instant};

use common::conformance::backend_conformance;
use pipeline_core::backend::redis::RedisBackend;
use pipeline_core::backend::*;
use pipeline_core::config::RedisTlsFiles;
use pipeline_core::testkit::RedisTls;

/// Longest a failing connect may take: the connect is bounded by timeouts, never a hang.
const FAIL_FAST: Duration = Duration::from_secs(5);

type TlsHarness = common::redis_harness::RedisHarness<RedisTls>;

/// `None` (the test is skipped) when redis-server is not installed and CI is not set.
fn start() -> Option<TlsHarness> {
    let server = RedisTls::start().unwrap_or_else(|e| panic!("{e}"))?;
    let (url, files) = (server.url(), server.files());
    Some(TlsHarness::new(server, url, files))
}

backend_conformance!(match start() {
    Some(h) => h,
    None => return,
});

/// Connects with `files`, expecting a failure within [`FAIL_FAST`]; its message.
async fn connect_fails(url: &str, files: &RedisTlsFiles) -> String {
    let started = Instant::now();
    let result = RedisBackend::connect(url, "tls", files, BackendOptions::default()).await;
    let elapsed = started.elapsed();
    let Err(e) = result else {
        panic!("connect to {url} with {files:?} succeeded");
    };
    assert!(elapsed < FAIL_FAST, "took {elapsed:?}: {e}");
    let message = e.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_connects_with_the_client_certificate_only() {
    let Some(server) = RedisTls::start_mutual().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let backend = RedisBackend::connect(
        &server.url(),
        "mtls",
        &server.files(),
        BackendOptions::default(),
    )
    .await
    .unwrap();
    backend.ping().await.unwrap();
    assert_eq!(backend.depths().await.unwrap().queue, 0);

    let without_client_cert = RedisTlsFiles {
        ca_cert: Some(server.ca_cert()),
        ..RedisTlsFiles::default()
    };
    let message = connect_fails(&server.url(), &without_client_cert).await;
    assert!(message.contains("connect"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_fast_with_one_sentence() {
    let Some(server) = RedisTls::start().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let files = RedisTlsFiles {
        ca_cert: Some(server.write_unrelated_ca().unwrap()),
        ..RedisTlsFiles::default()
    };
    let message = connect_fails(&server.url(), &files).await;
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains(&server.url()), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_redis_to_the_tls_port_fails_fast() {
    let Some(server) = RedisTls::start().unwrap_or_else(|e| panic!("{e}")) else {
        return;
    };
    let url = format!("redis://127.0.0.1:{}/", server.port());
    let message = connect_fails(&url, &RedisTlsFiles::default()).await;
    assert!(message.contains(&url), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_does_not_hang_the_handshake() {
    // Accepts the TCP connection (the backlog does) but never answers the TLS hello.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("rediss://{}/", silent.local_addr().unwrap());
    let message = connect_fails(&url, &RedisTlsFiles::default()).await;
    assert!(message.contains(&url), "{message}");
}

#[tokio::test]
async fn an_unreadable_ca_file_is_named() {
    let missing = std::env::temp_dir().join("pipeline-no-such-ca.pem");
    let files = RedisTlsFiles {
        ca_cert: Some(missing.clone()),
        ..RedisTlsFiles::default()
    };
    let message = connect_fails("rediss://127.0.0.1:1/", &files).await;
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn a_client_certificate_without_its_key_is_refused() {
    let files = RedisTlsFiles {
        client_cert: Some("client.pem".into()),
        ..RedisTlsFiles::default()
    };
    let message = connect_fails("rediss://127.0.0.1:1/", &files).await;
    assert!(message.contains("DAY15_REDIS_CLIENT_KEY"), "{message}");
}
