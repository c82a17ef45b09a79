//! Configuration shared by every binary.
//!
//! Precedence, highest first: command-line flag > process environment > `config/.env` (or the
//! file named by `--env-file`) > built-in default. Every variable keeps the `DAY15_` prefix of
//! the original system so existing `.env` files keep working.
//!
//! Validation never stops at the first problem: [`Config::load`] reports every bad variable at
//! once (name, value, what is allowed) so a user fixes their file in one pass.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The env file read when `--env-file` is not given; a missing default file is not an error.
pub const DEFAULT_ENV_FILE: &str = "config/.env";

/// Every variable the pipeline understands, with its default (`None` = unset/empty).
pub const VARIABLES: &[(&str, Option<&str>)] = &[
    ("DAY15_QUEUE_BACKEND", None),
    ("DAY15_USE_MOCK_REDIS", None),
    ("DAY15_SQLITE_PATH", Some("data/day15_queue.sqlite3")),
    ("DAY15_SQLITE_SYNCHRONOUS", Some("full")),
    ("DAY15_REDIS_URL", None),
    ("DAY15_REDIS_HOST", Some("localhost")),
    ("DAY15_REDIS_PORT", Some("6379")),
    ("DAY15_REDIS_DB", Some("0")),
    ("DAY15_REDIS_PASSWORD", None),
    ("DAY15_KEY_PREFIX", Some("day15")),
    ("DAY15_WEBHOOK_HOST", Some("127.0.0.1")),
    ("DAY15_WEBHOOK_PORT", Some("5015")),
    ("DAY15_BATCH_SIZE", Some("10")),
    ("DAY15_BATCH_TIMEOUT_SECONDS", Some("5")),
    ("DAY15_BATCH_LINGER_MS", Some("0")),
    ("DAY15_MAX_RETRIES", Some("3")),
    ("DAY15_RETRY_DELAY_SECONDS", Some("2")),
    ("DAY15_RETRY_MAX_DELAY_SECONDS", Some("60")),
    ("DAY15_VISIBILITY_TIMEOUT_SECONDS", Some("30")),
    ("DAY15_IDEMPOTENCY_TTL_HOURS", Some("24")),
    ("DAY15_MAX_QUEUE_DEPTH", Some("1000000")),
    ("DAY15_MAX_BODY_BYTES", Some("1048576")),
    ("DAY15_MAX_BATCH_EVENTS", Some("1000")),
    ("DAY15_CONSUMERS", Some("1")),
    ("DAY15_SHUTDOWN_TIMEOUT_SECONDS", Some("10")),
    ("DAY15_DRY_RUN", Some("false")),
    ("DAY15_DASHBOARD_UPDATE_ENABLED", Some("false")),
    (
        "DAY15_DASHBOARD_API_URL",
        Some("http://localhost:8000/api/metrics"),
    ),
    ("DAY15_WEBHOOK_SECRET", None),
    ("DAY15_SIGNATURE_TOLERANCE_SECONDS", Some("300")),
    ("DAY15_ADMIN_TOKEN", None),
    ("DAY15_LOG_LEVEL", Some("INFO")),
    ("DAY15_LOG_FILE", Some("logs/day15_pipeline.log")),
    ("DAY15_LOG_FORMAT", Some("text")),
    ("DAY15_METRICS_ENABLED", Some("true")),
    ("DAY15_FAULT_INJECTION", Some("false")),
    ("DAY15_FAULT_HOLD_BATCH", Some("0")),
];

