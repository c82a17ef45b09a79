//! Configuration shared by every binary.
//!
//! Precedence, highest first: command-line flag > process environment > `config/.env` (or the
//! file named by `--env-file`) > built-in default. Every variable keeps the `DAY15_` prefix of
//! the original system so existing `.env` files keep working.
//!
//! Each variable is one row of [`variables::ROWS`]; its default, its check and problem message,
//! its flag's `--help` line and its documentation all come from that row. Validation never
//! stops at the first problem: [`Config::load`] reports every bad variable at once (name,
//! value, what is allowed) so a user fixes their file in one pass.
//!
//! Layout: `variables.rs` the rows, `args.rs` the flags, `sources.rs` the env file and
//! environment, `validate.rs` the checks and the building of [`Config`], `docs.rs` the
//! generated `.env.example` and `docs/configuration.md`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

mod args;
pub mod docs;
mod sources;
mod validate;
pub mod variables;

pub use args::ConfigArgs;
pub use sources::{RawSettings, DEFAULT_ENV_FILE};
pub use validate::{ConfigError, ConfigProblem};
pub use variables::VARIABLES;

/// The validated configuration, in sections by subsystem. Durations are already converted
/// from their variables' units.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the queue lives: every process of one pipeline opens the same backend.
    pub queue_backend: BackendKind,
    /// Lease of a claimed batch: events not settled within it are delivered again. Read by
    /// every backend, so it is not a consumer-only setting.
    pub visibility_timeout: Duration,
    /// How long an `event_id` is remembered for de-duplication (and, on SQLite and in memory,
    /// how long its applied-mark lives). Read by every backend.
    pub idempotency_ttl: Duration,
    /// Named values kept per analytics dimension map; later new values count as `other`.
    /// Read by every backend.
    pub max_dimension_values: usize,
    /// How long rollup buckets are kept per granularity (`DAY15_ROLLUP_*_RETENTION_*`). Read
    /// by every backend and by the timeseries query, which refuses a range retention does not
    /// reach.
    pub rollup_retention: crate::analytics::rollup::Retention,
    /// Largest distance an event's `timestamp` may be ahead of the webhook's clock
    /// (`DAY15_MAX_FUTURE_SKEW_SECONDS`).
    pub max_future_skew: Duration,
    /// Consumer processes (or tasks, on the memory backend) the orchestrator runs.
    pub consumers: usize,
    /// How long a stop waits for processes to finish before killing them.
    pub shutdown_timeout: Duration,
    pub sqlite: SqliteConfig,
    pub redis: RedisConfig,
    pub http: HttpConfig,
    pub consumer: ConsumerConfig,
    pub dashboard: DashboardConfig,
    pub logging: LoggingConfig,
}

/// The embedded SQLite queue (`DAY15_QUEUE_BACKEND=sqlite`).
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The queue file, shared by the webhook and consumer processes on one machine.
    pub path: PathBuf,
    /// How hard a commit is kept: decides whether a 202 survives power loss.
    pub synchronous: SqliteSynchronous,
}

/// The Redis queue (`DAY15_QUEUE_BACKEND=redis`).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Full connection URL, built from the host/port/db/password variables unless given. In
    /// cluster mode, comma-separated seed nodes.
    pub url: String,
    /// One server, or a Redis Cluster.
    pub mode: RedisMode,
    /// Prefix of every key; each partition's keys share one hash tag built from it, so every
    /// script touches one slot.
    pub key_prefix: String,
    /// Streams the queue is split into (1..=1024); every process of a pipeline must agree.
    pub partitions: u16,
    /// Replicas that must confirm an enqueue before the webhook answers 202 (0: none).
    pub wait_replicas: u32,
    /// Longest the webhook waits for those confirmations.
    pub wait_timeout: Duration,
    /// Certificates for `rediss://` URLs; ignored for `redis://`.
    pub tls: RedisTlsFiles,
}

/// How the pipeline reaches Redis (`DAY15_REDIS_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    /// One server: a single node or a managed primary behind one address.
    Standalone,
    /// A Redis Cluster: slots spread over primaries, `MOVED`/`ASK` followed by the client.
    Cluster,
}

