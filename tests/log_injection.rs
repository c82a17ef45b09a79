//! End-to-end: what a hostile sender puts in an event cannot forge, colour or flood the log
//! file written by the webhook and consumer processes, and the file is rotated and private.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

const START: Duration = Duration::from_secs(30);

/// A whole, well-formed record, preceded by a line break.
const FORGED: &str = "\n2025-12-16 19:30:15,234 - webhook - INFO - forged";

/// The record bound of the formatter (`pipeline_core::logging::MAX_RECORD_CHARS`).
const MAX_LINE_CHARS: usize = 2000;

/// Whether `line` starts as every record does: `YYYY-MM-DD HH:MM:SS,mmm - <component> - `.
fn has_record_prefix(line: &str) -> bool {
    let b = line.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        r.into_iter()
            .all(|i| b.get(i).is_some_and(u8::is_ascii_digit))
    };
    digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b' ')
        && digits(11..13)
        && digits(14..16)
        && digits(17..19)
        && b.get(19) == Some(&b',')
        && digits(20..23)
        && ["webhook", "consumer", "orchestrator"]
            .iter()
            .any(|c| line[23..].starts_with(&format!(" - {c} - ")))
}

/// Stops the pipeline so every process has flushed its log.
fn stop(mut o: Proc) {
    o.signal(Signal::SIGTERM);
    let status = o.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "orchestrator did not exit 0: {status:?}\n{}",
        o.output()
    );
}

#[test]
fn attacker_values_never_forge_colour_or_flood_the_log() {
    let p = Pipeline::sqlite();
    let o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);

    let esc = "\u{1b}[2J\u{1b}[31m";
    let hostile = format!("{FORGED}{esc}\u{85}\u{2028}\u{202e}");
    let mut type_event = event("evt_type", "x", json!({}));
    type_event["event_type"] = Value::String(format!("x{FORGED}"));
    let mut user_event = event("evt_user", "user_signup", json!({ "source": hostile }));
    user_event["user_id"] = Value::String(format!("u{FORGED}{esc}"));
    let long_event = event(
        "evt_long",
        "user_signup",
        json!({ "source": format!("{hostile}{}", "s".repeat(900_000)) }),
    );
    // Refused at the door (event type, user id and dimension values have a charset and a
    // length), so their only record is the rejection, which names the event id.
    for e in [&type_event, &user_event, &long_event] {
        let (status, body) = p.post("/webhook/events", e);
        assert_eq!(status, 400, "{body}");
    }
    // Rejected: an event_id with the forged record, and one of 900 KB.
    let mut bad = event("x", "user_signup", json!({}));
    bad["event_id"] = Value::String(format!("bad{FORGED}{esc}"));
    let mut huge = event("x", "user_signup", json!({}));
    huge["event_id"] = Value::String(format!("{hostile}{}", "i".repeat(900_000)));
    for e in [bad, huge] {
        let (status, body) = p.post("/webhook/batch", &json!({ "events": [e] }));
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["results"]["errors"], 1, "{body}");
    }
    p.wait_stat("rejected", 5, START);
    stop(o);

    let bytes = std::fs::read(p.log_path()).expect("log file");
    assert!(!bytes.contains(&0x1b), "ESC reached the log file");
    let text = String::from_utf8(bytes).expect("the log is UTF-8");
    for c in ['\u{85}', '\u{2028}', '\u{202e}', '\r'] {
        assert!(!text.contains(c), "{c:?} reached the log file");
    }
    for line in text.lines() {
        assert!(
            has_record_prefix(line),
            "not a record of its own: {line:.300}"
        );
        assert!(
            !line.starts_with("2025-12-16 19:30:15,234"),
            "forged: {line}"
        );
        assert!(
            line.chars().count() <= MAX_LINE_CHARS,
            "a line of {} characters: {line:.300}",
            line.chars().count()
        );
    }
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    // Every forged value is in the line of its record, escaped, and nowhere else.
    assert_eq!(
        count("forged"),
        count("\\n2025-12-16 19:30:15,234 - webhook - INFO - forged")
    );
    // One rejection record per refused event, and nothing of them is processed.
    for id in ["evt_type", "evt_user", "evt_long"] {
        assert_eq!(
            count(&format!("Event rejected: event {id} is invalid")),
            1,
            "{id}:\n{text:.4000}"
        );
    }
    assert_eq!(count("Event rejected: batch index 0 (bad\\n2025"), 1);
    assert_eq!(count("Event rejected: batch index 0 (\\n2025"), 1);
    // A long value is cut on its own, so the rest of its record is kept.
    let line_of = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_default()
    };
    let rejected = line_of("Event rejected: batch index 0 (\\n2025");
    assert!(rejected.contains("…): "), "{rejected:.300}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("file").permissions().mode() & 0o777
}

