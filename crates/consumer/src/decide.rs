//! The decision for one delivery: apply it, retry it later, or park it in the DLQ.
//!
//! Deciding is pure computation — no I/O and no waiting — so a whole batch is decided in one
//! pass and settled with one backend call. A failed event is never retried inline: its retry
//! is scheduled in the backend (`not_before`), and the rest of the batch goes on.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use pipeline_core::analytics::{counting, describe, effect_of};
use pipeline_core::backend::{Delivery, FailureReason, Settlement};
use pipeline_core::config::Config;
use pipeline_core::event::{Event, ReceivedEvent};
use pipeline_core::logging::{EventLines, SummaryLevel};

use crate::retry::RetryPolicy;

/// The settings that shape a decision.
#[derive(Debug, Clone)]
pub struct HandlerSettings {
    /// Log and ack without applying anything (DAY15_DRY_RUN).
    pub dry_run: bool,
    /// Honour `metadata.simulate_failure` (DAY15_FAULT_INJECTION); ignored otherwise.
    pub fault_injection: bool,
    pub retry: RetryPolicy,
    /// The budget of `Processed` lines (DAY15_LOG_EVENTS_PER_SECOND).
    pub processed_lines: EventLines,
}

impl HandlerSettings {
    pub fn from_config(config: &Config) -> Self {
        HandlerSettings {
            dry_run: config.consumer.dry_run,
            fault_injection: config.consumer.fault_injection,
            retry: RetryPolicy::from_config(config),
            processed_lines: EventLines::new(
                config.logging.events_per_second,
                "events processed",
                SummaryLevel::Info,
            ),
        }
    }
}

/// What happened to one delivery, for the batch log line, statistics and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Acked with its analytics effect; `latency` is `received_at` → decided, when known.
    Processed { latency: Option<Duration> },
    /// Acked without effect (dry run).
    DryRun,
    /// The handler failed; tried again after `delay`.
    Retrying { delay: Duration },
    /// Parked in the DLQ.
    DeadLettered { reason: FailureReason },
}

impl Outcome {
    /// Whether the event counts as a success in `Batch complete: N success, M failed`.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Processed { .. } | Outcome::DryRun)
    }

    /// The pipeline counters this outcome adds one to, by the backend's own rules.
    pub fn counted(&self) -> &'static [&'static str] {
        match self {
            Outcome::Processed { .. } | Outcome::DryRun => &[],
            Outcome::Retrying { .. } => counting::RETRY,
            Outcome::DeadLettered { .. } => counting::DEAD_LETTER,
        }
    }
}

/// One decided delivery: what to tell the backend, and what happened.
#[derive(Debug, Clone)]
pub struct Decision {
    pub settlement: Settlement,
    pub outcome: Outcome,
}

/// A handler error: the event may succeed if tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError(pub String);