impl RedisMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Cluster => "cluster",
        }
    }

    /// The partition count when `DAY15_REDIS_PARTITIONS` is unset: one stream on one server,
    /// sixteen on a cluster so the work spreads over its primaries.
    pub fn default_partitions(self) -> u16 {
        match self {
            RedisMode::Standalone => 1,
            RedisMode::Cluster => 16,
        }
    }
}

/// PEM files for a `rediss://` connection. All unset: the server is checked against the
/// system roots and no client certificate is sent. They are read when the backend connects,
/// so a missing or unreadable file fails the start with its name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// CA that signed the server's certificate, trusted instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate chain for servers that require one (mutual TLS); needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// The webhook's HTTP server: where it listens, what it accepts and who may do what.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listen host; beyond loopback without a secret a warning is logged.
    pub host: String,
    /// Listen port; 0 picks a free one.
    pub port: u16,
    /// Queue depth above which ingest answers 429, so a stalled pipeline sheds load.
    pub max_queue_depth: u64,
    /// Largest body read (413 above), bounding memory per request.
    pub max_body_bytes: usize,
    /// Most events in one batch POST.
    pub max_batch_events: usize,
    /// Longest from accepting a connection to a complete request head (and from a later
    /// request's first byte to its complete head), so silent and slow clients cannot hold
    /// sockets.
    pub request_head_timeout: Duration,
    /// How long a connection with no request in flight may stay idle before it is closed.
    pub keepalive_timeout: Duration,
    /// Most connections held open at once; beyond it new ones are closed at once, so file
    /// descriptors stay available for the clients being served.
    pub max_connections: usize,
    /// `None` when empty: signatures are then not required.
    pub webhook_secret: Option<String>,
    /// Largest accepted distance between a signature's timestamp and now (replay window).
    pub signature_tolerance: Duration,
    /// `None` when empty: admin endpoints then answer 403.
    pub admin_token: Option<String>,
    /// Whether `GET /metrics` is served.
    pub metrics_enabled: bool,
    /// Most dashboard streams open at once, so streams cannot exhaust the webhook's memory.
    pub max_sse_clients: usize,
    /// Host names (lowercase, no port, IPv6 without brackets) the webhook answers; empty =
    /// any. Guards the dashboard against DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

/// What each consumer does with a batch: its size, its waits and its retries.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Most events claimed at once.
    pub batch_size: usize,
    /// Longest wait for the first event of a batch before checking in again.
    pub batch_timeout: Duration,
    /// After the first event, how long to wait for more to fill the batch (zero: no wait).
    pub batch_linger: Duration,
    /// Retries of a failing event before it is dead-lettered.
    pub max_retries: u32,
    /// Delay before the first retry; doubles per attempt.
    pub retry_delay: Duration,
    /// Cap of the retry delay.
    pub retry_max_delay: Duration,
    /// Log and ack events without touching the analytics.
    pub dry_run: bool,
    /// Testing aid: honour `metadata.simulate_failure`.
    pub fault_injection: bool,
    /// Testing aid, only with `fault_injection`: hold the N-th batch unsettled until stopped
    /// (0 = never), so a crash test can kill a consumer at a known point.
    pub fault_hold_batch: u64,
}

/// The optional push of each batch's metric deltas to an external dashboard API.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Whether consumers push at all (best effort).
    pub update_enabled: bool,
    /// Where they push; checked only when enabled.
    pub api_url: String,
}

/// Where and how every process logs.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub level: LogLevel,
    /// Appended to by every process of the pipeline.
    pub file: PathBuf,
    pub format: LogFormat,
    /// Size above which the file is rotated (0 = never), so the log cannot fill the disk.
    pub max_bytes: u64,
    /// Files kept by rotation, the current one included (at least 1).
    pub max_files: u32,
    /// Per-event lines a process writes per second before it summarises the rest
    /// ([`crate::logging::EventLines`]).
    pub events_per_second: u64,
}

