//! A client that sends uniquely-identified events under load and remembers what the pipeline
//! answered for each id, and the exactly-once check that compares that record with what the
//! consumers applied.
//!
//! Every event is a `usage_tracked` event whose `feature` is its own id, so the backend's
//! `usage_events_by_feature` map says, per id, how many times it was applied: a lost event
//! is an id missing there, a double application an id counted twice.
//!
//! The client behaves as a real one must: an id counts as accepted only once the pipeline has
//! confirmed it is stored — a 202 batch answer counting it accepted, or a duplicate when the
//! id is sent again later. Anything else (a 503, a connection refused or cut mid-request)
//! leaves the id unconfirmed: it may or may not have been stored, so [`Ledger::confirm`] sends
//! it again once the fault is over, and a duplicate answer then proves the first attempt was
//! stored although its answer was lost. Either way the id must be applied exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pipeline_core::analytics::{counters, maps};
use serde_json::{json, Value};

use super::{eventually, Pipeline};

/// How long a client waits after an error before its next request (a real client backs off).
const ERROR_BACKOFF: Duration = Duration::from_millis(20);
/// One request's longest wait; the webhook answers far sooner, even during an outage.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The event sent for `id`: applying it adds 1 to its own feature, and nothing else depends
/// on the id, so a resend carries exactly the same event.
pub fn load_event(id: &str) -> Value {
    json!({
        "event_id": id,
        "event_type": "usage_tracked",
        "user_id": "load_user",
        "timestamp": "2025-12-16T10:00:00Z",
        "metadata": {"feature": id, "quantity": 1},
    })
}

/// What the client knows about the ids it sent.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Every id sent at least once.
    pub sent: BTreeSet<String>,
    /// Ids the pipeline confirmed as stored: they must be applied exactly once.
    pub accepted: BTreeSet<String>,
    /// Sent, but the answer did not say whether they were stored.
    pub unconfirmed: BTreeSet<String>,
    /// Ids sent again by [`Ledger::confirm`] (all that were unconfirmed).
    pub resent: u64,
    /// Of those, how many the pipeline had stored after all (answered as duplicates): the
    /// first attempt's answer was lost, not the event.
    pub resent_were_stored: u64,
    /// Responses by status; 0 counts requests that got no response at all.
    pub statuses: BTreeMap<u16, u64>,
    /// The slowest response seen with each status (0: the slowest failed request).
    pub slowest: BTreeMap<u16, Duration>,
}

impl Ledger {
    /// Records one `/webhook/batch` exchange for `ids`.
    fn record(&mut self, ids: Vec<String>, status: u16, body: &Value, elapsed: Duration) {
        *self.statuses.entry(status).or_default() += 1;
        let slowest = self.slowest.entry(status).or_default();
        *slowest = (*slowest).max(elapsed);
        if stored_all(status, body, ids.len()) {
            for id in ids {
                self.unconfirmed.remove(&id);
                self.accepted.insert(id);
            }
        } else {
            for id in ids {
                if !self.accepted.contains(&id) {
                    self.unconfirmed.insert(id);
                }
            }
        }
    }

    /// Adds what another client (with ids of its own) sent and was told, so one check covers
    /// several clients, e.g. one per webhook process.
    pub fn absorb(&mut self, other: Ledger) {
        self.sent.extend(other.sent);
        self.accepted.extend(other.accepted);
        self.unconfirmed.extend(other.unconfirmed);
        self.resent += other.resent;
        self.resent_were_stored += other.resent_were_stored;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (status, d) in other.slowest {
            let slowest = self.slowest.entry(status).or_default();
            *slowest = (*slowest).max(d);
        }
    }

    /// Requests answered with a status in `range` (e.g. every 5xx).
    pub fn count_in(&self, range: std::ops::RangeInclusive<u16>) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| range.contains(s))
            .map(|(_, n)| n)
            .sum()
    }

    /// Sends every unconfirmed id again until the pipeline confirms it is stored (accepted
    /// now, or a duplicate because the first attempt was stored after all).
    pub fn confirm(&mut self, p: &Pipeline, timeout: Duration) {
        let client = client();
        let url = p.url("/webhook/batch");
        let ids: Vec<String> = self.unconfirmed.iter().cloned().collect();
        for chunk in ids.chunks(100) {
            self.resent += chunk.len() as u64;
            eventually("the webhook to confirm resent events", timeout, || {
                let (status, body, elapsed) = post_batch(&client, &url, chunk);
                if stored_all(status, &body, chunk.len()) {
                    self.resent_were_stored += body["results"]["duplicates"].as_u64().unwrap_or(0);
                }
                self.record(chunk.to_vec(), status, &body, elapsed);
                let done = chunk.iter().all(|id| self.accepted.contains(id));
                if !done {
                    std::thread::sleep(ERROR_BACKOFF);
                }
                done.then_some(())
            });
        }
    }
}

