//! The table of every variable: one row each, holding its name, default, what it accepts, its
//! command-line flag and a one-line doc.
//!
//! Everything else about a variable comes from its row: the defaults, validation and its
//! problem messages, the `--help` line of its flag, `.env.example` and
//! `docs/configuration.md`. Rows are validated in table order, which is therefore the order in
//! which problems are reported. Adding a variable means adding a row here, then reading its
//! value where [`super::Config`] is built (`validate.rs`).

use std::time::Duration;

/// What a variable accepts, and so how it is parsed and what its problem message says.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A whole number within `min..=max`.
    Int { min: u64, max: u64 },
    /// A decimal number of `unit`s within `min..=max`, read as a duration.
    Duration { unit: Unit, min: f64, max: f64 },
    /// `true` or `false` (also 1/0, yes/no, on/off, any case); set but empty reads as false.
    Bool,
    /// One of `choices`, any case; each `(alias, choice)` pair accepts `alias` for `choice`.
    OneOf {
        choices: &'static [&'static str],
        aliases: &'static [(&'static str, &'static str)],
    },
    /// Text; when `valid` is given it must accept the value (an empty value is checked as "").
    Text {
        /// What is accepted, in the words of the problem message and the docs.
        allowed: &'static str,
        valid: Option<fn(&str) -> bool>,
    },
}

/// The unit a duration variable is written in (its name ends with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milliseconds,
    Seconds,
    Hours,
}

impl Unit {
    /// Seconds in one unit.
    pub fn seconds(self) -> f64 {
        match self {
            Unit::Milliseconds => 0.001,
            Unit::Seconds => 1.0,
            Unit::Hours => 3600.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Unit::Milliseconds => "milliseconds",
            Unit::Seconds => "seconds",
            Unit::Hours => "hours",
        }
    }

    /// `value` units as a duration; the value was range-checked before.
    pub fn duration(self, value: f64) -> Duration {
        Duration::from_secs_f64(value * self.seconds())
    }
}

/// A row's own command-line flag.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// `--long` name, without the dashes.
    pub long: &'static str,
    /// Placeholder shown in `--help`; `None` for a switch, which sets the variable to `true`.
    pub value_name: Option<&'static str>,
}

/// A condition on another variable under which a row is checked at all.
#[derive(Debug, Clone, Copy)]
pub enum When {
    /// Only when the named variable is unset or empty.
    Unset(&'static str),
    /// Only when the named boolean variable is true.
    Enabled(&'static str),
}

/// The section of `.env.example` (and the docs table) a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Queue,
    Sqlite,
    Redis,
    Listen,
    Consumers,
    Limits,
    Orchestrator,
    Outputs,
    Security,
    Logs,
    Testing,
}

impl Group {
    /// The section heading.
    pub fn title(self) -> &'static str {
        match self {
            Group::Queue => "Queue backend",
            Group::Sqlite => "SQLite queue (DAY15_QUEUE_BACKEND=sqlite)",
            Group::Redis => "Redis queue (DAY15_QUEUE_BACKEND=redis)",
            Group::Listen => "Webhook listen address",
            Group::Consumers => "Consumers",
            Group::Limits => "Webhook limits",
            Group::Orchestrator => "Orchestrator",
            Group::Outputs => "What consumers do besides the analytics",
            Group::Security => "Security",
            Group::Logs => "Logs and metrics",
            Group::Testing => "Testing aids (never in production)",
        }
    }
}

/// One variable: everything the pipeline knows about it.
#[derive(Debug, Clone, Copy)]
pub struct Variable {
    pub name: &'static str,
    /// `None`: unset unless given, which the code reading it handles.
    pub default: Option<&'static str>,
    pub kind: Kind,
    /// `Some`: checked only under this condition (a cross-variable rule).
    pub when: Option<When>,
    pub flag: Option<Flag>,
    pub group: Group,
    /// One line: the `--help` text of the flag and the comment in `.env.example`.
    pub doc: &'static str,
}

