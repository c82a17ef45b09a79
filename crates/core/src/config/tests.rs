//! Loading, precedence and validation, end to end through [`Config::load_from`].
//! Compiled only with `#[cfg(test)]` (see the parent module).

use std::path::PathBuf;
use std::time::Duration;

use clap::{FromArgMatches, Parser};

use super::variables::{Kind, ROWS};
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
    assert_eq!(c.http.port, 5015);
    assert_eq!(c.consumer.batch_size, 10);
    assert_eq!(c.consumer.max_retries, 3);
    assert_eq!(c.visibility_timeout, Duration::from_secs(30));
    assert_eq!(c.idempotency_ttl, Duration::from_secs(24 * 3600));
    assert_eq!(c.redis.url, "redis://localhost:6379/0");
    assert_eq!(c.sqlite.path, PathBuf::from("data/day15_queue.sqlite3"));
    assert_eq!(c.http.webhook_secret, None);
    assert_eq!(c.logging.format, LogFormat::Text);
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
        flags: vec![("DAY15_BATCH_SIZE", "40".into())],
        ..Default::default()
    };
    let c = Config::load_from(
        &args,
        env(&[("DAY15_BATCH_SIZE", "30"), ("DAY15_MAX_RETRIES", "5")]),
    )
    .unwrap();
    assert_eq!(c.consumer.batch_size, 40, "flag wins");
    assert_eq!(c.consumer.max_retries, 5, "environment beats file");
    assert_eq!(c.consumers, 3, "file beats default");
    assert_eq!(c.http.port, 5015, "default when unset");
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
    assert_eq!(c.redis.url, "redis://:p%40ss@10.0.0.5:6380/2");
    assert_eq!(c.redis_url_redacted(), "redis://:***@10.0.0.5:6380/2");
    let c = load(
        &no_file(),
        &[
            ("DAY15_REDIS_URL", "rediss://u:pw@h:1/0"),
            ("DAY15_REDIS_HOST", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.redis.url, "rediss://u:pw@h:1/0");
    assert_eq!(c.redis.tls, RedisTlsFiles::default());
    let c = load(
        &no_file(),
        &[
            ("DAY15_REDIS_CA_CERT", "/etc/ca.pem"),
            ("DAY15_REDIS_CLIENT_CERT", "client.pem"),
            ("DAY15_REDIS_CLIENT_KEY", ""),
        ],
    )
    .unwrap();
    assert_eq!(c.redis.tls.ca_cert, Some("/etc/ca.pem".into()));
    assert_eq!(c.redis.tls.client_cert, Some("client.pem".into()));
    // Empty is unset, as for every optional text.
    assert_eq!(c.redis.tls.client_key, None);
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
    assert_eq!(load(&args, &[]).unwrap().consumer.max_retries, 9);
    let args = ConfigArgs {
        set: vec!["DAY15_NOPE=1".into()],
        ..no_file()
    };
    assert_eq!(load(&args, &[]).unwrap_err().problems[0].name, "DAY15_NOPE");
}

#[test]
fn env_example_documents_every_variable_and_is_valid() {
    let example = include_str!("../../../../.env.example");
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

#[test]
fn every_default_is_valid() {
    for r in ROWS {
        let Some(default) = r.default else { continue };
        assert!(
            r.kind.read(Some(default)).is_ok(),
            "{}: default {default:?} is not {}",
            r.name,
            r.kind.allowed()
        );
    }
    Config::defaults();
}

#[test]
fn every_choice_maps_to_its_own_value() {
    let backends: Vec<_> = ["sqlite", "redis", "memory"]
        .into_iter()
        .map(|b| {
            load(&no_file(), &[("DAY15_QUEUE_BACKEND", b)])
                .unwrap()
                .queue_backend
        })
        .collect();
    assert_eq!(
        backends,
        [BackendKind::Sqlite, BackendKind::Redis, BackendKind::Memory]
    );
    let sync = load(&no_file(), &[("DAY15_SQLITE_SYNCHRONOUS", "NORMAL")]).unwrap();
    assert_eq!(sync.sqlite.synchronous, SqliteSynchronous::Normal);
    let levels: Vec<_> = ["debug", "trace", "INFO", "warn", "WARNING", "critical"]
        .into_iter()
        .map(|l| {
            load(&no_file(), &[("DAY15_LOG_LEVEL", l)])
                .unwrap()
                .logging
                .level
        })
        .collect();
    use LogLevel::*;
    assert_eq!(levels, [Debug, Debug, Info, Warning, Warning, Error]);
    let json = load(&no_file(), &[("DAY15_LOG_FORMAT", "json")]).unwrap();
    assert_eq!(json.logging.format, LogFormat::Json);
}

#[test]
fn problem_messages_say_what_is_allowed() {
    let cases = [
        ("DAY15_BATCH_SIZE", "an integer from 1 to 10000"),
        ("DAY15_BATCH_TIMEOUT_SECONDS", "a number from 0 to 3600"),
        (
            "DAY15_IDEMPOTENCY_TTL_HOURS",
            "a number from 0.0001 to 8760",
        ),
        ("DAY15_DRY_RUN", "true or false"),
        ("DAY15_QUEUE_BACKEND", "sqlite, redis or memory"),
        ("DAY15_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
        ("DAY15_SQLITE_SYNCHRONOUS", "full or normal"),
        (
            "DAY15_MAX_QUEUE_DEPTH",
            "an integer from 1 to 9223372036854775807",
        ),
    ];
    for (name, allowed) in cases {
        let err = load(&no_file(), &[(name, "?")]).unwrap_err();
        assert_eq!(err.problems[0].allowed, allowed, "{name}");
    }
}

#[test]
fn conditional_rows_are_checked_only_when_their_condition_holds() {
    let ok = [
        ("DAY15_REDIS_URL", "redis://h:1/0"),
        ("DAY15_REDIS_HOST", "a/b"),
        ("DAY15_QUEUE_BACKEND", "redis"),
        ("DAY15_USE_MOCK_REDIS", "maybe"),
        ("DAY15_DASHBOARD_API_URL", "ftp://x"),
    ];
    load(&no_file(), &ok).unwrap();
    let err = load(
        &no_file(),
        &[
            ("DAY15_REDIS_HOST", "a/b"),
            ("DAY15_USE_MOCK_REDIS", "maybe"),
            ("DAY15_DASHBOARD_UPDATE_ENABLED", "true"),
            ("DAY15_DASHBOARD_API_URL", "ftp://x"),
        ],
    )
    .unwrap_err();
    let names: Vec<_> = err.problems.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "DAY15_USE_MOCK_REDIS",
            "DAY15_REDIS_HOST",
            "DAY15_DASHBOARD_API_URL"
        ]
    );
}

#[test]
fn fault_hold_batch_defaults_to_never_and_is_range_checked() {
    assert_eq!(Config::defaults().consumer.fault_hold_batch, 0);
    let c = load(&no_file(), &[("DAY15_FAULT_HOLD_BATCH", "3")]).unwrap();
    assert_eq!(c.consumer.fault_hold_batch, 3);
    let err = load(&no_file(), &[("DAY15_FAULT_HOLD_BATCH", "1000000001")]).unwrap_err();
    assert_eq!(err.problems[0].allowed, "an integer from 0 to 1000000000");
}

#[test]
fn allowed_hosts_are_normalised_and_ports_refused() {
    assert!(Config::defaults().http.allowed_hosts.is_empty());
    assert_eq!(Config::defaults().http.max_sse_clients, 100);
    let c = load(
        &no_file(),
        &[(
            "DAY15_ALLOWED_HOSTS",
            " Dash.Example.com., localhost,[::1],10.0.0.7 ,",
        )],
    )
    .unwrap();
    assert_eq!(
        c.http.allowed_hosts,
        ["dash.example.com", "localhost", "::1", "10.0.0.7"]
    );
    for bad in ["localhost:5015", "a b", "http://x", "user@host", "[::1]:80"] {
        let err = load(&no_file(), &[("DAY15_ALLOWED_HOSTS", bad)]).unwrap_err();
        assert_eq!(err.problems[0].name, "DAY15_ALLOWED_HOSTS", "{bad}");
    }
}

/// A binary's command line, as the binaries flatten [`ConfigArgs`] into theirs.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[test]
fn flags_come_from_the_rows_and_name_their_variable() {
    let cli = Cli::try_parse_from([
        "x",
        "--port",
        "8080",
        "--dry-run",
        "--env-file",
        "a.env",
        "--set",
        "DAY15_MAX_RETRIES=5",
    ])
    .unwrap();
    assert_eq!(cli.config.env_file, Some(PathBuf::from("a.env")));
    assert_eq!(
        cli.config.flags,
        [
            ("DAY15_WEBHOOK_PORT", "8080".to_string()),
            ("DAY15_DRY_RUN", "true".to_string())
        ]
    );
    assert_eq!(cli.config.set, ["DAY15_MAX_RETRIES=5"]);
    let again = ConfigArgs::from_arg_matches(
        &<Cli as clap::CommandFactory>::command().get_matches_from(["x"]),
    )
    .unwrap();
    assert!(again.flags.is_empty() && again.set.is_empty() && again.env_file.is_none());

    let help = <Cli as clap::CommandFactory>::command()
        .render_help()
        .to_string();
    for long in [
        "env-file",
        "backend",
        "sqlite-path",
        "redis-url",
        "key-prefix",
        "host",
        "port",
        "batch-size",
        "consumers",
        "log-level",
        "log-file",
        "log-format",
        "dry-run",
        "set",
    ] {
        assert!(
            help.contains(&format!("--{long}")),
            "--{long} missing:\n{help}"
        );
    }
    for r in ROWS.iter().filter(|r| r.flag.is_some()) {
        let line = format!("{} [{}]", r.doc, r.name);
        assert!(help.contains(&line), "{line:?} missing:\n{help}");
    }
    assert!(ROWS
        .iter()
        .all(|r| !matches!(r.kind, Kind::Text { allowed: "", .. })));
}

#[test]
fn a_redacted_url_never_shows_any_part_of_its_password() {
    let cases = [
        ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:p@ss@word@host/1", "redis://user:***@host/1"),
        (
            "redis://:s3cret@127.0.0.1:6379",
            "redis://:***@127.0.0.1:6379",
        ),
        ("redis://user:12/34@host/0", "redis://***@host/0"),
        ("redis://:pa#ss@host", "redis://***@host"),
        (
            "redis://host:6379/0?password=hunter2",
            "redis://host:6379/0?password=***",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ];
    for (url, redacted) in cases {
        assert_eq!(super::redact_url(url), redacted, "{url}");
    }
}

#[test]
fn a_signature_tolerance_longer_than_the_idempotency_window_is_refused() {
    let err = load(
        &no_file(),
        &[
            ("DAY15_IDEMPOTENCY_TTL_HOURS", "0.01"),
            ("DAY15_SIGNATURE_TOLERANCE_SECONDS", "300"),
        ],
    )
    .expect_err("tolerance above the TTL");
    let text = err.to_string();
    assert!(
        text.contains("DAY15_SIGNATURE_TOLERANCE_SECONDS=\"300\"")
            && text.contains("at most DAY15_IDEMPOTENCY_TTL_HOURS"),
        "{text}"
    );
    // Equal is fine; the defaults (300 s, 24 h) are fine.
    load(
        &no_file(),
        &[
            ("DAY15_IDEMPOTENCY_TTL_HOURS", "1"),
            ("DAY15_SIGNATURE_TOLERANCE_SECONDS", "3600"),
        ],
    )
    .expect("tolerance equal to the TTL");
}

#[test]
fn a_refused_secret_or_url_is_not_echoed() {
    let err = load(
        &no_file(),
        &[("DAY15_REDIS_URL", "http://:hunter2@host:6379")],
    )
    .expect_err("not a redis URL");
    let text = err.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("DAY15_REDIS_URL=\"http://:***@host:6379/\""),
        "{text}"
    );
}
