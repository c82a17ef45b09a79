//! Validation: every row is checked against its [`Kind`] in table order, every problem is kept
//! (never only the first), and only a fully valid set of values becomes a [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::sources::RawSettings;
use super::variables::{Kind, When, ROWS};
use super::{
    BackendKind, Config, ConsumerConfig, DashboardConfig, HttpConfig, LogFormat, LogLevel,
    LoggingConfig, RedisConfig, RedisMode, RedisTlsFiles, SqliteConfig, SqliteSynchronous,
};
use crate::analytics::rollup::Retention;

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

/// A value that passed its row's check.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Int(u64),
    Duration(Duration),
    Bool(bool),
    /// The canonical choice (aliases already resolved).
    Choice(&'static str),
    Text(String),
}

impl Kind {
    /// What the kind accepts, as the problem message (and the docs) say it.
    pub fn allowed(&self) -> String {
        match self {
            Kind::Int { min, max } => format!("an integer from {min} to {max}"),
            Kind::Duration { min, max, .. } => format!("a number from {min} to {max}"),
            Kind::Bool => "true or false".into(),
            Kind::OneOf { choices, .. } => match choices.split_last() {
                Some((last, [])) => last.to_string(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => String::new(),
            },
            Kind::Text { allowed, .. } => allowed.to_string(),
        }
    }

    /// Parses a value (`None` when unset or empty), or says what would have been accepted.
    pub(super) fn read(&self, value: Option<&str>) -> Result<Value, String> {
        let parsed = match *self {
            Kind::Int { min, max } => value
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| (min..=max).contains(v))
                .map(Value::Int),
            Kind::Duration { unit, min, max } => value
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= min && *v <= max)
                .map(|v| Value::Duration(unit.duration(v))),
            Kind::Bool => match value.map(str::to_ascii_lowercase).as_deref() {
                Some("true" | "1" | "yes" | "on") => Some(Value::Bool(true)),
                Some("false" | "0" | "no" | "off") | None => Some(Value::Bool(false)),
                _ => None,
            },
            Kind::OneOf { choices, aliases } => value.and_then(|v| {
                let choice = choices.iter().find(|c| c.eq_ignore_ascii_case(v));
                let alias = aliases.iter().find(|(a, _)| a.eq_ignore_ascii_case(v));
                choice
                    .copied()
                    .or(alias.map(|(_, c)| *c))
                    .map(Value::Choice)
            }),
            Kind::Text { valid, .. } => {
                let text = value.unwrap_or("");
                valid
                    .is_none_or(|valid| valid(text))
                    .then(|| Value::Text(text.to_string()))
            }
        };
        parsed.ok_or_else(|| self.allowed())
    }
}

impl When {
    fn holds(&self, raw: &RawSettings) -> bool {
        match *self {
            When::Unset(name) => raw.get(name).is_none(),
            When::Enabled(name) => Kind::Bool.read(raw.get(name)) == Ok(Value::Bool(true)),
        }
    }
}

/// The checked values of one load, by variable name; rows without a default that were left
/// unset, and rows whose condition did not hold, have none (text rows keep their text).
#[derive(Debug, Default)]
pub(super) struct Values(BTreeMap<&'static str, Value>);

/// Checks every row in table order, returning the values that passed and every problem.
pub(super) fn check_rows(raw: &RawSettings) -> (Values, Vec<ConfigProblem>) {
    let mut values = Values::default();
    let mut problems = Vec::new();
    for row in ROWS {
        let value = raw.get(row.name);
        if row.when.is_some_and(|w| !w.holds(raw)) {
            if let Kind::Text { .. } = row.kind {
                let text = value.unwrap_or("").to_string();
                values.0.insert(row.name, Value::Text(text));
            }
            continue;
        }
        if value.is_none() && row.default.is_none() {
            continue;
        }
        match row.kind.read(value) {
            Ok(v) => {
                values.0.insert(row.name, v);
            }
            Err(allowed) => problems.push(ConfigProblem {
                name: row.name.to_string(),
                value: printable(row.name, value.unwrap_or("")),
                allowed,
            }),
        }
    }
    (values, problems)
}

/// A refused value as it may be printed: a secret is never echoed, a URL loses its password.
fn printable(name: &str, value: &str) -> String {
    let secret = ["SECRET", "TOKEN", "PASSWORD"]
        .iter()
        .any(|word| name.contains(word));
    if secret && !value.is_empty() {
        "***".to_string()
    } else if name.ends_with("_URL") {
        super::redact_url(value)
    } else {
        value.to_string()
    }
}

// The accessors below read values that `check_rows` produced without a problem. A name or
// type that does not match its row is a mistake in this file, which `Config::defaults()` (run
// by the tests) would hit at once, hence the panics.
impl Values {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    fn int<T: TryFrom<u64>>(&self, name: &str) -> T {
        match self.get(name) {
            Some(Value::Int(v)) => T::try_from(*v)
                .unwrap_or_else(|_| panic!("{name}: its row's range exceeds its field's type")),
            other => panic!("{name}: no integer value ({other:?})"),
        }
    }

    fn duration(&self, name: &str) -> Duration {
        match self.get(name) {
            Some(Value::Duration(d)) => *d,
            other => panic!("{name}: no duration value ({other:?})"),
        }
    }

    fn flag(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn boolean(&self, name: &str) -> bool {
        self.flag(name)
            .unwrap_or_else(|| panic!("{name}: no boolean value"))
    }

    fn choice(&self, name: &str) -> Option<&'static str> {
        match self.get(name) {
            Some(Value::Choice(c)) => Some(c),
            _ => None,
        }
    }

    /// The text, empty when unset.
    fn text(&self, name: &str) -> String {
        self.optional(name).unwrap_or_default()
    }

    /// The text, `None` when unset or empty.
    fn optional(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(Value::Text(t)) if !t.is_empty() => Some(t.clone()),
            _ => None,
        }
    }
}

