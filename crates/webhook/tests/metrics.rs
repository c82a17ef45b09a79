//! `GET /metrics`: every family an operator alerts on is present, and the whole text passes
//! `promtool check metrics` (skipped with a message when promtool is absent, except under CI).

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::{event, ServerHandle};
use pipeline_core::analytics::{maps, Increment};

/// Runs `promtool check metrics` on `text`; `None` when promtool is not installed.
fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), report))
}

#[tokio::test]
async fn metrics_carry_process_http_backend_and_type_families_and_pass_promtool() {
    let server = ServerHandle::start().await;
    server
        .backend
        .record(vec![
            Increment::new(maps::EVENTS_BY_TYPE, "user_signup", 2.0),
            // As a consumer writes its batch figures (crates/consumer/src/figures.rs).
            Increment::new("consumer_batch_size:consumer-1", "10", 4.0),
            Increment::latency("consumer_batch_duration_us:consumer-1", 2_000),
            Increment::new("consumer_progress:consumer-1", "last_unix_seconds", 1.7e9),
        ])
        .await
        .unwrap();
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_m1"))
            .await
            .status(),
        202
    );
    assert_eq!(server.get("/no/such/path/123").await.status(), 404);
    assert_eq!(server.get("/health").await.status(), 200);
    // The first scrape's own request is counted once it is answered: the second one sees it.
    server.get("/metrics").await;
    let r = server.get("/metrics").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();

    let version = env!("CARGO_PKG_VERSION");
    for line in [
        format!("day15_build_info{{version=\"{version}\"}} 1"),
        "day15_backend_up 1".into(),
        "day15_http_requests_total{route=\"/webhook/events\",status=\"202\"} 1".into(),
        "day15_http_requests_total{route=\"other\",status=\"404\"} 1".into(),
        "day15_http_requests_total{route=\"/metrics\",status=\"200\"} 1".into(),
        "day15_http_request_duration_seconds_count{route=\"/webhook/events\"} 1".into(),
        "day15_http_request_duration_seconds_bucket{route=\"/health\",le=\"+Inf\"} 1".into(),
        "day15_backend_call_duration_seconds_count{operation=\"enqueue\"} 1".into(),
        "day15_backend_errors_total{operation=\"enqueue\"} 0".into(),
        "day15_backend_errors_total{operation=\"ping\"} 0".into(),
        "day15_events_processed_by_type_total{type=\"user_signup\"} 2".into(),
        "# TYPE process_cpu_seconds_total counter".into(),
        "# TYPE day15_queue_oldest_age_seconds gauge".into(),
        "day15_consumer_batch_size_count{consumer=\"consumer-1\"} 4".into(),
        "day15_consumer_batch_duration_seconds_count{consumer=\"consumer-1\"} 1".into(),
        "day15_consumer_last_progress_timestamp_seconds{consumer=\"consumer-1\"} 1700000000".into(),
        "# TYPE process_resident_memory_bytes gauge".into(),
        "# TYPE process_open_fds gauge".into(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    assert!(
        !text.contains("/no/such/path"),
        "unmatched paths must not become label values"
    );
    let rss = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(rss.is_some_and(|b| b > 0), "{text}");

    // One event queued, received moments ago (nothing consumes in this test).
    let age = text
        .lines()
        .find_map(|l| l.strip_prefix("day15_queue_oldest_age_seconds "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(age.is_some_and(|a| (0.0..30.0).contains(&a)), "{age:?}");

    match promtool_check(&text) {
        Some((ok, report)) => assert!(ok, "promtool check metrics failed:\n{report}\n{text}"),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("promtool is required under CI=true (Debian package `prometheus`)")
        }
        None => eprintln!("promtool not installed: skipping `promtool check metrics`"),
    }
}

/// A consumer running on the webhook's backend writes its memory, descriptors, CPU time and
/// its own backend calls there; the webhook exports them labelled with the consumer's name,
/// the calls in the same families as its own.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn metrics_carry_a_running_consumers_process_figures_and_backend_calls() {
    use std::time::Duration;

    let server = ServerHandle::start().await;
    let mut config = common::test_config();
    config.consumer.batch_timeout = Duration::from_millis(100);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let consumer = tokio::spawn(consumer::run(
        config,
        server.backend.clone(),
        shutdown.clone(),
    ));
    // An event for the consumer to claim and settle.
    assert_eq!(
        server
            .post("/webhook/events", &event("evt_calls"))
            .await
            .status(),
        202
    );

    let families = [
        "day15_consumer_resident_memory_bytes{consumer=",
        "day15_consumer_open_fds{consumer=",
        "day15_consumer_cpu_seconds_total{consumer=",
    ];
    let settles = |text: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(
                    "day15_backend_call_duration_seconds_count{operation=\"settle\",consumer=",
                )
            })
            .and_then(|rest| rest.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let text = pipeline_core::testkit::wait::eventually(
        "the consumer's process figures and settle calls on /metrics",
        Duration::from_secs(15),
        || async {
            let text = server.get("/metrics").await.text().await.ok()?;
            (families
                .iter()
                .all(|f| text.lines().any(|l| l.starts_with(f)))
                && settles(&text).is_some_and(|n| n > 0))
            .then_some(text)
        },
    )
    .await;
    let consumer_series = |prefix: &str| {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(",consumer=\""))
            .count()
    };
    assert_eq!(
        consumer_series("day15_backend_call_duration_seconds_count{operation=\"claim\""),
        1,
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .starts_with("day15_backend_errors_total{operation=\"settle\",consumer=\"")
            && l.ends_with("} 0")),
        "{text}"
    );
    // The webhook's own calls keep their series, without a consumer label.
    assert!(
        text.lines()
            .any(|l| l == "day15_backend_call_duration_seconds_count{operation=\"enqueue\"} 1"),
        "{text}"
    );
    for (family, kind) in [
        ("day15_consumer_resident_memory_bytes", "gauge"),
        ("day15_consumer_open_fds", "gauge"),
        ("day15_consumer_cpu_seconds_total", "counter"),
    ] {
        assert!(
            text.lines().any(|l| l == format!("# TYPE {family} {kind}")),
            "{family} {kind} missing in:\n{text}"
        );
    }
    let value = |family: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{family}{{consumer=")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert!(
        value("day15_consumer_resident_memory_bytes").is_some_and(|b| b > 0.0),
        "{text}"
    );
    assert!(
        value("day15_consumer_open_fds").is_some_and(|n| n >= 3.0),
        "{text}"
    );
    assert!(
        value("day15_consumer_cpu_seconds_total").is_some_and(|s| s >= 0.0),
        "{text}"
    );

    match promtool_check(&text) {
        Some((ok, report)) => assert!(ok, "promtool check metrics failed:\n{report}\n{text}"),
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("promtool is required under CI=true (Debian package `prometheus`)")
        }
        None => eprintln!("promtool not installed: skipping `promtool check metrics`"),
    }

    shutdown.cancel();
    consumer
        .await
        .expect("consumer does not panic")
        .expect("consumer stops cleanly");
}