#[test]
fn the_log_file_rotates_under_its_name_and_stays_private() {
    let mut p = Pipeline::sqlite();
    p.set("DAY15_LOG_MAX_BYTES", "20000");
    p.set("DAY15_LOG_MAX_FILES", "3");
    let o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let log = p.log_path();
    let rotated = |n: u32| log.with_file_name(format!("pipeline.log.{n}"));

    // Webhook and consumer lines, from two processes, until the file was rotated twice.
    let mut sent = 0;
    eventually("the log to be rotated twice", START, || {
        let events: Vec<Value> = (0..50)
            .map(|i| event(&format!("evt_rot_{sent}_{i}"), "user_signup", json!({})))
            .collect();
        sent += 1;
        let (status, body) = p.post("/webhook/batch", &json!({ "events": events }));
        assert_eq!(status, 202, "{body}");
        rotated(2).exists().then_some(())
    });
    // Still written at its name after the rotations, by both processes (a process may write
    // to the file just rotated for up to a second before it reopens the name: send again).
    let mut polls = 0;
    eventually(
        "both records of a new event in the current file",
        START,
        || {
            if polls % 50 == 0 {
                let id = format!("evt_after_{polls}");
                let (status, body) =
                    p.post("/webhook/events", &event(&id, "user_signup", json!({})));
                assert_eq!(status, 202, "{body}");
            }
            polls += 1;
            let current = std::fs::read_to_string(&log).ok()?;
            current
                .lines()
                .filter_map(|l| l.split_once("Event received: user_signup (evt_after_"))
                .filter_map(|(_, rest)| rest.split_once(')'))
                .any(|(n, _)| current.contains(&format!("Processed user_signup (evt_after_{n})")))
                .then_some(())
        },
    );
    stop(o);

    assert!(!rotated(3).exists(), "more than DAY15_LOG_MAX_FILES files");
    let logs: Vec<_> = std::fs::read_dir(p.dir.path())
        .expect("pipeline dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("pipeline.log") && !n.ends_with(".lock"))
        .collect();
    assert!(logs.len() <= 3, "{logs:?}");
    for path in [log.clone(), rotated(1), rotated(2)] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        let text = std::fs::read_to_string(&path).expect("log");
        assert!(text.lines().all(has_record_prefix), "{}", path.display());
    }
}

/// `n` usage events with ids `<prefix>0`, `<prefix>1`, …
fn usage_events(prefix: &str, n: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            event(
                &format!("{prefix}{i}"),
                "usage_tracked",
                json!({"feature": "f"}),
            )
        })
        .collect()
}

/// The sum of the counts in `… and N more <what> in the last second` lines, and how many such
/// lines there are.
fn summarised(text: &str, what: &str) -> (u64, usize) {
    let tail = format!(" more {what} in the last second");
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_suffix(&tail))
        .filter_map(|l| l.rsplit_once("… and ").map(|(_, n)| n.replace(',', "")))
        .filter_map(|n| n.parse().ok())
        .collect();
    (counts.iter().sum(), counts.len())
}

/// Past DAY15_LOG_EVENTS_PER_SECOND, each process writes one line a second counting the
/// events it did not write a line for: every event is in the log once, as its own line or in
/// a count, in the webhook's and in the consumer's records.
#[test]
fn past_the_per_second_budget_events_are_counted_in_one_line_a_second() {
    const EVENTS: u64 = 300;
    let mut p = Pipeline::sqlite();
    p.set("DAY15_LOG_EVENTS_PER_SECOND", "20");
    let o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let events = usage_events("evt_budget_", EVENTS);
    for chunk in events.chunks(100) {
        let (status, body) = p.post("/webhook/batch", &json!({ "events": chunk }));
        assert_eq!(status, 202, "{body}");
    }
    // The counts are written when their second ends, with no further event needed.
    eventually(
        "every event logged or counted by both processes",
        START,
        || {
            let text = p.log();
            let own = |needle: &str| text.lines().filter(|l| l.contains(needle)).count() as u64;
            let received = own(" - webhook - INFO - Event received: usage_tracked (evt_budget_");
            let processed = own(" - consumer - INFO - Processed usage_tracked (evt_budget_");
            let (r, r_lines) = summarised(&text, "events received");
            let (c, c_lines) = summarised(&text, "events processed");
            (received + r == EVENTS && processed + c == EVENTS && r_lines > 0 && c_lines > 0)
                .then_some(())
        },
    );
    stop(o);
    let text = p.log();
    let (_, lines) = summarised(&text, "events received");
    let received = text
        .lines()
        .filter(|l| l.contains("Event received: "))
        .count();
    assert!(
        received >= 20 && received <= 20 * (lines + 1),
        "{received} lines"
    );
    let summary = text
        .lines()
        .find(|l| l.ends_with(" more events received in the last second"))
        .unwrap_or_default();
    assert!(summary.contains(" - webhook - INFO - … and "), "{summary}");
}

/// A consumer's batch lines take the same budget, a batch at a time: every batch is in the log
/// once, as its two lines or in a count, and each `Processing batch` line written has its
/// `Batch complete` line.
#[test]
fn past_the_per_second_budget_batches_are_counted_in_one_line_a_second() {
    const EVENTS: u64 = 60;
    let mut p = Pipeline::sqlite();
    p.set("DAY15_LOG_EVENTS_PER_SECOND", "3");
    p.set("DAY15_BATCH_SIZE", "1");
    let o = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let events = usage_events("evt_batches_", EVENTS);
    let (status, body) = p.post("/webhook/batch", &json!({ "events": events }));
    assert_eq!(status, 202, "{body}");
    eventually("every batch logged or counted", START, || {
        let text = p.log();
        let own = |needle: &str| text.lines().filter(|l| l.contains(needle)).count() as u64;
        let started = own(" - consumer - INFO - Processing batch of 1 events");
        let completed = own(" - consumer - INFO - Batch complete: 1 success, 0 failed");
        let (held, lines) = summarised(&text, "batches processed");
        (started + held == EVENTS && completed == started && lines > 0).then_some(())
    });
    stop(o);
}
