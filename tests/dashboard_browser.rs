//! End-to-end: `/dashboard`, opened in a real headless Chromium against the real pipeline,
//! shows the figures of the events that were sent, then follows new events live (over
//! `/analytics/stream`) without a reload. The browser is driven over the DevTools protocol;
//! the final page is saved as `target/dashboard-screenshot.png`.
//!
//! Needs Chromium (`/usr/bin/chromium` or `chromium` on PATH). Locally the test is skipped
//! with a message when it is missing; under `CI=true` that is a failure (`.ci/run` installs it).

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

const START: Duration = Duration::from_secs(30);
/// How long the page may take to show what the pipeline already processed.
const PAGE: Duration = Duration::from_secs(15);
/// Width of the saved screenshot, in CSS pixels (the README's picture).
const SCREENSHOT_WIDTH: u32 = 1280;

// ---- What the test sends, and what it expects the page to show (computed here, in cents).

/// One event of the known mix.
#[derive(Clone, Copy)]
enum Sent {
    Signup {
        source: &'static str,
        country: &'static str,
    },
    Subscription {
        plan: &'static str,
        amount_cents: u64,
        annual: bool,
    },
    Usage {
        feature: &'static str,
        quantity: u64,
    },
}

impl Sent {
    fn to_event(self, id: &str) -> Value {
        match self {
            Sent::Signup { source, country } => event(
                id,
                "user_signup",
                json!({"source": source, "country": country, "email": format!("{id}@example.com")}),
            ),
            Sent::Subscription {
                plan,
                amount_cents,
                annual,
            } => event(
                id,
                "subscription_created",
                json!({
                    "plan": plan,
                    "amount": amount_cents as f64 / 100.0,
                    "billing_cycle": if annual { "annual" } else { "monthly" },
                }),
            ),
            Sent::Usage { feature, quantity } => event(
                id,
                "usage_tracked",
                json!({"feature": feature, "quantity": quantity}),
            ),
        }
    }
}

/// The figures the dashboard should show for everything sent so far.
#[derive(Debug, Default, Clone, PartialEq)]
struct Expected {
    signups: u64,
    subscriptions: u64,
    usage_quantity: u64,
    mrr_cents: u64,
    /// plan → (count, MRR in cents)
    plans: BTreeMap<&'static str, (u64, u64)>,
}

impl Expected {
    fn add(&mut self, sent: &[Sent]) {
        for s in sent {
            match *s {
                Sent::Signup { .. } => self.signups += 1,
                Sent::Subscription {
                    plan,
                    amount_cents,
                    annual,
                } => {
                    // Annual plans count a twelfth; the mix keeps them whole cents.
                    assert!(!annual || amount_cents % 12 == 0, "annual {amount_cents}");
                    let monthly = if annual {
                        amount_cents / 12
                    } else {
                        amount_cents
                    };
                    self.subscriptions += 1;
                    self.mrr_cents += monthly;
                    let row = self.plans.entry(plan).or_default();
                    row.0 += 1;
                    row.1 += monthly;
                }
                Sent::Usage { quantity, .. } => self.usage_quantity += quantity,
            }
        }
    }
}

/// `123456` cents as `$1,234.56`, as a person reads money in the page's `en-US` locale.
fn dollars(cents: u64) -> String {
    let digits: Vec<char> = (cents / 100).to_string().chars().collect();
    let groups: Vec<String> = digits
        .rchunks(3)
        .rev()
        .map(|group| group.iter().collect())
        .collect();
    format!("${}.{:02}", groups.join(","), cents % 100)
}

/// A raw `data-value` money figure in cents.
fn cents(raw: &str) -> Option<u64> {
    let v: f64 = raw.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| (v * 100.0).round() as u64)
}

fn signup(source: &'static str, country: &'static str) -> Sent {
    Sent::Signup { source, country }
}

fn monthly(plan: &'static str, amount_cents: u64) -> Sent {
    Sent::Subscription {
        plan,
        amount_cents,
        annual: false,
    }
}

fn annual(plan: &'static str, amount_cents: u64) -> Sent {
    Sent::Subscription {
        plan,
        amount_cents,
        annual: true,
    }
}