/// Decides one delivery at `now`, logging as the original did.
///
/// The common delivery, a valid event applied normally, is read where it lies in the stored
/// bytes, without a `Value` tree ([`ReceivedEvent::accept`], the webhook's fast path). Whatever
/// that path is unsure of, and every dry run or fault-injection run, is judged from the tree,
/// whose verdict is the contract; both give the same effect.
pub fn decide(delivery: Delivery, settings: &HandlerSettings, now: DateTime<Utc>) -> Decision {
    if !settings.dry_run && !settings.fault_injection {
        let applied = ReceivedEvent::accept(&delivery.payload).map(|event| {
            let latency = latency_at(event.received_at_micros(), now);
            (effect_of(&event, now), latency)
        });
        if let Some((effect, latency)) = applied {
            if tracing::enabled!(tracing::Level::INFO) && settings.processed_lines.admit() {
                // Within the line budget only: the line's words are read from the tree.
                if let Ok(event) = Event::from_slice(delivery.payload.as_bytes()) {
                    log_processed(&event, latency);
                }
            }
            return Decision {
                settlement: Settlement::Ack {
                    delivery,
                    effect: Some(effect),
                },
                outcome: Outcome::Processed { latency },
            };
        }
    }
    let event = match Event::from_slice(delivery.payload.as_bytes()) {
        Ok(event) => event,
        Err(invalid) => {
            let error = format!("invalid event: {invalid}");
            tracing::error!(
                "Invalid event ({}) moved to DLQ: {error}",
                delivery.event_id
            );
            return Decision {
                settlement: Settlement::DeadLetter {
                    delivery,
                    reason: FailureReason::Permanent,
                    error,
                },
                outcome: Outcome::DeadLettered {
                    reason: FailureReason::Permanent,
                },
            };
        }
    };

    if settings.dry_run {
        if settings.processed_lines.admit() {
            tracing::info!(
                "[DRY RUN] Would process {} ({})",
                event.event_type,
                event.id
            );
        }
        return Decision {
            settlement: Settlement::Ack {
                delivery,
                effect: None,
            },
            outcome: Outcome::DryRun,
        };
    }

    if let Err(HandlerError(error)) = handle(&event, delivery.attempt, settings) {
        return failed(delivery, &event, error, settings, now);
    }

    let latency = latency_at(event.received_at_micros(), now);
    if tracing::enabled!(tracing::Level::INFO) && settings.processed_lines.admit() {
        log_processed(&event, latency);
    }
    Decision {
        settlement: Settlement::Ack {
            delivery,
            effect: Some(effect_of(&event, now)),
        },
        outcome: Outcome::Processed { latency },
    }
}

/// `received_at` → `now`, when the event holds a `received_at`.
fn latency_at(received_micros: Option<i64>, now: DateTime<Utc>) -> Option<Duration> {
    received_micros
        .map(|received| Duration::from_micros((now.timestamp_micros() - received).max(0) as u64))
}

/// The handler's lines for an applied event, as the original wrote them.
fn log_processed(event: &Event, latency: Option<Duration>) {
    if let Some(line) = describe(event) {
        tracing::info!("{line}");
    }
    match latency {
        Some(l) => tracing::info!(
            "Processed {} ({}) - latency: {:.2}ms",
            event.event_type,
            event.id,
            l.as_secs_f64() * 1000.0
        ),
        None => tracing::info!(
            "Processed {} ({}) - latency: unknown (no received_at)",
            event.event_type,
            event.id
        ),
    }
}

/// The handler proper. Applying analytics cannot fail here (the effect is applied by the
/// backend at settle time); the only handler failures are the injected ones.
fn handle(event: &Event, attempt: u32, settings: &HandlerSettings) -> Result<(), HandlerError> {
    if !settings.fault_injection {
        return Ok(());
    }
    match simulated_failure(event, attempt) {
        Some(error) => Err(HandlerError(error)),
        None => Ok(()),
    }
}

/// The error `metadata.simulate_failure` asks for on this attempt: `"transient:N"` fails the
/// first N attempts, `"permanent"` fails every attempt; anything else is ignored.
pub fn simulated_failure(event: &Event, attempt: u32) -> Option<String> {
    let spec = event
        .metadata()
        .and_then(|m| m.get("simulate_failure"))
        .and_then(|v| v.as_str())?;
    if spec == "permanent" {
        return Some("simulated permanent failure".into());
    }
    let failing: u32 = spec.strip_prefix("transient:")?.trim().parse().ok()?;
    (attempt <= failing)
        .then(|| format!("simulated transient failure (attempt {attempt} of {failing} failing)"))
}

