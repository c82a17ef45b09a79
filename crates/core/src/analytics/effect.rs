//! What applying one event changes, and what its handler logs.

use chrono::{DateTime, Utc};

use super::{counters, maps, Effect, Increment};
use crate::event::{
    Event, MAX_AMOUNT, MAX_COUNT, SUBSCRIPTION_CREATED, USAGE_TRACKED, USER_SIGNUP,
};
use crate::logging::LogSafe;

/// The monthly recurring revenue of a subscription: annual plans count a twelfth.
pub fn monthly_amount(amount: f64, billing_cycle: Option<&str>) -> f64 {
    match billing_cycle {
        Some("annual") => amount / 12.0,
        _ => amount,
    }
}

/// What a handler logs for a known event, as the original did.
pub fn describe(event: &Event) -> Option<String> {
    let meta = event.metadata();
    // Metadata strings are the sender's and unbounded: cut and escaped as log values.
    let s = |k: &str| {
        let value = meta
            .and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("unknown");
        LogSafe(value).to_string()
    };
    let user = event.user_id.as_deref().unwrap_or("anonymous");
    match event.event_type.as_str() {
        USER_SIGNUP => Some(format!("User signup: {user} from {}", s("source"))),
        SUBSCRIPTION_CREATED => {
            let amount = meta
                .and_then(|m| m.get("amount"))
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0);
            Some(format!(
                "Subscription created: {user} - {} (${amount:.2})",
                s("plan")
            ))
        }
        USAGE_TRACKED => Some(format!(
            "Usage tracked: {user} - {} ({})",
            s("feature"),
            quantity(event)
        )),
        _ => None,
    }
}

fn quantity(event: &Event) -> u64 {
    event
        .metadata()
        .and_then(|m| m.get("quantity"))
        .and_then(|v| v.as_u64())
        .unwrap_or(1)
}

/// The increments of applying `event` at `applied_at`: the totals, and the event time their
/// rollups count at (the event's `timestamp`; `applied_at` for an event without one), so one
/// atomic settle applies both (see [`super::rollup`]).
pub fn effect_of(event: &Event, applied_at: DateTime<Utc>) -> Effect {
    let meta = event.metadata();
    let text = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string()
    };
    let t = event.event_type.as_str();
    let mut inc = vec![
        Increment::counter(counters::PROCESSED),
        Increment::new(maps::EVENTS_BY_TYPE, t, 1.0),
    ];
    if let Some(user) = &event.user_id {
        inc.push(Increment::new(maps::USERS, user.clone(), 1.0));
    }
    if let Some(received) = event.received_at_micros() {
        let micros = (applied_at.timestamp_micros() - received).max(0) as u64;
        inc.push(Increment::latency(maps::LATENCY_E2E, micros));
    }
    match t {
        USER_SIGNUP => {
            inc.push(Increment::new(maps::SIGNUPS_BY_SOURCE, text("source"), 1.0));
            inc.push(Increment::new(
                maps::SIGNUPS_BY_COUNTRY,
                text("country"),
                1.0,
            ));
        }
        SUBSCRIPTION_CREATED => {
            // Validation bounds the amount; the clamp keeps an `Event` built any other way from
            // adding a non-finite or huge figure to the stored sum.
            let amount = meta
                .and_then(|m| m.get("amount"))
                .and_then(|v| v.as_f64())
                .filter(|a| a.is_finite())
                .map_or(0.0, |a| a.clamp(0.0, MAX_AMOUNT));
            let cycle = meta
                .and_then(|m| m.get("billing_cycle"))
                .and_then(|v| v.as_str());
            let plan = text("plan");
            inc.push(Increment::new(
                maps::SUBSCRIPTIONS_BY_PLAN,
                plan.clone(),
                1.0,
            ));
            inc.push(Increment::new(
                maps::MRR_BY_PLAN,
                plan,
                monthly_amount(amount, cycle),
            ));
        }
        USAGE_TRACKED => {
            let q = quantity(event).min(MAX_COUNT) as f64;
            let feature = text("feature");
            inc.push(Increment::new(
                maps::USAGE_EVENTS_BY_FEATURE,
                feature.clone(),
                1.0,
            ));
            inc.push(Increment::new(maps::USAGE_QUANTITY_BY_FEATURE, feature, q));
            if let Some(user) = &event.user_id {
                inc.push(Increment::new(maps::USAGE_BY_USER, user.clone(), q));
            }
        }
        _ => inc.push(Increment::counter(counters::UNHANDLED)),
    }
    Effect {
        event_id: event.id.clone(),
        increments: inc,
        event_time: Some(event.timestamp().unwrap_or(applied_at).timestamp()),
    }
}