impl Config {
    /// Validates every variable, collecting all problems.
    pub fn validate(raw: &RawSettings) -> Result<Config, ConfigError> {
        let (v, mut problems) = check_rows(raw);
        problems.extend(cross_check(raw, &v));
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Config::from_values(&v))
    }

    fn from_values(v: &Values) -> Config {
        // DAY15_QUEUE_BACKEND wins; else the original's legacy switch; else sqlite.
        let queue_backend = match v.choice("DAY15_QUEUE_BACKEND") {
            Some(name) => BackendKind::from_name(name).unwrap_or(BackendKind::Sqlite),
            None => match v.flag("DAY15_USE_MOCK_REDIS") {
                Some(false) => BackendKind::Redis,
                Some(true) | None => BackendKind::Sqlite,
            },
        };
        let redis_url = v.optional("DAY15_REDIS_URL").unwrap_or_else(|| {
            redis_url_from_parts(
                &v.text("DAY15_REDIS_HOST"),
                v.int::<u16>("DAY15_REDIS_PORT"),
                v.int::<u32>("DAY15_REDIS_DB"),
                v.optional("DAY15_REDIS_PASSWORD").as_deref(),
            )
        });
        let redis_mode = match v.choice("DAY15_REDIS_MODE") {
            Some("cluster") => RedisMode::Cluster,
            _ => RedisMode::Standalone,
        };
        let synchronous = match v.choice("DAY15_SQLITE_SYNCHRONOUS") {
            Some("normal") => SqliteSynchronous::Normal,
            _ => SqliteSynchronous::Full,
        };
        let level = match v.choice("DAY15_LOG_LEVEL") {
            Some("DEBUG") => LogLevel::Debug,
            Some("WARNING") => LogLevel::Warning,
            Some("ERROR") => LogLevel::Error,
            _ => LogLevel::Info,
        };
        let format = match v.choice("DAY15_LOG_FORMAT") {
            Some("json") => LogFormat::Json,
            _ => LogFormat::Text,
        };
        Config {
            queue_backend,
            visibility_timeout: v.duration("DAY15_VISIBILITY_TIMEOUT_SECONDS"),
            idempotency_ttl: v.duration("DAY15_IDEMPOTENCY_TTL_HOURS"),
            max_dimension_values: v.int("DAY15_MAX_DIMENSION_VALUES"),
            rollup_retention: Retention {
                minute_seconds: v.int::<i64>("DAY15_ROLLUP_MINUTE_RETENTION_HOURS") * 3_600,
                hour_seconds: v.int::<i64>("DAY15_ROLLUP_HOUR_RETENTION_DAYS") * 86_400,
                day_seconds: v.int::<i64>("DAY15_ROLLUP_DAY_RETENTION_DAYS") * 86_400,
            },
            max_future_skew: Duration::from_secs(v.int("DAY15_MAX_FUTURE_SKEW_SECONDS")),
            consumers: v.int("DAY15_CONSUMERS"),
            shutdown_timeout: v.duration("DAY15_SHUTDOWN_TIMEOUT_SECONDS"),
            sqlite: SqliteConfig {
                path: PathBuf::from(v.text("DAY15_SQLITE_PATH")),
                synchronous,
            },
            redis: RedisConfig {
                url: redis_url,
                mode: redis_mode,
                key_prefix: v.text("DAY15_KEY_PREFIX"),
                partitions: match v.get("DAY15_REDIS_PARTITIONS") {
                    Some(Value::Int(n)) => u16::try_from(*n).unwrap_or(u16::MAX),
                    _ => redis_mode.default_partitions(),
                },
                wait_replicas: v.int("DAY15_REDIS_WAIT_REPLICAS"),
                wait_timeout: Duration::from_millis(v.int("DAY15_REDIS_WAIT_TIMEOUT_MS")),
                tls: RedisTlsFiles {
                    ca_cert: v.optional("DAY15_REDIS_CA_CERT").map(PathBuf::from),
                    client_cert: v.optional("DAY15_REDIS_CLIENT_CERT").map(PathBuf::from),
                    client_key: v.optional("DAY15_REDIS_CLIENT_KEY").map(PathBuf::from),
                },
            },
            http: HttpConfig {
                host: v.text("DAY15_WEBHOOK_HOST"),
                port: v.int("DAY15_WEBHOOK_PORT"),
                max_queue_depth: v.int("DAY15_MAX_QUEUE_DEPTH"),
                max_body_bytes: v.int("DAY15_MAX_BODY_BYTES"),
                max_batch_events: v.int("DAY15_MAX_BATCH_EVENTS"),
                request_head_timeout: v.duration("DAY15_REQUEST_HEAD_TIMEOUT_SECONDS"),
                keepalive_timeout: v.duration("DAY15_KEEPALIVE_TIMEOUT_SECONDS"),
                max_connections: v.int("DAY15_MAX_CONNECTIONS"),
                webhook_secret: v.optional("DAY15_WEBHOOK_SECRET"),
                signature_tolerance: v.duration("DAY15_SIGNATURE_TOLERANCE_SECONDS"),
                admin_token: v.optional("DAY15_ADMIN_TOKEN"),
                metrics_enabled: v.boolean("DAY15_METRICS_ENABLED"),
                max_sse_clients: v.int("DAY15_MAX_SSE_CLIENTS"),
                allowed_hosts: host_names(&v.text("DAY15_ALLOWED_HOSTS")),
            },
            consumer: ConsumerConfig {
                batch_size: v.int("DAY15_BATCH_SIZE"),
                batch_timeout: v.duration("DAY15_BATCH_TIMEOUT_SECONDS"),
                batch_linger: v.duration("DAY15_BATCH_LINGER_MS"),
                max_retries: v.int("DAY15_MAX_RETRIES"),
                retry_delay: v.duration("DAY15_RETRY_DELAY_SECONDS"),
                retry_max_delay: v.duration("DAY15_RETRY_MAX_DELAY_SECONDS"),
                dry_run: v.boolean("DAY15_DRY_RUN"),
                fault_injection: v.boolean("DAY15_FAULT_INJECTION"),
                fault_hold_batch: v.int("DAY15_FAULT_HOLD_BATCH"),
            },
            dashboard: DashboardConfig {
                update_enabled: v.boolean("DAY15_DASHBOARD_UPDATE_ENABLED"),
                api_url: v.text("DAY15_DASHBOARD_API_URL"),
            },
            logging: LoggingConfig {
                level,
                file: PathBuf::from(v.text("DAY15_LOG_FILE")),
                format,
                max_bytes: v.int("DAY15_LOG_MAX_BYTES"),
                max_files: v.int("DAY15_LOG_MAX_FILES"),
                events_per_second: v.int("DAY15_LOG_EVENTS_PER_SECOND"),
            },
        }
    }
}