/// Where the queue lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Embedded SQLite file: durable, zero setup, shared by processes on one machine.
    Sqlite,
    /// Redis Streams: shared by processes on many machines.
    Redis,
    /// In-process only: tests and single-process demos.
    Memory,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Sqlite => "sqlite",
            BackendKind::Redis => "redis",
            BackendKind::Memory => "memory",
        }
    }

    /// The backend named `name` as [`Self::as_str`] spells it.
    pub fn from_name(name: &str) -> Option<Self> {
        [BackendKind::Sqlite, BackendKind::Redis, BackendKind::Memory]
            .into_iter()
            .find(|b| b.as_str() == name)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How hard SQLite works to keep a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// fsync per commit: an accepted event survives power loss.
    Full,
    /// Survives process crashes, not power loss; faster.
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Log verbosity, named as the original's Python levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

impl Config {
    /// Loads from the real process environment; the usual entry point of a binary.
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        Self::load_from(args, std::env::vars())
    }

    /// Loads with an explicit environment, so precedence is testable without touching globals.
    pub fn load_from(
        args: &ConfigArgs,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let raw = RawSettings::gather(args, environment)?;
        Self::validate(&raw)
    }

    /// Defaults only, ignoring the environment and env files: the base for tests.
    pub fn defaults() -> Config {
        match Self::validate(&RawSettings::defaults()) {
            Ok(c) => c,
            // The defaults are constants checked by `every_default_is_valid`.
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }

    /// `http://host:port` of the webhook, as clients on this machine reach it.
    pub fn webhook_url(&self) -> String {
        let host = match self.http.host.as_str() {
            "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
            h => h,
        };
        if host.contains(':') && !host.starts_with('[') {
            format!("http://[{host}]:{}", self.http.port)
        } else {
            format!("http://{host}:{}", self.http.port)
        }
    }

    /// The Redis URL with any password masked, for logs and error messages.
    pub fn redis_url_redacted(&self) -> String {
        redact_url(&self.redis.url)
    }
}

/// The URL with its password (and any `password` query value) replaced by `***`, safe to
/// print. The URL is parsed as a URL: the user information ends at the last `@` before the
/// host, so an unencoded `@` in a password cannot leak the rest of it. A URL that does not
/// parse has everything before its last `@` replaced.
pub fn redact_url(url: &str) -> String {
    // Cluster mode: a comma-separated list of seed node URLs, each redacted on its own.
    if url.contains(',') {
        return url
            .split(',')
            .map(|one| redact_url(one.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    const MASK: &str = "***";
    // An `@` the parser did not take as the end of the user information (a password with an
    // unencoded `/`, `?` or `#`) means the parse cannot be trusted to have found the secret.
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|p| !url.contains('@') || !p.username().is_empty() || p.password().is_some());
    match parsed {
        // Nothing secret: shown exactly as given (a parse would normalise it).
        Some(parsed)
            if parsed.username().is_empty()
                && parsed.password().is_none()
                && !parsed.query_pairs().any(|(k, _)| is_secret_key(&k)) =>
        {
            url.to_string()
        }
        Some(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some(MASK));
            } else if !parsed.username().is_empty() && parsed.scheme().starts_with("redis") {
                // `redis://secret@host`: some clients read a lone user part as the password.
                let _ = parsed.set_username(MASK);
            }
            if parsed.query_pairs().any(|(k, _)| is_secret_key(&k)) {
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if is_secret_key(&k) {
                            MASK.into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            parsed.to_string()
        }
        None => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let Some(at) = rest.rfind('@') else {
                return url.to_string();
            };
            let host = &rest[at + 1..];
            if scheme.is_empty() {
                format!("{MASK}@{host}")
            } else {
                format!("{scheme}://{MASK}@{host}")
            }
        }
    }
}

/// Query keys whose values are secrets in a connection URL.
fn is_secret_key(key: &str) -> bool {
    matches!(
        key.to_ascii_lowercase().as_str(),
        "password" | "pass" | "pwd" | "token" | "secret"
    )
}

#[cfg(test)]
mod tests;