impl Variable {
    const fn new(
        group: Group,
        name: &'static str,
        default: Option<&'static str>,
        kind: Kind,
        doc: &'static str,
    ) -> Self {
        Variable {
            name,
            default,
            kind,
            when: None,
            flag: None,
            group,
            doc,
        }
    }

    const fn flag(mut self, long: &'static str, value_name: &'static str) -> Self {
        self.flag = Some(Flag {
            long,
            value_name: Some(value_name),
        });
        self
    }

    const fn switch(mut self, long: &'static str) -> Self {
        self.flag = Some(Flag {
            long,
            value_name: None,
        });
        self
    }

    const fn only_when(mut self, when: When) -> Self {
        self.when = Some(when);
        self
    }
}

const fn int(min: u64, max: u64) -> Kind {
    Kind::Int { min, max }
}

const fn dur(unit: Unit, min: f64, max: f64) -> Kind {
    Kind::Duration { unit, min, max }
}

const fn one_of(choices: &'static [&'static str]) -> Kind {
    Kind::OneOf {
        choices,
        aliases: &[],
    }
}

const fn text(allowed: &'static str, valid: Option<fn(&str) -> bool>) -> Kind {
    Kind::Text { allowed, valid }
}

const HOST: &str = "a host name or IP address";

fn non_empty(s: &str) -> bool {
    !s.is_empty()
}

fn redis_host(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '@', ' '])
}

fn listen_host(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', ' '])
}

/// Empty is allowed (any host). Each entry is a name or an IP address without a port; an IPv6
/// address may be bracketed.
fn host_list(s: &str) -> bool {
    s.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .all(|h| {
            let bare = h
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(h);
            if bare.contains(':') {
                bare.parse::<std::net::Ipv6Addr>().is_ok()
            } else {
                bare.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
            }
        })
}

/// Unset is allowed: the URL is then built from the host/port/db/password variables.
fn redis_url(s: &str) -> bool {
    ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| s.starts_with(scheme))
}

/// One URL, or (for cluster mode) several separated by commas; each must be a Redis URL.
fn redis_urls(s: &str) -> bool {
    s.is_empty() || s.split(',').map(str::trim).all(redis_url)
}

fn http_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn key_prefix(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
}

use Group::*;
use Unit::*;

