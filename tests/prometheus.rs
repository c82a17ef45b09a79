//! The shipped monitoring files (`deploy/prometheus/`, `deploy/grafana/pipeline.json`) against
//! the real tools: `promtool` checks the rules and runs their unit tests, then a real
//! `prometheus` server scrapes a running pipeline with the shipped scrape config and evaluates
//! every expression of the rules and the dashboard through its HTTP API.
//! With its window and `for:` shortened, the "no consumer progress" alert goes pending once
//! the only consumer is stopped while events wait.
//!
//! Needs `promtool` and `prometheus` (Debian package `prometheus`). Locally the tests are
//! skipped with a message when they are missing; under `CI=true` that is a failure (`.ci/run`
//! installs them).
//!
//! An expression built only on metric names the webhook's `/metrics` exposes must return
//! data; one naming a metric not exposed (yet) must still evaluate without error.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use common::*;
use pipeline_core::testkit::free_port;
use serde_json::Value;

const START: Duration = Duration::from_secs(30);
/// Scrapes and rule evaluations on a loaded machine.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(60);
/// What the dashboard's `$__rate_interval` stands for here: many 1s scrapes.
const RATE_INTERVAL: &str = "30s";

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A program of the `prometheus` package, in `/usr/bin` or on PATH; `None` (with a message)
/// when it is missing on a developer's machine.
fn tool_or_skip(name: &str) -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin").join(name);
    let found = if fixed.is_file() {
        Some(fixed)
    } else {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    };
    if found.is_none() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "{name} is missing (neither /usr/bin/{name} nor on PATH): \
             .ci/run installs it with `apt-get install prometheus`"
        );
        eprintln!(
            "SKIPPED: {name} is not installed (apt-get install prometheus); test did not run"
        );
    }
    found
}

fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo_file("deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

#[test]
fn promtool_accepts_the_config_and_rules_and_their_unit_tests_pass() {
    let Some(promtool) = tool_or_skip("promtool") else {
        return;
    };
    run_ok(&promtool, &["check", "rules", "alerts.yml"]);
    run_ok(&promtool, &["check", "config", "prometheus.yml"]);
    let out = run_ok(&promtool, &["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every `expr` of the dashboard's panels, with Grafana's interval variable filled in.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/pipeline.json"))
        .expect("read deploy/grafana/pipeline.json");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(
        dash["__inputs"][0]["name"], "DS_PROMETHEUS",
        "the datasource is an import input"
    );
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut exprs = Vec::new();
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{panel}");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            exprs.push(expr.replace("$__rate_interval", RATE_INTERVAL));
        }
    }
    assert!(
        !exprs.iter().any(|e| e.contains('$')),
        "an unknown variable: {exprs:?}"
    );
    exprs
}

/// The metric names an expression reads (`day15_*`, `process_*`).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    // Outside quotes only: a label value such as "/webhook/events" names no metric.
    let mut quoted = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            quoted = !quoted;
        }
        if !quoted && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("day15_") || word.starts_with("process_") {
            names.push(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

/// Whether the exposition text has a sample of metric `name` (histogram series included).
fn exposed(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
    })
}

struct PromApi {
    base: String,
    http: reqwest::blocking::Client,
}