fn usage(feature: &'static str, quantity: u64) -> Sent {
    Sent::Usage { feature, quantity }
}

/// Signups from three sources, monthly and annual subscriptions on three plans, usage.
fn first_mix() -> Vec<Sent> {
    vec![
        signup("organic", "US"),
        signup("organic", "GB"),
        signup("organic", "US"),
        signup("google_ads", "DE"),
        signup("google_ads", "US"),
        signup("referral", "IN"),
        monthly("starter", 1_900),
        monthly("pro", 4_999),
        monthly("pro", 4_999),
        annual("pro", 47_988),
        annual("enterprise", 120_000),
        usage("api_call", 10),
        usage("api_call", 15),
        usage("export", 3),
    ]
}

/// More of each, with a new plan and an MRR past a thousand dollars.
fn second_mix() -> Vec<Sent> {
    vec![
        signup("twitter", "US"),
        signup("organic", "FR"),
        annual("enterprise", 1_440_000),
        monthly("team", 9_900),
        usage("export", 2),
    ]
}

// ---- Chromium and a minimal DevTools protocol client.

/// Chromium at `/usr/bin/chromium`, else `chromium` or `chromium-browser` on PATH.
fn find_chromium() -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/chromium");
    if fixed.is_file() {
        return Some(fixed.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The browser to use; `None` (with a message) when it is missing on a developer's machine.
fn chromium_or_skip() -> Option<PathBuf> {
    let found = find_chromium();
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "chromium is missing (neither /usr/bin/chromium nor on PATH): \
             .ci/run installs it with `apt-get install chromium`"
        );
        eprintln!(
            "SKIPPED: chromium is not installed (apt-get install chromium); \
             the dashboard browser test did not run"
        );
    }
    found
}

/// A headless Chromium this test started, in its own process group so that dropping it kills
/// the browser and every helper process it forked, by that group's id.
struct Browser {
    child: Child,
    /// Profile and stderr log; removed once the browser is gone.
    dir: tempfile::TempDir,
    /// `host:port` of the DevTools HTTP endpoint.
    devtools: String,
}

impl Browser {
    fn launch(exe: &Path, url: &str) -> Browser {
        let dir = tempfile::tempdir().expect("browser temp dir");
        let log = File::create(dir.path().join("chromium.log")).expect("browser log");
        let profile = dir.path().join("profile");
        let child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            // Days and hours on the page are local: one zone, whatever the machine's.
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let mut browser = Browser {
            child,
            dir,
            devtools: String::new(),
        };
        browser.devtools = browser.wait_devtools_address();
        browser
    }