/// Every variable the pipeline understands, in validation (and documentation) order.
// A table: one row per variable, kept one glance wide rather than one argument per line.
#[rustfmt::skip]
pub const ROWS: &[Variable] = &[
    Variable::new(Queue, "DAY15_QUEUE_BACKEND", None, one_of(&["sqlite", "redis", "memory"]),
        "Queue backend: sqlite, redis or memory (unset: sqlite)")
        .flag("backend", "NAME"),
    Variable::new(Queue, "DAY15_USE_MOCK_REDIS", None, Kind::Bool,
        "Legacy switch of the original, used only when DAY15_QUEUE_BACKEND is unset: true = sqlite, false = redis")
        .only_when(When::Unset("DAY15_QUEUE_BACKEND")),
    Variable::new(Sqlite, "DAY15_SQLITE_PATH", Some("data/day15_queue.sqlite3"), text("a file path", Some(non_empty)),
        "SQLite queue file, shared by the webhook and consumers on one machine")
        .flag("sqlite-path", "PATH"),
    Variable::new(Sqlite, "DAY15_SQLITE_SYNCHRONOUS", Some("full"), one_of(&["full", "normal"]),
        "full: an accepted event survives power loss (fsync per group commit); normal: survives crashes only"),
    Variable::new(Redis, "DAY15_REDIS_PORT", Some("6379"), int(1, 65535),
        "Redis port, used when DAY15_REDIS_URL is unset"),
    Variable::new(Redis, "DAY15_REDIS_DB", Some("0"), int(0, 1_000_000),
        "Redis database number, used when DAY15_REDIS_URL is unset"),
    Variable::new(Redis, "DAY15_REDIS_HOST", Some("localhost"), text(HOST, Some(redis_host)),
        "Redis host, used when DAY15_REDIS_URL is unset")
        .only_when(When::Unset("DAY15_REDIS_URL")),
    Variable::new(Redis, "DAY15_REDIS_PASSWORD", None, text("any text", None),
        "Redis password, used when DAY15_REDIS_URL is unset (empty = none)"),
    Variable::new(Redis, "DAY15_REDIS_MODE", Some("standalone"), one_of(&["standalone", "cluster"]),
        "standalone: one Redis server (or a managed primary); cluster: a Redis Cluster, DAY15_REDIS_URL listing seed nodes"),
    Variable::new(Redis, "DAY15_REDIS_URL", None, text("a redis:// or rediss:// URL; in cluster mode a comma-separated list of them", Some(redis_urls)),
        "Redis URL, redis:// or rediss://; overrides host, port, db and password. Cluster mode: comma-separated seed nodes, any reachable one is enough")
        .flag("redis-url", "URL"),
    Variable::new(Redis, "DAY15_REDIS_PARTITIONS", None, int(1, 1024),
        "Streams the queue is split into, each under its own hash tag (unset: 1 in standalone, 16 in cluster mode); recorded in Redis, every process must use the same"),
    Variable::new(Redis, "DAY15_REDIS_WAIT_REPLICAS", Some("0"), int(0, 16),
        "Replicas that must confirm an event's write (Redis WAIT) before the webhook answers 202; unconfirmed: 503 + Retry-After (0 = do not wait)"),
    Variable::new(Redis, "DAY15_REDIS_WAIT_TIMEOUT_MS", Some("100"), int(1, 500),
        "Longest the webhook waits for DAY15_REDIS_WAIT_REPLICAS confirmations (at most 500: the whole enqueue must answer within the webhook's 800 ms backend timeout)"),
    Variable::new(Redis, "DAY15_REDIS_CA_CERT", None, text("a PEM file path", None),
        "For rediss:// URLs: PEM file of the CA that signed the server's certificate (unset = the system roots)"),
    Variable::new(Redis, "DAY15_REDIS_CLIENT_CERT", None, text("a PEM file path", None),
        "For rediss:// URLs to a server requiring client certificates: PEM certificate chain (with DAY15_REDIS_CLIENT_KEY)"),
    Variable::new(Redis, "DAY15_REDIS_CLIENT_KEY", None, text("a PEM file path", None),
        "Private key (PEM) of DAY15_REDIS_CLIENT_CERT"),
    Variable::new(Redis, "DAY15_KEY_PREFIX", Some("day15"),
        text("1-64 characters of letters, digits, _ - . : (no braces: the prefix becomes a hash tag)", Some(key_prefix)),
        "Prefix of every Redis key; each partition's keys share the hash tag {<prefix>:p<N>} (one partition: {<prefix>})")
        .flag("key-prefix", "PREFIX"),
    Variable::new(Listen, "DAY15_WEBHOOK_HOST", Some("127.0.0.1"), text(HOST, Some(listen_host)),
        "Webhook listen host (beyond loopback, also set DAY15_WEBHOOK_SECRET)")
        .flag("host", "HOST"),
    Variable::new(Listen, "DAY15_WEBHOOK_PORT", Some("5015"), int(0, 65535),
        "Webhook listen port")
        .flag("port", "PORT"),
    Variable::new(Consumers, "DAY15_BATCH_SIZE", Some("10"), int(1, 10_000),
        "Most events per consumer batch")
        .flag("batch-size", "N"),
    Variable::new(Consumers, "DAY15_BATCH_TIMEOUT_SECONDS", Some("5"), dur(Seconds, 0.0, 3600.0),
        "Longest a consumer waits for the first event of a batch before checking in again"),
    Variable::new(Consumers, "DAY15_BATCH_LINGER_MS", Some("0"), dur(Milliseconds, 0.0, 60_000.0),
        "After the first event, how long a consumer waits for more to fill its batch (0 = take what is there)"),
    Variable::new(Consumers, "DAY15_MAX_RETRIES", Some("3"), int(0, 100),
        "Retries of a failing event before it is dead-lettered"),
    Variable::new(Consumers, "DAY15_RETRY_DELAY_SECONDS", Some("2"), dur(Seconds, 0.0, 86_400.0),
        "Delay before the first retry; doubles with each further one (equal jitter)"),
    Variable::new(Consumers, "DAY15_RETRY_MAX_DELAY_SECONDS", Some("60"), dur(Seconds, 0.0, 86_400.0),
        "Cap of the retry delay"),
    Variable::new(Consumers, "DAY15_VISIBILITY_TIMEOUT_SECONDS", Some("30"), dur(Seconds, 0.1, 86_400.0),
        "Lease of a claimed batch: unsettled events are delivered again after it"),
    Variable::new(Consumers, "DAY15_IDEMPOTENCY_TTL_HOURS", Some("24"), dur(Hours, 0.0001, 8760.0),
        "How long an event_id is remembered, so a duplicate POST is ignored"),
    Variable::new(Limits, "DAY15_MAX_QUEUE_DEPTH", Some("1000000"), int(1, u64::MAX / 2),
        "Queue depth above which the webhook answers 429"),
    Variable::new(Limits, "DAY15_MAX_BODY_BYTES", Some("1048576"), int(64, 1 << 30),
        "Largest request body the webhook reads (413 above)"),
    Variable::new(Limits, "DAY15_MAX_BATCH_EVENTS", Some("1000"), int(1, 100_000),
        "Most events in one POST /webhook/batch"),
    Variable::new(Limits, "DAY15_REQUEST_HEAD_TIMEOUT_SECONDS", Some("10"), dur(Seconds, 0.1, 3600.0),
        "Longest from accepting a connection (or a request's first byte) to its whole request head; silent connections are closed after it"),
    Variable::new(Limits, "DAY15_KEEPALIVE_TIMEOUT_SECONDS", Some("60"), dur(Seconds, 0.1, 86_400.0),
        "A connection idle this long with no request in flight is closed"),
    Variable::new(Limits, "DAY15_MAX_CONNECTIONS", Some("10000"), int(1, 1_000_000),
        "Most connections the webhook holds open; beyond it new ones are closed at once"),
    Variable::new(Limits, "DAY15_MAX_SSE_CLIENTS", Some("100"), int(1, 100_000),
        "Most open GET /analytics/stream connections (429 above); they all share one backend read a second"),
    Variable::new(Limits, "DAY15_MAX_DIMENSION_VALUES", Some("1000"), int(1, 1_000_000),
        "Distinct values kept per analytics dimension (source, plan, ...); newer ones count as \"other\""),
    Variable::new(Limits, "DAY15_MAX_FUTURE_SKEW_SECONDS", Some("300"), int(0, 86_400),
        "An event whose timestamp is more than this far in the future is refused with 400"),
    Variable::new(Limits, "DAY15_ROLLUP_MINUTE_RETENTION_HOURS", Some("48"), int(1, 8_760),
        "How long per-minute analytics buckets (event time) are kept after they end"),
    Variable::new(Limits, "DAY15_ROLLUP_HOUR_RETENTION_DAYS", Some("90"), int(1, 3_650),
        "How long per-hour analytics buckets are kept after they end"),
    Variable::new(Limits, "DAY15_ROLLUP_DAY_RETENTION_DAYS", Some("3650"), int(1, 36_500),
        "How long per-day analytics buckets are kept after they end"),
    Variable::new(Orchestrator, "DAY15_CONSUMERS", Some("1"), int(0, 256),
        "Consumer processes the orchestrator runs")
        .flag("consumers", "N"),
    Variable::new(Orchestrator, "DAY15_SHUTDOWN_TIMEOUT_SECONDS", Some("10"), dur(Seconds, 0.0, 3600.0),
        "How long a stop waits for every process to finish before killing it"),
    Variable::new(Outputs, "DAY15_DRY_RUN", Some("false"), Kind::Bool,
        "Consumers log and ack events without touching analytics")
        .switch("dry-run"),
    Variable::new(Outputs, "DAY15_DASHBOARD_UPDATE_ENABLED", Some("false"), Kind::Bool,
        "Also POST each batch's metric deltas to an external dashboard API (best effort)"),
    Variable::new(Outputs, "DAY15_DASHBOARD_API_URL", Some("http://localhost:8000/api/metrics"),
        text("an http:// or https:// URL", Some(http_url)),
        "Where those metric deltas are POSTed")
        .only_when(When::Enabled("DAY15_DASHBOARD_UPDATE_ENABLED")),
    Variable::new(Security, "DAY15_WEBHOOK_SECRET", None, text("any text", None),
        "Standard Webhooks signing secrets (whsec_<base64> or raw), space-separated to rotate; empty = no signatures required"),
    Variable::new(Security, "DAY15_SIGNATURE_TOLERANCE_SECONDS", Some("300"), dur(Seconds, 1.0, 86_400.0),
        "Largest accepted distance between a signature's timestamp and now"),
    Variable::new(Security, "DAY15_ADMIN_TOKEN", None, text("any text", None),
        "Bearer token for POST /dlq/replay and /dlq/purge, and for GET /dlq once set; empty = replay and purge answer 403, GET /dlq is open"),
    Variable::new(Security, "DAY15_ALLOWED_HOSTS", None,
        text("comma-separated host names or IP addresses, without ports", Some(host_list)),
        "Host header names the webhook answers (421 otherwise, /health included; its own DAY15_WEBHOOK_HOST always works); empty = any"),
    Variable::new(Logs, "DAY15_LOG_LEVEL", Some("INFO"),
        Kind::OneOf {
            choices: &["DEBUG", "INFO", "WARNING", "ERROR"],
            aliases: &[("TRACE", "DEBUG"), ("WARN", "WARNING"), ("CRITICAL", "ERROR")],
        },
        "Log level: DEBUG, INFO, WARNING, ERROR")
        .flag("log-level", "LEVEL"),
    Variable::new(Logs, "DAY15_LOG_FILE", Some("logs/day15_pipeline.log"), text("a file path", None),
        "Log file appended to by every process")
        .flag("log-file", "PATH"),
    Variable::new(Logs, "DAY15_LOG_FORMAT", Some("text"), one_of(&["text", "json"]),
        "Log format: text or json")
        .flag("log-format", "FORMAT"),
    Variable::new(Logs, "DAY15_LOG_EVENTS_PER_SECOND", Some("100"), int(0, 1_000_000_000),
        "Per-event lines (Event received, Processed, Event rejected) each process writes per second, and batches a consumer logs (Processing batch, Batch complete); past it, one line per second counts the rest (0 = only those)"),
    Variable::new(Logs, "DAY15_METRICS_ENABLED", Some("true"), Kind::Bool,
        "Serve GET /metrics (Prometheus text)"),
    Variable::new(Logs, "DAY15_LOG_MAX_BYTES", Some("104857600"), int(0, 1 << 40),
        "Size in bytes above which the log file is rotated to <file>.1 (0 = never rotate)"),
    Variable::new(Logs, "DAY15_LOG_MAX_FILES", Some("5"), int(1, 1000),
        "Log files kept by rotation, the current one included (<file>, <file>.1 … <file>.N-1)"),
    Variable::new(Testing, "DAY15_FAULT_INJECTION", Some("false"), Kind::Bool,
        "Testing aid: honour metadata.simulate_failure (\"transient:N\" / \"permanent\")"),
    Variable::new(Testing, "DAY15_FAULT_HOLD_BATCH", Some("0"), int(0, 1_000_000_000),
        "testing aid, only with DAY15_FAULT_INJECTION=true: the consumer holds its N-th batch before settling it until it is stopped (0 = never)"),
];

/// Every variable's name and default, in [`ROWS`] order: what a parent process passes to its
/// children, and what `--set` accepts.
pub const VARIABLES: &[(&str, Option<&str>)] = &names_and_defaults();

const fn names_and_defaults() -> [(&'static str, Option<&'static str>); ROWS.len()] {
    let mut out = [("", None); ROWS.len()];
    let mut i = 0;
    while i < ROWS.len() {
        out[i] = (ROWS[i].name, ROWS[i].default);
        i += 1;
    }
    out
}

/// The row of `name`, if it is one of ours.
pub fn row(name: &str) -> Option<&'static Variable> {
    ROWS.iter().find(|r| r.name == name)
}
