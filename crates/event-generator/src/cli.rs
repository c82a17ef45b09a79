//! Command-line interface: a scenario (or `load`) plus the flags every mode shares.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Drives the webhook pipeline: named scenarios checked end to end, or sustained load.
///
/// Exit status: 0 every scenario passed or was skipped, 1 something failed, 2 the webhook was
/// unreachable or the usage/configuration is wrong.
#[derive(Debug, Parser)]
#[command(name = "event-generator", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Flags shared by every scenario and by `load`.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Webhook base URL [default: http://localhost:$DAY15_WEBHOOK_PORT; localhost is reached
    /// as 127.0.0.1]
    #[arg(long, value_name = "URL", global = true)]
    pub url: Option<String>,
    /// Sign requests with this Standard Webhooks secret (whsec_<base64> or raw)
    /// [default: $DAY15_WEBHOOK_SECRET]
    #[arg(long, value_name = "SECRET", global = true)]
    pub secret: Option<String>,
    /// Seed for event contents (types, users, plans, amounts, features); ids stay unique per
    /// run so a rerun is not rejected as duplicates [default: random, printed]
    #[arg(long, value_name = "N", global = true)]
    pub seed: Option<u64>,
    /// Print one machine-readable JSON document on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// How long end-to-end checks (scenarios, load --verify) wait for the pipeline to process
    /// what it accepted (10, 30s, 2m)
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,
    /// Read DAY15_* variables from this file instead of config/.env
    #[arg(long, value_name = "PATH", global = true)]
    pub env_file: Option<PathBuf>,
    /// Set any DAY15_* variable, e.g. --set DAY15_WEBHOOK_PORT=6000 (repeatable)
    #[arg(long = "set", value_name = "NAME=VALUE", global = true)]
    pub set: Vec<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// One event of each type: all accepted (202) and processed
    Basic,
    /// The same event three times: one 202, two 200 duplicates, applied once
    Idempotency,
    /// 50 random events sent concurrently: all accepted and processed
    Burst,
    /// 20 events in one /webhook/batch request: all accepted and processed
    Batch,
    /// A transient and a permanent failure: retried then processed, and dead-lettered
    /// (needs DAY15_FAULT_INJECTION=true on the consumers; skipped otherwise)
    Failures,
    /// A dozen malformed payloads: every one answered 4xx, none 5xx
    Invalid,
    /// Sustained load at a fixed rate (open loop) or flat out (--rate 0, closed loop)
    Load(LoadArgs),
    /// Events with past timestamps spread over the last --days days, so the timeseries API
    /// and the dashboard's history have a month to show in a minute
    Backfill(BackfillArgs),
    /// Every scenario in turn (the default; not load)
    All,
}

/// Shape of a `load` run.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Events per second; 0 = closed loop, each worker sends as soon as its last answer arrives
    #[arg(long, value_name = "R", default_value = "1000", value_parser = parse_rate)]
    pub rate: f64,
    /// How long to send (10, 10s, 2m) [default: 10s, or until --events when that is given]
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Concurrent requests in flight at most (workers sharing one connection pool)
    #[arg(long, value_name = "C", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Events per request: 1 posts to /webhook/events, more posts to /webhook/batch
    #[arg(long, value_name = "B", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Stop after sending this many events
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub events: Option<u64>,
    /// Afterwards, wait until the pipeline has processed every accepted event and report the
    /// drain time and end-to-end latency from /stats
    #[arg(long)]
    pub verify: bool,
}

/// Shape of a `backfill` run.
#[derive(Debug, Clone, Args)]
pub struct BackfillArgs {
    /// Days of history, today included (oldest first)
    #[arg(long, value_name = "D", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Events per day, spread at random over the day (today's only up to now)
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub events_per_day: u64,
    /// Events per /webhook/batch request (at most the webhook's DAY15_MAX_BATCH_EVENTS)
    #[arg(long, value_name = "B", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Requests in flight at most
    #[arg(long, value_name = "C", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
}

/// A duration as `10` (seconds), `10s`, `500ms`, `2m` or `1h`; decimals allowed.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10, 10s, 500ms, 2m or 1h"))?;
    let seconds = match unit.trim() {
        "" | "s" | "sec" | "secs" => value,
        "ms" => value / 1000.0,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!(
            "{text:?} is not a rate: give events per second >= 0 (0 = flat out)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_accept_the_documented_forms() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "s", "ten", "10 parsecs", "-1", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_must_be_non_negative_numbers() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate("2500.5"), Ok(2500.5));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("inf").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shared_flags_work_after_the_scenario_name() {
        let cli = Cli::try_parse_from([
            "event-generator",
            "load",
            "--rate",
            "0",
            "--duration",
            "2m",
            "--batch-size",
            "10",
            "--url",
            "http://h:1",
            "--json",
        ])
        .unwrap();
        let Some(Command::Load(load)) = cli.command else {
            panic!("not load");
        };
        assert_eq!(load.rate, 0.0);
        assert_eq!(load.duration, Some(Duration::from_secs(120)));
        assert_eq!(load.batch_size, 10);
        assert_eq!(cli.common.url.as_deref(), Some("http://h:1"));
        assert!(cli.common.json);
        assert!(Cli::try_parse_from(["event-generator"])
            .unwrap()
            .command
            .is_none());
    }
}