fn failed(
    delivery: Delivery,
    event: &Event,
    error: String,
    settings: &HandlerSettings,
    now: DateTime<Utc>,
) -> Decision {
    let attempt = delivery.attempt;
    match settings.retry.delay_after(attempt) {
        Some(delay) => {
            tracing::warn!(
                "Failed {} ({}) on attempt {attempt}: {error} - retrying in {:.2}s",
                event.event_type,
                event.id,
                delay.as_secs_f64()
            );
            let not_before = SystemTime::from(now) + delay;
            Decision {
                settlement: Settlement::Retry {
                    delivery,
                    not_before,
                    error,
                },
                outcome: Outcome::Retrying { delay },
            }
        }
        None => {
            tracing::error!(
                "Failed {} ({}) after {attempt} attempts: {error} - moved to DLQ",
                event.event_type,
                event.id
            );
            Decision {
                settlement: Settlement::DeadLetter {
                    delivery,
                    reason: FailureReason::MaxRetriesExceeded,
                    error,
                },
                outcome: Outcome::DeadLettered {
                    reason: FailureReason::MaxRetriesExceeded,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_core::event::EventId;
    use serde_json::json;

    fn settings(fault_injection: bool) -> HandlerSettings {
        HandlerSettings {
            dry_run: false,
            fault_injection,
            retry: RetryPolicy {
                max_retries: 3,
                base_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(60),
            },
            processed_lines: EventLines::new(u64::MAX, "events processed", SummaryLevel::Info),
        }
    }

    fn delivery(payload: serde_json::Value, attempt: u32) -> Delivery {
        Delivery {
            lease: pipeline_core::backend::Lease::Memory { key: 1, token: 1 },
            event_id: EventId::parse("evt_1").unwrap(),
            payload: payload.to_string(),
            attempt,
        }
    }

    fn failing(spec: &str) -> serde_json::Value {
        json!({"event_id": "evt_1", "event_type": "user_signup", "timestamp": "2025-12-16T10:00:00Z",
               "metadata": {"simulate_failure": spec}})
    }

    #[test]
    fn transient_failure_fails_only_the_first_n_attempts() {
        for (attempt, fails) in [(1, true), (2, true), (3, false)] {
            let d = decide(
                delivery(failing("transient:2"), attempt),
                &settings(true),
                Utc::now(),
            );
            assert_eq!(!d.outcome.is_success(), fails, "attempt {attempt}");
        }
    }

    #[test]
    fn permanent_failure_is_retried_then_dead_lettered_as_max_retries_exceeded() {
        let d = decide(
            delivery(failing("permanent"), 3),
            &settings(true),
            Utc::now(),
        );
        assert!(matches!(d.settlement, Settlement::Retry { .. }));
        let d = decide(
            delivery(failing("permanent"), 4),
            &settings(true),
            Utc::now(),
        );
        match d.settlement {
            Settlement::DeadLetter { reason, error, .. } => {
                assert_eq!(reason, FailureReason::MaxRetriesExceeded);
                assert_eq!(error, "simulated permanent failure");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_is_scheduled_in_the_future_not_waited_for() {
        let now = Utc::now();
        let d = decide(delivery(failing("permanent"), 1), &settings(true), now);
        match d.settlement {
            Settlement::Retry { not_before, .. } => {
                let ahead = not_before.duration_since(SystemTime::from(now)).unwrap();
                assert!(ahead >= Duration::from_secs(1) && ahead <= Duration::from_secs(2));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn simulate_failure_is_ignored_without_fault_injection() {
        let d = decide(
            delivery(failing("permanent"), 1),
            &settings(false),
            Utc::now(),
        );
        assert!(matches!(d.outcome, Outcome::Processed { .. }));
    }

    #[test]
    fn undecodable_payload_is_a_permanent_failure_at_once() {
        let mut d = delivery(json!({}), 1);
        d.payload = "{not json".into();
        let d = decide(d, &settings(true), Utc::now());
        assert_eq!(
            d.outcome,
            Outcome::DeadLettered {
                reason: FailureReason::Permanent
            }
        );
    }

    #[test]
    fn dry_run_acks_without_effect() {
        let s = HandlerSettings {
            dry_run: true,
            ..settings(true)
        };
        let d = decide(delivery(failing("permanent"), 1), &s, Utc::now());
        assert!(matches!(d.settlement, Settlement::Ack { effect: None, .. }));
    }
}