/// Command-line flags common to every binary. Each flag overrides one `DAY15_*` variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Read variables from this file instead of config/.env (process environment still wins)
    #[arg(long, value_name = "PATH", global = true)]
    pub env_file: Option<PathBuf>,
    /// Queue backend: sqlite, redis or memory [DAY15_QUEUE_BACKEND]
    #[arg(long, value_name = "NAME", global = true)]
    pub backend: Option<String>,
    /// SQLite queue file [DAY15_SQLITE_PATH]
    #[arg(long, value_name = "PATH", global = true)]
    pub sqlite_path: Option<String>,
    /// Redis URL, redis:// or rediss:// [DAY15_REDIS_URL]
    #[arg(long, value_name = "URL", global = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key [DAY15_KEY_PREFIX]
    #[arg(long, value_name = "PREFIX", global = true)]
    pub key_prefix: Option<String>,
    /// Webhook listen host [DAY15_WEBHOOK_HOST]
    #[arg(long, value_name = "HOST", global = true)]
    pub host: Option<String>,
    /// Webhook listen port [DAY15_WEBHOOK_PORT]
    #[arg(long, value_name = "PORT", global = true)]
    pub port: Option<String>,
    /// Most events per consumer batch [DAY15_BATCH_SIZE]
    #[arg(long, value_name = "N", global = true)]
    pub batch_size: Option<String>,
    /// Consumer processes the orchestrator runs [DAY15_CONSUMERS]
    #[arg(long, value_name = "N", global = true)]
    pub consumers: Option<String>,
    /// Log level: DEBUG, INFO, WARNING, ERROR [DAY15_LOG_LEVEL]
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,
    /// Log file appended to by every process [DAY15_LOG_FILE]
    #[arg(long, value_name = "PATH", global = true)]
    pub log_file: Option<String>,
    /// Log format: text or json [DAY15_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT", global = true)]
    pub log_format: Option<String>,
    /// Consumers log and ack events without touching analytics [DAY15_DRY_RUN]
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Set any variable, e.g. --set DAY15_MAX_RETRIES=5 (repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE", global = true)]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// The flag values as `(variable, value)` pairs, in the order they apply.
    fn overrides(&self) -> Vec<(String, String)> {
        let named = [
            ("DAY15_QUEUE_BACKEND", &self.backend),
            ("DAY15_SQLITE_PATH", &self.sqlite_path),
            ("DAY15_REDIS_URL", &self.redis_url),
            ("DAY15_KEY_PREFIX", &self.key_prefix),
            ("DAY15_WEBHOOK_HOST", &self.host),
            ("DAY15_WEBHOOK_PORT", &self.port),
            ("DAY15_BATCH_SIZE", &self.batch_size),
            ("DAY15_CONSUMERS", &self.consumers),
            ("DAY15_LOG_LEVEL", &self.log_level),
            ("DAY15_LOG_FILE", &self.log_file),
            ("DAY15_LOG_FORMAT", &self.log_format),
        ];
        let mut out: Vec<(String, String)> = named
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone())))
            .collect();
        if self.dry_run {
            out.push(("DAY15_DRY_RUN".into(), "true".into()));
        }
        for pair in &self.set {
            match pair.split_once('=') {
                Some((k, v)) => out.push((k.trim().to_string(), v.to_string())),
                None => out.push((pair.clone(), String::new())),
            }
        }
        out
    }
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

/// The validated configuration. Durations are already converted from their variables' units.
#[derive(Debug, Clone)]
pub struct Config {
    pub queue_backend: BackendKind,
    pub sqlite_path: PathBuf,
    pub sqlite_synchronous: SqliteSynchronous,
    /// Full connection URL, built from the host/port/db/password variables unless given.
    pub redis_url: String,
    pub key_prefix: String,
    pub webhook_host: String,
    pub webhook_port: u16,
    pub batch_size: usize,
    pub batch_timeout: Duration,
    pub batch_linger: Duration,
    pub max_retries: u32,
    pub retry_delay: Duration,
    pub retry_max_delay: Duration,
    pub visibility_timeout: Duration,
    pub idempotency_ttl: Duration,
    pub max_queue_depth: u64,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub consumers: usize,
    pub shutdown_timeout: Duration,
    pub dry_run: bool,
    pub dashboard_update_enabled: bool,
    pub dashboard_api_url: String,
    /// `None` when empty: signatures are then not required.
    pub webhook_secret: Option<String>,
    pub signature_tolerance: Duration,
    /// `None` when empty: admin endpoints then answer 403.
    pub admin_token: Option<String>,
    pub log_level: LogLevel,
    pub log_file: PathBuf,
    pub log_format: LogFormat,
    pub metrics_enabled: bool,
    pub fault_injection: bool,
    /// With fault injection: a consumer holds its N-th batch unsettled until it is stopped,
    /// so a crash test can kill it mid-batch for certain. 0 = never.
    pub fault_hold_batch: u64,
}