    /// What Chromium printed on stderr.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromium.log")).unwrap_or_default()
    }

    /// Reads `DevTools listening on ws://HOST:PORT/devtools/browser/…` from stderr.
    fn wait_devtools_address(&mut self) -> String {
        let deadline = Instant::now() + PAGE;
        loop {
            let log = self.log();
            let address = log
                .lines()
                .find_map(|l| l.split("DevTools listening on ws://").nth(1))
                .and_then(|rest| rest.split('/').next());
            if let Some(address) = address {
                return address.to_string();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("chromium exited ({status}) before DevTools listened:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "chromium printed no DevTools address within {PAGE:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A DevTools connection to the tab showing a URL that contains `url_part`.
    fn tab(&self, url_part: &str) -> Cdp {
        let http = reqwest::blocking::Client::new();
        let list = format!("http://{}/json/list", self.devtools);
        let ws_url = eventually("the dashboard tab in /json/list", PAGE, || {
            let tabs: Value = http.get(&list).send().ok()?.json().ok()?;
            tabs.as_array()?
                .iter()
                .find(|t| {
                    t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.contains(url_part))
                })
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_string)
        });
        Cdp::connect(&ws_url)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // The group id is the browser's own PID (process_group(0) at spawn).
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// One DevTools protocol session over a WebSocket: commands answered in order of their id,
/// events (none are enabled) skipped.
struct Cdp {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Cdp {
    fn connect(ws_url: &str) -> Cdp {
        let (mut socket, _) = tungstenite::connect(ws_url)
            .unwrap_or_else(|e| panic!("DevTools connection to {ws_url}: {e}"));
        if let MaybeTlsStream::Plain(tcp) = socket.get_mut() {
            // A browser that stopped answering fails the test instead of hanging it.
            tcp.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("read timeout");
        }
        Cdp { socket, next_id: 0 }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(command.to_string()))
            .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
        loop {
            let message = self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("DevTools {method}: {e}"));
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
            if reply["id"] != id {
                continue;
            }
            if let Some(error) = reply.get("error") {
                panic!("DevTools {method} failed: {error}");
            }
            return reply["result"].clone();
        }
    }

    /// Evaluates a JavaScript expression in the page and returns its value as JSON.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("the page threw evaluating {expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// The whole page as a PNG, `width` CSS pixels wide and as tall as its content.
    fn full_page_png(&mut self, width: u32) -> Vec<u8> {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .as_u64()
            .expect("page height");
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64")
    }
}

// ---- Reading the dashboard.

/// Everything the test reads from the page, in one evaluation (see the page's test contract:
/// each figure has its formatted text as content and the raw number in `data-value`).
const READ_PAGE: &str = r#"(() => {
  const q = (id) => document.querySelector(`[data-testid="${id}"]`);
  if (!q('dashboard') || !q('mrr')) return null; // still loading
  const figure = (id) => { const el = q(id); return { value: el.dataset.value, text: el.textContent.trim() }; };
  const plans = {};
  for (const row of document.querySelectorAll('tr[data-plan]')) {
    plans[row.dataset.plan] = {
      name: row.querySelector('[data-testid="plan-name"]').textContent.trim(),
      count: row.dataset.count,
      mrr: row.dataset.mrr,
      count_text: row.querySelector('[data-testid="plan-count"]').textContent.trim(),
      mrr_text: row.querySelector('[data-testid="plan-mrr"]').textContent.trim(),
    };
  }
  return {
    updates: Number(q('dashboard').dataset.updates),
    status: q('connection-status').dataset.value,
    empty_hidden: q('empty-state').hidden,
    mrr: figure('mrr'),
    signups: figure('signups-total'),
    subscriptions: figure('subscriptions-total'),
    usage: figure('usage-quantity'),
    plans,
    marker: window.__sameDocumentMarker ?? null,
  };
})()"#;

/// Whether the page shows exactly the expected figures, raw numbers and formatted text alike.
fn shows(page: &Value, want: &Expected) -> bool {
    let raw = |figure: &str| page[figure]["value"].as_str().unwrap_or("");
    let text = |figure: &str| page[figure]["text"].as_str().unwrap_or("");
    let plans_match = page["plans"].as_object().is_some_and(|rows| {
        rows.len() == want.plans.len()
            && want.plans.iter().all(|(plan, (count, mrr))| {
                let row = &rows.get(*plan).cloned().unwrap_or(Value::Null);
                row["name"] == *plan
                    && row["count"].as_str() == Some(&*count.to_string())
                    && row["count_text"].as_str() == Some(&*count.to_string())
                    && row["mrr"].as_str().and_then(cents) == Some(*mrr)
                    && row["mrr_text"] == dollars(*mrr)
            })
    });
    cents(raw("mrr")) == Some(want.mrr_cents)
        && text("mrr") == dollars(want.mrr_cents)
        && raw("signups") == want.signups.to_string()
        && text("signups") == want.signups.to_string()
        && raw("subscriptions") == want.subscriptions.to_string()
        && raw("usage") == want.usage_quantity.to_string()
        && plans_match
}

/// Polls the page until `done` holds, failing with the last reading after `timeout`.
fn wait_page(cdp: &mut Cdp, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let page = cdp.eval(READ_PAGE);
        if !page.is_null() && done(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for the page to show {what}; it shows:\n{page:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Posts every event (one request each) and checks each was accepted.
fn send(p: &Pipeline, prefix: &str, mix: &[Sent]) {
    for (i, sent) in mix.iter().enumerate() {
        let (status, body) = p.post("/webhook/events", &sent.to_event(&format!("{prefix}{i}")));
        assert_eq!(status, 202, "{body}");
    }
}

/// `target/`, found from this test's executable (`target/debug/deps/…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("target directory above target/debug/deps")
        .to_path_buf()
}

#[test]
fn dashboard_shows_what_was_sent_and_follows_new_events_without_a_reload() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let p = Pipeline::sqlite();
    let _orchestrator = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);

    let first = first_mix();
    let mut want = Expected::default();
    want.add(&first);
    send(&p, "dash-a-", &first);
    p.wait_stat("processed", first.len() as u64, START);

    let browser = Browser::launch(&chromium, &p.url("/dashboard"));
    let mut tab = browser.tab("/dashboard");
    let page = wait_page(&mut tab, "the first figures", PAGE, |page| {
        shows(page, &want)
    });
    assert_eq!(page["status"], "live", "the stream is connected: {page:#}");
    assert_eq!(page["empty_hidden"], true, "{page:#}");
    // Spot-check the exact figures a person reads (the mix puts them in the test's own words).
    assert_eq!(page["mrr"]["text"], "$258.97", "{page:#}");
    assert_eq!(page["signups"]["text"], "6", "{page:#}");
    assert_eq!(page["plans"]["pro"]["count"], "3", "{page:#}");
    assert_eq!(page["plans"]["pro"]["mrr_text"], "$139.97", "{page:#}");

    // The page's Content-Security-Policy lets its own inline style sheet and style attributes
    // apply (its inline script evidently runs: the figures above are its work).
    let styled = tab.eval(
        r#"(() => {
          const sprite = document.querySelector('svg[width="0"]');
          const header = document.querySelector('thead th[style]');
          return {
            sheet: getComputedStyle(document.body).fontSize,
            sprite: sprite && getComputedStyle(sprite).position,
            header: header && getComputedStyle(header).textAlign,
          };
        })()"#,
    );
    assert_eq!(
        styled,
        json!({"sheet": "14px", "sprite": "absolute", "header": "left"}),
        "the page's own styles were blocked"
    );

    // A marker in the document survives only if the page is never reloaded.
    tab.eval("window.__sameDocumentMarker = 'first load'");
    let updates_before = page["updates"].as_u64().expect("data-updates");

    let second = second_mix();
    want.add(&second);
    send(&p, "dash-b-", &second);
    p.wait_stat("processed", (first.len() + second.len()) as u64, START);
    let page = wait_page(&mut tab, "the figures after more events", PAGE, |page| {
        shows(page, &want)
    });
    assert_eq!(
        page["marker"], "first load",
        "the page was reloaded: {page:#}"
    );
    assert!(
        page["updates"].as_u64().expect("data-updates") > updates_before,
        "data-updates did not grow from {updates_before}: {page:#}"
    );
    assert_eq!(page["status"], "live", "{page:#}");
    assert_eq!(page["mrr"]["text"], "$1,557.97", "{page:#}");
    assert_eq!(page["signups"]["text"], "8", "{page:#}");
    assert_eq!(page["plans"]["enterprise"]["count"], "2", "{page:#}");
    assert_eq!(
        page["plans"]["enterprise"]["mrr_text"], "$1,300.00",
        "{page:#}"
    );

    // The picture shows the figures at rest, not mid-way through their "changed" flash: the
    // page drops its animations for readers who prefer reduced motion.
    tab.call(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-reduced-motion", "value": "reduce"}]}),
    );
    let png = tab.full_page_png(SCREENSHOT_WIDTH);
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = target_dir().join("dashboard-screenshot.png");
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("screenshot: {}", path.display());
}