/// Whether a batch answer says every one of its `n` events is stored.
fn stored_all(status: u16, body: &Value, n: usize) -> bool {
    let results = &body["results"];
    let stored =
        results["accepted"].as_u64().unwrap_or(0) + results["duplicates"].as_u64().unwrap_or(0);
    status == 202 && stored == n as u64 && results["errors"].as_u64() == Some(0)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("http client")
}

/// One `/webhook/batch` request: status (0 when there was no response), body, time taken.
fn post_batch(
    client: &reqwest::blocking::Client,
    url: &str,
    ids: &[String],
) -> (u16, Value, Duration) {
    let events: Vec<Value> = ids.iter().map(|id| load_event(id)).collect();
    let start = Instant::now();
    let result = client.post(url).json(&json!({ "events": events })).send();
    match result {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.json().unwrap_or(Value::Null);
            (status, body, start.elapsed())
        }
        Err(_) => (0, Value::Null, start.elapsed()),
    }
}

/// Sender threads posting batches of fresh ids to `/webhook/batch` until stopped (or until
/// `limit` ids were sent).
pub struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    threads: Vec<JoinHandle<()>>,
}

/// The shape of a [`Load`].
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    /// Concurrent sender threads, each with its own connection.
    pub senders: usize,
    /// Events per request.
    pub batch: usize,
    /// Total ids to send; `None`: until [`Load::finish`].
    pub limit: Option<u64>,
    /// Pause of each sender between requests, to keep the backlog within what the
    /// consumers drain.
    pub pause: Duration,
}

/// Two clients posting batches of 50 back to back: load that keeps requests in flight.
pub fn busy_clients() -> LoadShape {
    LoadShape {
        senders: 2,
        batch: 50,
        limit: None,
        pause: Duration::from_millis(5),
    }
}

impl Load {
    /// Starts sending ids `<prefix><n>`.
    pub fn start(p: &Pipeline, prefix: &str, shape: LoadShape) -> Load {
        Self::start_to(&p.url("/webhook/batch"), prefix, shape)
    }