/// One bad variable: what it was set to and what would have been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub name: String,
    pub value: String,
    pub allowed: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.name, self.value, self.allowed)
    }
}

/// Every problem found in one load; the binaries print it and exit with code 2.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// The raw variable values after precedence was applied, before validation.
#[derive(Debug, Clone, Default)]
pub struct RawSettings {
    values: BTreeMap<String, String>,
}

impl RawSettings {
    /// Layers defaults, the env file, the given environment and the flags.
    pub fn gather(
        args: &ConfigArgs,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let mut values = BTreeMap::new();
        for (name, default) in VARIABLES {
            if let Some(d) = default {
                values.insert(name.to_string(), d.to_string());
            }
        }
        let (env_path, explicit) = match &args.env_file {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_ENV_FILE), false),
        };
        match read_env_file(&env_path) {
            Ok(Some(pairs)) => values.extend(pairs),
            Ok(None) if explicit => problems.push(ConfigProblem {
                name: "--env-file".into(),
                value: env_path.display().to_string(),
                allowed: "an existing, readable env file".into(),
            }),
            Ok(None) => {}
            Err(e) => problems.push(ConfigProblem {
                name: "--env-file".into(),
                value: env_path.display().to_string(),
                allowed: format!("a valid env file ({e})"),
            }),
        }
        values.extend(
            environment
                .into_iter()
                .filter(|(k, _)| k.starts_with("DAY15_")),
        );
        for (k, v) in args.overrides() {
            if !VARIABLES.iter().any(|(name, _)| *name == k) {
                problems.push(ConfigProblem {
                    name: k,
                    value: v,
                    allowed: "--set takes one of the DAY15_* variables listed in .env.example"
                        .into(),
                });
                continue;
            }
            values.insert(k, v);
        }
        if problems.is_empty() {
            Ok(RawSettings { values })
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The effective value of a variable (after precedence), if set and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }
}

fn read_env_file(path: &Path) -> Result<Option<Vec<(String, String)>>, String> {
    if !path.exists() {
        return Ok(None);
    }
    let iter = dotenvy::from_path_iter(path).map_err(|e| e.to_string())?;
    let mut pairs = Vec::new();
    for item in iter {
        pairs.push(item.map_err(|e| e.to_string())?);
    }
    Ok(Some(pairs))
}

/// Collects problems while each variable is parsed.
struct Validator<'a> {
    raw: &'a RawSettings,
    problems: Vec<ConfigProblem>,
}

