//! The event generator: drives a running webhook pipeline with named scenarios that check
//! their outcome end to end (README, "Try it"), with sustained open- or closed-loop load, or
//! with a backfill of past days.
//!
//! The binary only parses the command line and calls [`run`]; everything else lives here so
//! tests and benchmarks can use the parts.

pub mod backfill;
pub mod cli;
pub mod client;
pub mod events;
pub mod load;
pub mod scenarios;
pub mod signing;

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use pipeline_core::config::{Config, ConfigArgs};
use pipeline_core::runtime::exit;

use crate::cli::{Cli, Command};
use crate::client::{resolve_base_url, WebhookClient};
use crate::scenarios::{Scenario, ScenarioContext, Summary};
use crate::signing::Signer;

/// Connections kept for scenarios (the burst sends 50 at once).
const SCENARIO_POOL: usize = 64;

/// Runs what the command line asks for and returns the process exit status.
pub async fn run(cli: Cli) -> i32 {
    let common = &cli.common;
    let config_args = ConfigArgs {
        env_file: common.env_file.clone(),
        set: common.set.clone(),
        ..ConfigArgs::default()
    };
    let config = match Config::load(&config_args) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return exit::USAGE;
        }
    };
    let url_text = common
        .url
        .clone()
        .unwrap_or_else(|| format!("http://localhost:{}", config.http.port));
    let base = match resolve_base_url(&url_text) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("{e:#}");
            return exit::USAGE;
        }
    };
    // The webhook accepts several space-separated secrets (rotation); a sender signs with the
    // first, the newest.
    let secret = common.secret.clone().or(config.http.webhook_secret.clone());
    let first = secret.as_deref().and_then(|s| s.split_whitespace().next());
    let signer = match first {
        Some(secret) => match Signer::from_secret(secret) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("unusable --secret / DAY15_WEBHOOK_SECRET: {e}");
                return exit::USAGE;
            }
        },
        None => None,
    };
    let pool = match &cli.command {
        Some(Command::Load(args)) => usize::from(args.concurrency),
        Some(Command::Backfill(args)) => usize::from(args.concurrency),
        _ => SCENARIO_POOL,
    };
    let client = match WebhookClient::new(base, signer, pool) {
        Ok(c) => c.with_admin_token(config.http.admin_token.clone()),
        Err(e) => {
            eprintln!("{e:#}");
            return exit::FAILURE;
        }
    };
    if let Err(unreachable) = client.probe().await {
        eprintln!("{unreachable}");
        eprintln!(
            "Is the webhook running? Start it with `orchestrator` or `webhook`, or pass --url."
        );
        if common.json {
            println!(
                "{}",
                json!({"error": "unreachable", "url": unreachable.url, "reason": unreachable.reason})
            );
        }
        return exit::USAGE;
    }

    let seed = common.seed.unwrap_or_else(rand::random);
    let run_nonce: u64 = rand::random();
    let scenarios: Vec<Scenario> = match &cli.command {
        Some(Command::Load(args)) => {
            let cancel = CancellationToken::new();
            pipeline_core::runtime::cancel_on_signals(cancel.clone());
            let plan = load::LoadPlan::new(args, common.timeout);
            return load::run(client, plan, seed, run_nonce, common.json, cancel).await;
        }
        Some(Command::Backfill(args)) => {
            return backfill::run(client, args, seed, run_nonce, common.json).await;
        }
        None | Some(Command::All) => Scenario::ALL.to_vec(),
        Some(Command::Basic) => vec![Scenario::Basic],
        Some(Command::Idempotency) => vec![Scenario::Idempotency],
        Some(Command::Burst) => vec![Scenario::Burst],
        Some(Command::Batch) => vec![Scenario::Batch],
        Some(Command::Failures) => vec![Scenario::Failures],
        Some(Command::Invalid) => vec![Scenario::Invalid],
    };
    let ctx = ScenarioContext {
        client,
        seed,
        run_nonce,
        timeout: common.timeout,
        failures_timeout: common.timeout.max(retry_budget(&config)),
    };
    if !common.json {
        println!(
            "Event generator → {} (seed {seed}; --seed {seed} repeats these events)",
            ctx.client.base_text()
        );
    }
    let outcomes = scenarios::run_many(&ctx, &scenarios, common.json).await;
    let summary = Summary::of(&outcomes);
    if common.json {
        let doc = json!({
            "url": ctx.client.base_text(),
            "seed": seed,
            "scenarios": outcomes,
            "summary": summary,
            "exit_code": summary.exit_code(),
        });
        match serde_json::to_string_pretty(&doc) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("cannot print the results: {e}"),
        }
    } else {
        println!(
            "{} scenario(s): PASS {}, FAIL {}, SKIP {}",
            outcomes.len(),
            summary.passed,
            summary.failed,
            summary.skipped
        );
    }
    summary.exit_code()
}

/// How long dead-lettering a permanently failing event takes under the local retry settings
/// (the consumers normally share them): every backoff at its longest with jitter, plus slack.
fn retry_budget(config: &Config) -> Duration {
    let mut total = Duration::from_secs(5);
    let mut delay = config.consumer.retry_delay;
    for _ in 0..config.consumer.max_retries {
        total += delay.min(config.consumer.retry_max_delay).mul_f64(1.5);
        delay = delay.saturating_mul(2);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failures_wait_covers_the_default_backoff() {
        // 2 + 4 + 8 s of backoff at most 1.5× with jitter, plus 5 s.
        assert_eq!(retry_budget(&Config::defaults()), Duration::from_secs(26));
    }
}