/// The 7-day view after signups with timestamps on three past days: exactly three bars, at
/// the right days, with heights in proportion to the counts the test sent.
#[test]
fn the_seven_day_view_shows_a_bar_per_past_day_with_the_right_height() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let p = Pipeline::sqlite();
    let _orchestrator = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);

    // Noon UTC stays on the same calendar day in any zone within ±11 h of UTC.
    let today = chrono::Utc::now().date_naive();
    let sent: [(i64, u64); 3] = [(2, 3), (3, 1), (5, 2)];
    let mut total = 0;
    for (days_ago, count) in sent {
        let noon = (today - chrono::Duration::days(days_ago))
            .and_hms_opt(12, 0, 0)
            .expect("noon")
            .and_utc();
        for i in 0..count {
            let mut e = event(
                &format!("hist-{days_ago}-{i}"),
                "user_signup",
                json!({"source": "organic", "country": "US"}),
            );
            e["timestamp"] = json!(noon.to_rfc3339());
            let (status, body) = p.post("/webhook/events", &e);
            assert_eq!(status, 202, "{body}");
            total += 1;
        }
    }
    p.wait_stat("processed", total, START);

    let browser = Browser::launch(&chromium, &p.url("/dashboard"));
    let mut tab = browser.tab("/dashboard");
    // The reader clicks "7 days" once the page has loaded. The button is in the markup before
    // the page's script listens to it, so a click is repeated until the page took it (the
    // button shows as checked at once); one taken click is never repeated, since each click
    // starts the range's reads again.
    let click = r#"(() => {
      const b = document.querySelector('[data-testid="range-7d"]');
      if (!b) return false;
      if (b.getAttribute('aria-checked') !== 'true') b.click();
      return b.getAttribute('aria-checked') === 'true';
    })()"#;
    let deadline = Instant::now() + PAGE;
    while tab.eval(click) != json!(true) {
        assert!(
            Instant::now() < deadline,
            "the 7-day range could not be chosen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let read_bars = r#"(() => {
      const h = document.querySelector('[data-testid="history"]');
      if (!h || h.dataset.range !== '7d') return null;
      return [...document.querySelectorAll('[data-testid="history-signups"] [data-testid="bar-signups"]')]
        .map((b) => ({ start: b.dataset.start, value: Number(b.dataset.value), height: Number(b.getAttribute('height')) }));
    })()"#;
    let deadline = Instant::now() + PAGE;
    let bars = loop {
        let bars = tab.eval(read_bars);
        let shown: u64 = bars
            .as_array()
            .map(|b| b.iter().filter_map(|x| x["value"].as_u64()).sum())
            .unwrap_or(0);
        if shown == total {
            break bars;
        }
        assert!(
            Instant::now() < deadline,
            "the 7-day view did not show {total} signups: {bars:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let shown = bars.clone();
    let bars = bars.as_array().expect("bars");
    assert_eq!(bars.len(), 7, "one bar slot per day: {shown:#}");
    let tall: Vec<&Value> = bars
        .iter()
        .filter(|b| b["height"].as_f64() > Some(0.0))
        .collect();
    assert_eq!(tall.len(), 3, "three days have signups: {shown:#}");
    // Oldest first: 5, 3 and 2 days ago, so the slots are 1, 3 and 4 of 0..7.
    let by_slot: Vec<u64> = bars
        .iter()
        .map(|b| b["value"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(by_slot, [0, 2, 0, 1, 3, 0, 0], "{shown:#}");
    let peak = tall
        .iter()
        .map(|b| b["height"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    for b in &tall {
        let (value, height) = (b["value"].as_f64().unwrap(), b["height"].as_f64().unwrap());
        assert!(
            (height / peak - value / 3.0).abs() < 0.02,
            "bar of {value} is {height}px against a peak of {peak}px: {shown:#}"
        );
    }
    let label = tab.eval(
        "document.querySelector('.kpi [data-testid=\"subscriptions-total\"]').closest('.kpi').querySelector('.label').textContent.trim()",
    );
    assert_eq!(label, "Subscriptions created");
}

#[test]
fn expected_money_is_written_as_the_page_writes_it() {
    assert_eq!(dollars(0), "$0.00");
    assert_eq!(dollars(1_900), "$19.00");
    assert_eq!(dollars(155_797), "$1,557.97");
    assert_eq!(dollars(123_456_789), "$1,234,567.89");
    assert_eq!(cents("1557.97"), Some(155_797));
    assert_eq!(cents("19"), Some(1_900));
}