impl Validator<'_> {
    fn fail(&mut self, name: &str, allowed: impl Into<String>) {
        self.problems.push(ConfigProblem {
            name: name.to_string(),
            value: self.raw.get(name).unwrap_or("").to_string(),
            allowed: allowed.into(),
        });
    }

    fn string(&self, name: &str) -> String {
        self.raw.get(name).unwrap_or("").to_string()
    }

    fn optional(&self, name: &str) -> Option<String> {
        self.raw.get(name).map(str::to_string)
    }

    fn int<T>(&mut self, name: &str, min: T, max: T, fallback: T) -> T
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let allowed = format!("an integer from {min} to {max}");
        match self.raw.get(name).map(str::parse::<T>) {
            Some(Ok(v)) if v >= min && v <= max => v,
            _ => {
                self.fail(name, allowed);
                fallback
            }
        }
    }

    /// A non-negative decimal number of `unit`s within `[min, max]`.
    fn duration(&mut self, name: &str, unit: f64, min: f64, max: f64) -> Duration {
        match self.raw.get(name).map(str::parse::<f64>) {
            Some(Ok(v)) if v.is_finite() && v >= min && v <= max => {
                Duration::from_secs_f64(v * unit)
            }
            _ => {
                self.fail(name, format!("a number from {min} to {max}"));
                Duration::ZERO
            }
        }
    }

    fn boolean(&mut self, name: &str) -> bool {
        match self.raw.get(name).map(str::to_ascii_lowercase).as_deref() {
            Some("true" | "1" | "yes" | "on") => true,
            Some("false" | "0" | "no" | "off") | None => false,
            _ => {
                self.fail(name, "true or false");
                false
            }
        }
    }
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

    /// Validates every variable, collecting all problems.
    pub fn validate(raw: &RawSettings) -> Result<Config, ConfigError> {
        let mut v = Validator {
            raw,
            problems: Vec::new(),
        };

        let queue_backend = match (
            raw.get("DAY15_QUEUE_BACKEND"),
            raw.get("DAY15_USE_MOCK_REDIS"),
        ) {
            (Some(b), _) => match b.to_ascii_lowercase().as_str() {
                "sqlite" => BackendKind::Sqlite,
                "redis" => BackendKind::Redis,
                "memory" => BackendKind::Memory,
                _ => {
                    v.fail("DAY15_QUEUE_BACKEND", "sqlite, redis or memory");
                    BackendKind::Sqlite
                }
            },
            (None, Some(_)) => {
                if v.boolean("DAY15_USE_MOCK_REDIS") {
                    BackendKind::Sqlite
                } else {
                    BackendKind::Redis
                }
            }
            (None, None) => BackendKind::Sqlite,
        };

        let sqlite_path = PathBuf::from(v.string("DAY15_SQLITE_PATH"));
        if sqlite_path.as_os_str().is_empty() {
            v.fail("DAY15_SQLITE_PATH", "a file path");
        }
        let sqlite_synchronous = match v
            .string("DAY15_SQLITE_SYNCHRONOUS")
            .to_ascii_lowercase()
            .as_str()
        {
            "full" => SqliteSynchronous::Full,
            "normal" => SqliteSynchronous::Normal,
            _ => {
                v.fail("DAY15_SQLITE_SYNCHRONOUS", "full or normal");
                SqliteSynchronous::Full
            }
        };

        let redis_port: u16 = v.int("DAY15_REDIS_PORT", 1, 65535, 6379);
        let redis_db: u32 = v.int("DAY15_REDIS_DB", 0, 1_000_000, 0);
        let redis_url = match v.optional("DAY15_REDIS_URL") {
            Some(url) => {
                if !(url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("redis+unix://")
                    || url.starts_with("unix://"))
                {
                    v.fail("DAY15_REDIS_URL", "a redis:// or rediss:// URL");
                }
                url
            }
            None => {
                let host = v.string("DAY15_REDIS_HOST");
                if host.is_empty() || host.contains(['/', '@', ' ']) {
                    v.fail("DAY15_REDIS_HOST", "a host name or IP address");
                }
                let auth = match v.optional("DAY15_REDIS_PASSWORD") {
                    Some(p) => format!(":{}@", percent_encode(&p)),
                    None => String::new(),
                };
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("redis://{auth}{host}:{redis_port}/{redis_db}")
            }
        };
        let key_prefix = v.string("DAY15_KEY_PREFIX");
        if key_prefix.is_empty()
            || key_prefix.len() > 64
            || !key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
        {
            v.fail(
                "DAY15_KEY_PREFIX",
                "1-64 characters of letters, digits, _ - . : (no braces: the prefix becomes a hash tag)",
            );
        }

        let webhook_host = v.string("DAY15_WEBHOOK_HOST");
        if webhook_host.is_empty() || webhook_host.contains(['/', ' ']) {
            v.fail("DAY15_WEBHOOK_HOST", "a host name or IP address");
        }
        let webhook_port: u16 = v.int("DAY15_WEBHOOK_PORT", 0, 65535, 5015);
        let batch_size: usize = v.int("DAY15_BATCH_SIZE", 1, 10_000, 10);
        let batch_timeout = v.duration("DAY15_BATCH_TIMEOUT_SECONDS", 1.0, 0.0, 3600.0);
        let batch_linger = v.duration("DAY15_BATCH_LINGER_MS", 0.001, 0.0, 60_000.0);
        let max_retries: u32 = v.int("DAY15_MAX_RETRIES", 0, 100, 3);
        let retry_delay = v.duration("DAY15_RETRY_DELAY_SECONDS", 1.0, 0.0, 86_400.0);
        let retry_max_delay = v.duration("DAY15_RETRY_MAX_DELAY_SECONDS", 1.0, 0.0, 86_400.0);
        let visibility_timeout = v.duration("DAY15_VISIBILITY_TIMEOUT_SECONDS", 1.0, 0.1, 86_400.0);
        let idempotency_ttl = v.duration("DAY15_IDEMPOTENCY_TTL_HOURS", 3600.0, 0.0001, 8760.0);
        let max_queue_depth: u64 = v.int("DAY15_MAX_QUEUE_DEPTH", 1, u64::MAX / 2, 1_000_000);
        let max_body_bytes: usize = v.int("DAY15_MAX_BODY_BYTES", 64, 1 << 30, 1_048_576);
        let max_batch_events: usize = v.int("DAY15_MAX_BATCH_EVENTS", 1, 100_000, 1000);
        let consumers: usize = v.int("DAY15_CONSUMERS", 0, 256, 1);
        let shutdown_timeout = v.duration("DAY15_SHUTDOWN_TIMEOUT_SECONDS", 1.0, 0.0, 3600.0);
        let dry_run = v.boolean("DAY15_DRY_RUN");
        let dashboard_update_enabled = v.boolean("DAY15_DASHBOARD_UPDATE_ENABLED");
        let dashboard_api_url = v.string("DAY15_DASHBOARD_API_URL");
        if dashboard_update_enabled
            && !(dashboard_api_url.starts_with("http://")
                || dashboard_api_url.starts_with("https://"))
        {
            v.fail("DAY15_DASHBOARD_API_URL", "an http:// or https:// URL");
        }
        let webhook_secret = v.optional("DAY15_WEBHOOK_SECRET");
        let signature_tolerance =
            v.duration("DAY15_SIGNATURE_TOLERANCE_SECONDS", 1.0, 1.0, 86_400.0);
        let admin_token = v.optional("DAY15_ADMIN_TOKEN");
        let log_level = match v.string("DAY15_LOG_LEVEL").to_ascii_uppercase().as_str() {
            "DEBUG" | "TRACE" => LogLevel::Debug,
            "INFO" => LogLevel::Info,
            "WARNING" | "WARN" => LogLevel::Warning,
            "ERROR" | "CRITICAL" => LogLevel::Error,
            _ => {
                v.fail("DAY15_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR");
                LogLevel::Info
            }
        };
        let log_file = PathBuf::from(v.string("DAY15_LOG_FILE"));
        let log_format = match v.string("DAY15_LOG_FORMAT").to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                v.fail("DAY15_LOG_FORMAT", "text or json");
                LogFormat::Text
            }
        };
        let metrics_enabled = v.boolean("DAY15_METRICS_ENABLED");
        let fault_injection = v.boolean("DAY15_FAULT_INJECTION");
        let fault_hold_batch = v.int("DAY15_FAULT_HOLD_BATCH", 0, 1_000_000_000, 0);

        if !v.problems.is_empty() {
            return Err(ConfigError {
                problems: v.problems,
            });
        }
        Ok(Config {
            queue_backend,
            sqlite_path,
            sqlite_synchronous,
            redis_url,
            key_prefix,
            webhook_host,
            webhook_port,
            batch_size,
            batch_timeout,
            batch_linger,
            max_retries,
            retry_delay,
            retry_max_delay,
            visibility_timeout,
            idempotency_ttl,
            max_queue_depth,
            max_body_bytes,
            max_batch_events,
            consumers,
            shutdown_timeout,
            dry_run,
            dashboard_update_enabled,
            dashboard_api_url,
            webhook_secret,
            signature_tolerance,
            admin_token,
            log_level,
            log_file,
            log_format,
            metrics_enabled,
            fault_injection,
            fault_hold_batch,
        })
    }

    /// Defaults only, ignoring the environment and env files: the base for tests.
    pub fn defaults() -> Config {
        let raw = RawSettings {
            values: VARIABLES
                .iter()
                .filter_map(|(k, d)| d.map(|d| (k.to_string(), d.to_string())))
                .collect(),
        };
        match Self::validate(&raw) {
            Ok(c) => c,
            // The defaults are constants checked by `defaults_are_valid`.
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }

    /// `http://host:port` of the webhook, as clients on this machine reach it.
    pub fn webhook_url(&self) -> String {
        let host = match self.webhook_host.as_str() {
            "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
            h => h,
        };
        if host.contains(':') && !host.starts_with('[') {
            format!("http://[{host}]:{}", self.webhook_port)
        } else {
            format!("http://{host}:{}", self.webhook_port)
        }
    }

    /// The Redis URL with any password masked, for logs and error messages.
    pub fn redis_url_redacted(&self) -> String {
        redact_url(&self.redis_url)
    }
}