impl PromApi {
    fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .ok()?;
        r.json().ok()
    }

    /// The instant vector of `expr`; panics with Prometheus's error when it does not evaluate.
    fn query(&self, expr: &str) -> Vec<Value> {
        let answer = eventually("Prometheus to answer a query", START, || {
            self.get("/api/v1/query", &[("query", expr)])
        });
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// A `prometheus` server scraping `p` every second with the shipped scrape config (pointed at
/// the pipeline's port) and evaluating the rules `alerts` every second; returns once it is ready.
fn start_prometheus(p: &Pipeline, prometheus: &Path, alerts: &str) -> (Proc, PromApi) {
    let shipped = std::fs::read_to_string(repo_file("deploy/prometheus/prometheus.yml"))
        .expect("read prometheus.yml");
    for needle in [
        "127.0.0.1:5015",
        "scrape_interval: 15s",
        "evaluation_interval: 15s",
    ] {
        assert!(shipped.contains(needle), "prometheus.yml lost {needle:?}");
    }
    let config = shipped
        .replace("127.0.0.1:5015", &format!("127.0.0.1:{}", p.port))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    let dir = p.dir.path();
    std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
    std::fs::write(dir.join("alerts.yml"), alerts).expect("write alerts.yml");
    let port = free_port().expect("a free port");
    let args = [
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = p.spawn_program(prometheus, "prometheus", &args);
    let api = PromApi {
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client"),
    };
    eventually("Prometheus to be ready", START, || {
        let r = api.http.get(format!("{}/-/ready", api.base)).send().ok()?;
        r.status().is_success().then_some(())
    });
    (server, api)
}

#[test]
fn prometheus_scrapes_the_pipeline_and_every_rule_and_panel_query_evaluates() {
    let (Some(prometheus), Some(_)) = (tool_or_skip("prometheus"), tool_or_skip("promtool")) else {
        return;
    };
    let p = Pipeline::sqlite();
    let _orchestrator = p.spawn("orchestrator", &[]);
    p.wait_healthy(START);
    let samples = sample_events();
    for e in &samples {
        let (status, body) = p.post("/webhook/events", e);
        assert_eq!(status, 202, "{body}");
    }
    p.wait_stat("processed", samples.len() as u64, START);

    let alerts = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml"))
        .expect("read alerts.yml");
    let (server, api) = start_prometheus(&p, &prometheus, &alerts);

    // Enough scrapes of the final figures for every rate window to hold several samples.
    let processed = samples.len().to_string();
    eventually(
        "Prometheus to hold several scrapes of the processed events",
        SCRAPE_DEADLINE,
        || {
            let full = api.query("day15_events_processed_total");
            let value = full.first()?["value"][1].as_str()?.to_string();
            let scrapes = api.query("count_over_time(day15_events_processed_total[30s])");
            let n: f64 = scrapes.first()?["value"][1].as_str()?.parse().ok()?;
            (value == processed && n >= 5.0).then_some(())
        },
    );
    let up = api.query(r#"up{job="pipeline"}"#);
    assert_eq!(up.len(), 1, "{up:?}\n{}", server.output());
    assert_eq!(up[0]["value"][1], "1", "{up:?}");

    let metrics = p
        .http
        .get(p.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .expect("GET /metrics");

    // The rules: each evaluated by the server itself without error.
    let groups = eventually("every rule to be evaluated", SCRAPE_DEADLINE, || {
        let answer = api.get("/api/v1/rules", &[])?;
        let groups = answer["data"]["groups"].as_array()?.clone();
        let rules: Vec<Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
    });
    assert_eq!(groups.len(), 6, "{groups:?}");
    let mut rule_exprs = Vec::new();
    for rule in &groups {
        assert_eq!(rule["health"], "ok", "{rule}");
        assert!(
            rule["annotations"]["runbook"]
                .as_str()
                .is_some_and(|r| r.ends_with("#alerts-what-to-do")),
            "{rule}"
        );
        assert!(rule["annotations"]["summary"].is_string(), "{rule}");
        let expr = rule["query"].as_str().expect("rule query").to_string();
        // An alert expression is a condition: a healthy pipeline answers it with nothing.
        api.query(&expr);
        rule_exprs.push(expr);
    }
    // A healthy pipeline fires nothing.
    let alerts = api.get("/api/v1/alerts", &[]).expect("GET /api/v1/alerts");
    let firing: Vec<&Value> = alerts["data"]["alerts"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["state"] == "firing").collect())
        .unwrap_or_default();
    assert!(firing.is_empty(), "{firing:?}");

    // Every metric the rules and panels read that the webhook exposes is scraped under that name.
    let dashboard = dashboard_exprs();
    let mut checked_names = 0;
    for name in rule_exprs
        .iter()
        .chain(&dashboard)
        .flat_map(|e| metric_names(e))
    {
        if exposed(&metrics, &name) {
            assert!(!api.query(&name).is_empty(), "{name} was not scraped");
            checked_names += 1;
        }
    }
    assert!(checked_names > 0);

    // The panels: data wherever every metric a panel query reads exists today.
    let mut with_data = 0;
    for expr in &dashboard {
        let result = api.query(expr);
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr} reads no pipeline metric");
        if names.iter().all(|n| exposed(&metrics, n)) {
            assert!(!result.is_empty(), "{expr} returned no data");
            with_data += 1;
        }
    }
    eprintln!(
        "{} panel queries evaluated, {with_data} with data; {} rules evaluated; \
         {checked_names} metric references scraped",
        dashboard.len(),
        rule_exprs.len()
    );
    assert!(with_data >= 10, "only {with_data} panel queries had data");
}

/// The state (`pending`, `firing`) of alert `name` in the server's active alerts; `None` when
/// it is not active.
fn alert_state(api: &PromApi, name: &str) -> Option<String> {
    let answer = eventually("Prometheus to list its alerts", START, || {
        api.get("/api/v1/alerts", &[])
    });
    assert_eq!(answer["status"], "success", "{answer}");
    answer["data"]["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .and_then(|a| a["state"].as_str().map(str::to_string))
}

/// The "no consumer progress" alert, with its window and `for:` shortened: quiet while the one
/// consumer works, pending once it is stopped and events wait in the queue.
#[test]
fn stopping_the_consumer_makes_the_consumers_stalled_alert_pending() {
    let (Some(prometheus), Some(_)) = (tool_or_skip("prometheus"), tool_or_skip("promtool")) else {
        return;
    };
    const ALERT: &str = "PipelineConsumersStalled";
    let shipped = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml"))
        .expect("read alerts.yml");
    let start = shipped
        .find(&format!("- alert: {ALERT}"))
        .unwrap_or_else(|| panic!("alerts.yml lost {ALERT}"));
    let end = shipped[start + 1..]
        .find("- alert:")
        .map_or(shipped.len(), |n| start + 1 + n);
    let rule = &shipped[start..end];
    for needle in [
        "increase(day15_events_processed_total[5m]) == 0",
        "day15_queue_depth > 0",
        "for: 5m",
    ] {
        assert!(rule.contains(needle), "{ALERT} lost {needle:?}:\n{rule}");
    }
    // A 10s window over 1s scrapes, and pending long enough to be seen before it fires.
    let quick = rule.replace("[5m]", "[10s]").replace("for: 5m", "for: 1m");
    let alerts = format!("{}{quick}{}", &shipped[..start], &shipped[end..]);

    // The webhook and one consumer on their own: no orchestrator to restart a stopped consumer.
    let p = Pipeline::sqlite();
    let _webhook = p.spawn("webhook", &[]);
    p.wait_healthy(START);
    let mut consumer = p.spawn("consumer", &[]);
    let before = sample_events();
    for e in &before {
        let (status, body) = p.post("/webhook/events", e);
        assert_eq!(status, 202, "{body}");
    }
    p.wait_stat("processed", before.len() as u64, START);
    p.wait_queue_empty(START);

    let (server, api) = start_prometheus(&p, &prometheus, &alerts);
    // Evaluated over several scrapes of the processed events, with the consumer working: quiet.
    let processed = before.len().to_string();
    eventually(
        "Prometheus to hold several scrapes of the processed events",
        SCRAPE_DEADLINE,
        || {
            let full = api.query("day15_events_processed_total");
            let value = full.first()?["value"][1].as_str()?.to_string();
            let scrapes = api.query("count_over_time(day15_events_processed_total[10s])");
            let n: f64 = scrapes.first()?["value"][1].as_str()?.parse().ok()?;
            (value == processed && n >= 3.0).then_some(())
        },
    );
    eventually(&format!("{ALERT} to be evaluated"), SCRAPE_DEADLINE, || {
        let answer = api.get("/api/v1/rules", &[])?;
        let rule = answer["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .find(|r| r["name"] == ALERT)?;
        (rule["health"] == "ok" && rule["lastEvaluation"].is_string()).then_some(())
    });
    // Two more evaluations, each after a scrape of the working pipeline.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        alert_state(&api, ALERT),
        None,
        "{ALERT} is active while the consumer works"
    );

    consumer.signal(Signal::SIGTERM);
    let status = consumer
        .wait_timeout(Duration::from_secs(15))
        .expect("the consumer stops after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", consumer.output());
    // The same events under new ids: queued, and nothing left to process them.
    let after: Vec<Value> = before
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e["event_id"] = Value::String(format!(
                "{}_stalled",
                e["event_id"].as_str().unwrap_or("evt")
            ));
            e
        })
        .collect();
    for e in &after {
        let (status, body) = p.post("/webhook/events", e);
        assert_eq!(status, 202, "{body}");
    }
    assert!(
        p.health()["queue_depth"].as_u64() >= Some(1),
        "the events wait in the queue: {}",
        p.health()
    );

    let state = eventually(&format!("{ALERT} to go pending"), SCRAPE_DEADLINE, || {
        alert_state(&api, ALERT).filter(|s| s == "pending" || s == "firing")
    });
    eprintln!("{ALERT} is {state} with the consumer stopped");
    assert_eq!(
        p.stats()["processed"].as_u64(),
        Some(before.len() as u64),
        "nothing processed the new events\n{}",
        server.output()
    );
}
