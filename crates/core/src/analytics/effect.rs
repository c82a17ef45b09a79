//! What applying one event changes, and what its handler logs.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{counters, maps, Effect, Increment};
use crate::event::{
    Event, EventId, ReceivedEvent, MAX_AMOUNT, MAX_COUNT, SUBSCRIPTION_CREATED, USAGE_TRACKED,
    USER_SIGNUP,
};
use crate::logging::LogSafe;

/// What [`effect_of`] reads of a valid event. The consumer has it from a `Value` tree
/// ([`Event`]) or, for the common event, from the stored bytes without one
/// ([`ReceivedEvent`]); both give the same answers, so the effect is the same.
pub trait EventFacts {
    fn id(&self) -> &EventId;
    fn event_type(&self) -> &str;
    fn user_id(&self) -> Option<&str>;
    fn timestamp(&self) -> Option<DateTime<Utc>>;
    fn received_at_micros(&self) -> Option<i64>;
    /// A metadata field's value when it is a string. A [`ReceivedEvent`] keeps only the
    /// fields some rule names, which include every field the effect reads.
    fn meta_str(&self, key: &str) -> Option<&str>;
    /// A metadata field's value when it is a number (`Value::as_f64`).
    fn meta_f64(&self, key: &str) -> Option<f64>;
    /// A metadata field's value when it is a non-negative integer (`Value::as_u64`).
    fn meta_u64(&self, key: &str) -> Option<u64>;
}

impl EventFacts for Event {
    fn id(&self) -> &EventId {
        &self.id
    }
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }
    fn timestamp(&self) -> Option<DateTime<Utc>> {
        Event::timestamp(self)
    }
    fn received_at_micros(&self) -> Option<i64> {
        Event::received_at_micros(self)
    }
    fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata()?.get(key)?.as_str()
    }
    fn meta_f64(&self, key: &str) -> Option<f64> {
        self.metadata()?.get(key).and_then(Value::as_f64)
    }
    fn meta_u64(&self, key: &str) -> Option<u64> {
        self.metadata()?.get(key).and_then(Value::as_u64)
    }
}

impl EventFacts for ReceivedEvent<'_> {
    fn id(&self) -> &EventId {
        &self.id
    }
    fn event_type(&self) -> &str {
        &self.event_type
    }
    fn user_id(&self) -> Option<&str> {
        ReceivedEvent::user_id(self)
    }
    fn timestamp(&self) -> Option<DateTime<Utc>> {
        Some(ReceivedEvent::timestamp(self))
    }
    fn received_at_micros(&self) -> Option<i64> {
        ReceivedEvent::received_at_micros(self)
    }
    fn meta_str(&self, key: &str) -> Option<&str> {
        self.ruled_str(key)
    }
    fn meta_f64(&self, key: &str) -> Option<f64> {
        self.ruled_f64(key)
    }
    fn meta_u64(&self, key: &str) -> Option<u64> {
        self.ruled_u64(key)
    }
}

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

fn quantity(event: &(impl EventFacts + ?Sized)) -> u64 {
    event.meta_u64("quantity").unwrap_or(1)
}

/// The increments of applying `event` at `applied_at`: the totals, and the event time their
/// rollups count at (the event's `timestamp`; `applied_at` for an event without one), so one
/// atomic settle applies both (see [`super::rollup`]).
pub fn effect_of(event: &(impl EventFacts + ?Sized), applied_at: DateTime<Utc>) -> Effect {
    let text = |k: &str| event.meta_str(k).unwrap_or("unknown").to_string();
    let t = event.event_type();
    let mut inc = vec![
        Increment::counter(counters::PROCESSED),
        Increment::new(maps::EVENTS_BY_TYPE, t, 1.0),
    ];
    if let Some(user) = event.user_id() {
        inc.push(Increment::new(maps::USERS, user, 1.0));
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
            let amount = event
                .meta_f64("amount")
                .filter(|a| a.is_finite())
                .map_or(0.0, |a| a.clamp(0.0, MAX_AMOUNT));
            let cycle = event.meta_str("billing_cycle");
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
            if let Some(user) = event.user_id() {
                inc.push(Increment::new(maps::USAGE_BY_USER, user, q));
            }
        }
        _ => inc.push(Increment::counter(counters::UNHANDLED)),
    }
    Effect {
        event_id: event.id().clone(),
        increments: inc,
        event_time: Some(event.timestamp().unwrap_or(applied_at).timestamp()),
    }
}