    /// As [`Load::start`], to the batch endpoint at `url` (e.g. a second webhook process).
    pub fn start_to(url: &str, prefix: &str, shape: LoadShape) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let next = Arc::new(AtomicU64::new(0));
        let threads = (0..shape.senders)
            .map(|_| {
                let (stop, ledger, next) = (stop.clone(), ledger.clone(), next.clone());
                let url = url.to_string();
                let prefix = prefix.to_string();
                std::thread::spawn(move || {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        let first = next.fetch_add(shape.batch as u64, Ordering::Relaxed);
                        let end = match shape.limit {
                            Some(limit) if first >= limit => break,
                            Some(limit) => (first + shape.batch as u64).min(limit),
                            None => first + shape.batch as u64,
                        };
                        let ids: Vec<String> =
                            (first..end).map(|n| format!("{prefix}{n:07}")).collect();
                        lock(&ledger).sent.extend(ids.iter().cloned());
                        let (status, body, elapsed) = post_batch(&client, &url, &ids);
                        let ok = stored_all(status, &body, ids.len());
                        lock(&ledger).record(ids, status, &body, elapsed);
                        if !ok {
                            std::thread::sleep(ERROR_BACKOFF);
                        } else if !shape.pause.is_zero() {
                            std::thread::sleep(shape.pause);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ledger,
            threads,
        }
    }

    /// Ids confirmed as stored so far.
    pub fn accepted(&self) -> usize {
        lock(&self.ledger).accepted.len()
    }

    /// The ids confirmed as stored so far.
    pub fn accepted_ids(&self) -> BTreeSet<String> {
        lock(&self.ledger).accepted.clone()
    }

    /// Requests answered with `status` so far (0: no response).
    pub fn responses(&self, status: u16) -> u64 {
        lock(&self.ledger)
            .statuses
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until at least `n` ids are confirmed as stored.
    pub fn wait_accepted(&self, n: usize, timeout: Duration) {
        eventually(&format!("{n} events accepted"), timeout, || {
            (self.accepted() >= n).then_some(())
        });
    }

    /// Stops the senders after their request in flight and returns the ledger.
    pub fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("sender thread");
        }
        match Arc::try_unwrap(self.ledger) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(_) => panic!("sender threads still hold the ledger"),
        }
    }

    /// Waits for a limited load to send all its ids, then returns the ledger.
    pub fn wait_done(self, timeout: Duration) -> Ledger {
        eventually("the load to finish", timeout, || {
            self.threads.iter().all(|t| t.is_finished()).then_some(())
        });
        self.finish()
    }
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

/// The outcome of one fault scenario: what the client sent and got confirmed, against what
/// the consumers applied.
#[derive(Debug)]
pub struct Figures {
    pub backend: String,
    pub fault: String,
    pub sent: usize,
    pub accepted: usize,
    /// Ids applied at least once.
    pub applied: usize,
    /// Accepted ids never applied.
    pub lost: usize,
    /// Ids applied more than once.
    pub double: usize,
    /// Ids applied that the client never sent.
    pub unknown: usize,
    /// Scenario-specific figures, printed after the common ones.
    pub notes: Vec<(String, String)>,
}

impl Figures {
    pub fn note(&mut self, name: &str, value: impl ToString) -> &mut Self {
        self.notes.push((name.to_string(), value.to_string()));
        self
    }

    /// Prints [`Figures::line`] on its own line.
    pub fn report(&self) {
        println!("{}", self.line());
    }

    /// The single parseable line `RELIABILITY.md` is built from.
    pub fn line(&self) -> String {
        let mut line = format!(
            "RELIABILITY backend={} fault={} sent={} accepted={} applied={} lost={} double={} unknown={}",
            self.backend, self.fault, self.sent, self.accepted, self.applied, self.lost, self.double, self.unknown
        );
        for (k, v) in &self.notes {
            line.push_str(&format!(" {k}={v}"));
        }
        line
    }
}

/// Sends any unconfirmed ids again, waits until the queue is empty, then checks that every
/// accepted id was applied exactly once and nothing else was: per id through the backend, in
/// total through `/analytics` and `/stats`, and that the DLQ is empty. Returns the figures
/// (a failed check shows their line); the scenario prints them with [`Figures::report`] once
/// it has added its own.
pub fn check_exactly_once(p: &Pipeline, ledger: &mut Ledger, fault: &str) -> Figures {
    check_applied(p, ledger, fault, &BTreeSet::new())
}

/// [`check_exactly_once`] where the ids in `may_be_lost` (accepted before a store lost its
/// data by its own settings, e.g. Redis restarted without persistence) may be missing; they
/// must still never be applied twice. Every other accepted id must be applied exactly once.
pub fn check_applied(
    p: &Pipeline,
    ledger: &mut Ledger,
    fault: &str,
    may_be_lost: &BTreeSet<String>,
) -> Figures {
    ledger.confirm(p, Duration::from_secs(60));
    p.wait_queue_empty(Duration::from_secs(180));

    let metrics = p.backend_metrics();
    let per_id = metrics.map(maps::USAGE_EVENTS_BY_FEATURE);
    let applications: f64 = per_id.values().sum();
    let missing = |id: &&String| per_id.get(*id).copied().unwrap_or(0.0) < 1.0;
    let lost: Vec<&String> = ledger
        .accepted
        .iter()
        .filter(|id| !may_be_lost.contains(*id))
        .filter(missing)
        .collect();
    let lost_with_store = may_be_lost.iter().filter(missing).count();
    let double: Vec<(&String, &f64)> = per_id.iter().filter(|(_, n)| **n > 1.0).collect();
    let unknown: Vec<&String> = per_id
        .keys()
        .filter(|id| !ledger.sent.contains(*id))
        .collect();

    let analytics = p.get_ok("/analytics");
    let stats = p.get_ok("/stats");
    let health = p.get_ok("/health");
    let mut notes = Vec::from([
        ("resent".to_string(), ledger.resent.to_string()),
        (
            "resent_were_stored".to_string(),
            ledger.resent_were_stored.to_string(),
        ),
        (
            "http_5xx_not_503".to_string(),
            (ledger.count_in(500..=502) + ledger.count_in(504..=599)).to_string(),
        ),
    ]);
    if !may_be_lost.is_empty() {
        notes.push((
            "lost_with_store_data".to_string(),
            lost_with_store.to_string(),
        ));
    }
    let figures = Figures {
        backend: p.backend_name(),
        fault: fault.to_string(),
        sent: ledger.sent.len(),
        accepted: ledger.accepted.len(),
        applied: per_id.len(),
        lost: lost.len(),
        double: double.len(),
        unknown: unknown.len(),
        notes,
    };
    let line = figures.line();
    fn sample<'a>(v: &[&'a String]) -> Vec<&'a str> {
        v.iter().take(5).map(|s| s.as_str()).collect()
    }
    assert!(
        lost.is_empty(),
        "{line}\naccepted but never applied: {:?}",
        sample(&lost)
    );
    assert!(
        double.is_empty(),
        "{line}\napplied more than once: {:?}",
        &double[..double.len().min(5)]
    );
    assert!(
        unknown.is_empty(),
        "{line}\napplied but never sent: {:?}",
        sample(&unknown)
    );
    let total = (ledger.accepted.len() - lost_with_store) as u64;
    assert_eq!(
        per_id.len() as u64,
        total,
        "{line}\nevery confirmed id applied"
    );
    assert_eq!(
        applications as u64, total,
        "{line}\none application per accepted id"
    );
    assert_eq!(
        metrics.counter(counters::PROCESSED),
        total,
        "{line}\nbackend processed counter"
    );
    assert_eq!(
        analytics["events_processed"], total,
        "{line}\n/analytics events_processed"
    );
    assert_eq!(
        analytics["usage"]["quantity"], total,
        "{line}\n/analytics usage quantity"
    );
    assert_eq!(stats["processed"], total, "{line}\n/stats processed");
    assert_eq!(
        health["dlq_depth"], 0,
        "{line}\nnothing dead-lettered: {health}"
    );
    figures
}