/// Replaces the password of a `scheme://user:pass@host` URL with `***`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((auth, host)) = rest.split_once('@') {
            let user = auth.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_string()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Tests run in the crate folder, which has no `config/.env`, so only `pairs` apply.
    fn no_file() -> ConfigArgs {
        ConfigArgs::default()
    }

    fn load(args: &ConfigArgs, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load_from(args, env(pairs))
    }

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let c = Config::defaults();
        assert_eq!(c.queue_backend, BackendKind::Sqlite);
        assert_eq!(c.webhook_port, 5015);
        assert_eq!(c.batch_size, 10);
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.visibility_timeout, Duration::from_secs(30));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.redis_url, "redis://localhost:6379/0");
        assert_eq!(c.sqlite_path, PathBuf::from("data/day15_queue.sqlite3"));
        assert_eq!(c.webhook_secret, None);
        assert_eq!(c.log_format, LogFormat::Text);
    }

    #[test]
    fn flag_beats_environment_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.env");
        std::fs::write(
            &file,
            "DAY15_BATCH_SIZE=20\nDAY15_MAX_RETRIES=7\nDAY15_CONSUMERS=3\n",
        )
        .unwrap();
        let args = ConfigArgs {
            env_file: Some(file),
            batch_size: Some("40".into()),
            ..Default::default()
        };
        let c = Config::load_from(
            &args,
            env(&[("DAY15_BATCH_SIZE", "30"), ("DAY15_MAX_RETRIES", "5")]),
        )
        .unwrap();
        assert_eq!(c.batch_size, 40, "flag wins");
        assert_eq!(c.max_retries, 5, "environment beats file");
        assert_eq!(c.consumers, 3, "file beats default");
        assert_eq!(c.webhook_port, 5015, "default when unset");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = load(
            &no_file(),
            &[("DAY15_BATCH_SIZE", "0"), ("DAY15_WEBHOOK_PORT", "abc")],
        )
        .unwrap_err();
        let names: Vec<_> = err.problems.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["DAY15_WEBHOOK_PORT", "DAY15_BATCH_SIZE"]);
        let text = err.to_string();
        assert!(
            text.contains("DAY15_BATCH_SIZE=\"0\": an integer from 1 to 10000"),
            "{text}"
        );
        assert!(text.contains("DAY15_WEBHOOK_PORT=\"abc\""), "{text}");
    }

    #[test]
    fn each_rule_rejects_its_bad_value() {
        let cases = [
            ("DAY15_QUEUE_BACKEND", "kafka"),
            ("DAY15_SQLITE_SYNCHRONOUS", "off"),
            ("DAY15_REDIS_URL", "http://x"),
            ("DAY15_REDIS_PORT", "70000"),
            ("DAY15_KEY_PREFIX", "{bad}"),
            ("DAY15_BATCH_SIZE", "10001"),
            ("DAY15_BATCH_TIMEOUT_SECONDS", "-1"),
            ("DAY15_BATCH_LINGER_MS", "x"),
            ("DAY15_MAX_RETRIES", "-2"),
            ("DAY15_RETRY_DELAY_SECONDS", "NaN"),
            ("DAY15_VISIBILITY_TIMEOUT_SECONDS", "0"),
            ("DAY15_IDEMPOTENCY_TTL_HOURS", "0"),
            ("DAY15_MAX_QUEUE_DEPTH", "0"),
            ("DAY15_MAX_BODY_BYTES", "1"),
            ("DAY15_MAX_BATCH_EVENTS", "0"),
            ("DAY15_CONSUMERS", "many"),
            ("DAY15_DRY_RUN", "maybe"),
            ("DAY15_LOG_LEVEL", "LOUD"),
            ("DAY15_LOG_FORMAT", "xml"),
            ("DAY15_METRICS_ENABLED", "2"),
            ("DAY15_FAULT_INJECTION", "y e s"),
        ];
        for (name, value) in cases {
            let err = load(&no_file(), &[(name, value)]).unwrap_err();
            assert_eq!(err.problems.len(), 1, "{name}={value}: {err}");
            assert_eq!(err.problems[0].name, name);
            assert_eq!(err.problems[0].value, value);
        }
    }

    #[test]
    fn legacy_mock_redis_maps_to_a_backend_and_queue_backend_wins() {
        let c = load(&no_file(), &[("DAY15_USE_MOCK_REDIS", "true")]).unwrap();
        assert_eq!(c.queue_backend, BackendKind::Sqlite);
        let c = load(&no_file(), &[("DAY15_USE_MOCK_REDIS", "false")]).unwrap();
        assert_eq!(c.queue_backend, BackendKind::Redis);
        let c = load(
            &no_file(),
            &[
                ("DAY15_USE_MOCK_REDIS", "false"),
                ("DAY15_QUEUE_BACKEND", "memory"),
            ],
        )
        .unwrap();
        assert_eq!(c.queue_backend, BackendKind::Memory);
    }

    #[test]
    fn redis_url_is_built_from_parts_and_redacted() {
        let c = load(
            &no_file(),
            &[
                ("DAY15_REDIS_HOST", "10.0.0.5"),
                ("DAY15_REDIS_PORT", "6380"),
                ("DAY15_REDIS_DB", "2"),
                ("DAY15_REDIS_PASSWORD", "p@ss"),
            ],
        )
        .unwrap();
        assert_eq!(c.redis_url, "redis://:p%40ss@10.0.0.5:6380/2");
        assert_eq!(c.redis_url_redacted(), "redis://:***@10.0.0.5:6380/2");
        let c = load(
            &no_file(),
            &[
                ("DAY15_REDIS_URL", "rediss://u:pw@h:1/0"),
                ("DAY15_REDIS_HOST", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.redis_url, "rediss://u:pw@h:1/0");
    }

    #[test]
    fn a_missing_explicit_env_file_is_a_problem() {
        let args = ConfigArgs {
            env_file: Some(PathBuf::from("/definitely/not/here.env")),
            ..Default::default()
        };
        let err = Config::load_from(&args, env(&[])).unwrap_err();
        assert_eq!(err.problems[0].name, "--env-file");
    }

    #[test]
    fn set_flag_overrides_any_variable_and_rejects_unknown_names() {
        let args = ConfigArgs {
            set: vec!["DAY15_MAX_RETRIES=9".into()],
            ..no_file()
        };
        assert_eq!(load(&args, &[]).unwrap().max_retries, 9);
        let args = ConfigArgs {
            set: vec!["DAY15_NOPE=1".into()],
            ..no_file()
        };
        assert_eq!(load(&args, &[]).unwrap_err().problems[0].name, "DAY15_NOPE");
    }

    #[test]
    fn env_example_documents_every_variable_and_is_valid() {
        let example = include_str!("../../../.env.example");
        for (name, _) in VARIABLES {
            assert!(example.contains(name), "{name} missing from .env.example");
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.env.example");
        let args = ConfigArgs {
            env_file: Some(path),
            ..Default::default()
        };
        let c = Config::load_from(&args, env(&[])).unwrap();
        assert_eq!(c.queue_backend, BackendKind::Sqlite);
    }
}