/// The entries of a host list, trimmed, lowercased, IPv6 brackets and a trailing dot removed,
/// so they compare equal to a request's `Host` normalised the same way.
fn host_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            let bare = h
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(h);
            bare.trim_end_matches('.').to_ascii_lowercase()
        })
        .collect()
}

/// Problems no single row can see: rules between two variables.
///
/// A signed request may be replayed for `DAY15_SIGNATURE_TOLERANCE_SECONDS`; only the
/// idempotency window turns a replay into a duplicate, so a tolerance longer than
/// `DAY15_IDEMPOTENCY_TTL_HOURS` would let a captured request be accepted again.
fn cross_check(raw: &RawSettings, v: &Values) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    if let (Some(Value::Duration(tolerance)), Some(Value::Duration(ttl))) = (
        v.get("DAY15_SIGNATURE_TOLERANCE_SECONDS"),
        v.get("DAY15_IDEMPOTENCY_TTL_HOURS"),
    ) {
        if tolerance > ttl {
            problems.push(ConfigProblem {
                name: "DAY15_SIGNATURE_TOLERANCE_SECONDS".into(),
                value: raw
                    .get("DAY15_SIGNATURE_TOLERANCE_SECONDS")
                    .map_or_else(|| tolerance.as_secs().to_string(), str::to_string),
                allowed: format!(
                    "at most DAY15_IDEMPOTENCY_TTL_HOURS ({} s), so a replayed signed request is \
                     always answered as a duplicate",
                    ttl.as_secs_f64()
                ),
            });
        }
    }
    if let (Some(Value::Choice("standalone")), Some(Value::Text(url))) =
        (v.get("DAY15_REDIS_MODE"), v.get("DAY15_REDIS_URL"))
    {
        if url.contains(',') {
            problems.push(ConfigProblem {
                name: "DAY15_REDIS_URL".into(),
                value: printable("DAY15_REDIS_URL", url),
                allowed:
                    "one URL in standalone mode (several seed nodes need DAY15_REDIS_MODE=cluster)"
                        .into(),
            });
        }
    }
    problems
}

/// `redis://[:password@]host:port/db`, bracketing an IPv6 host and percent-encoding the password.
fn redis_url_from_parts(host: &str, port: u16, db: u32, password: Option<&str>) -> String {
    let auth = match password {
        Some(p) => format!(":{}@", percent_encode(p)),
        None => String::new(),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    format!("redis://{auth}{host}:{port}/{db}")
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
