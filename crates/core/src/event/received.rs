//! The webhook's ingest form of an event: validated in one pass over the sender's bytes, stored
//! as those bytes with `received_at` spliced in.
//!
//! [`Event::from_value`] builds a `serde_json::Value` tree of every event and the stored form is
//! that tree written out again; on the ingest path that tree is most of the work. Here the
//! fields the rules look at are borrowed from the input and checked where they lie, every other
//! value is only walked (so the grammar, the number range and the nesting limit are exactly
//! those of a `Value` parse), and the stored form is the sender's object text with
//! `"received_at":"…"` appended before its closing brace.
//!
//! A `received_at` the sender gave is replaced where it stands, as in the tree.
//!
//! The fast path only ever *accepts*: whenever it is not sure — any rule broken, a duplicate
//! field it would have to decide between, anything the walk refuses —
//! [`ReceivedEvent::accept`] answers `None` and the caller asks
//! [`Event::from_value`], whose judgement (and wording) is the contract. Both agree on what they
//! accept: a differential test and a fuzz target hold them to it. A consumer reading the stored
//! form sees the same fields a `Value` parse of the original would have given, since the bytes
//! are the original's.
//!
//! The consumer reads a stored event the same way: what the analytics effect needs (the user,
//! `received_at`, the metadata fields some rule names) is kept from the one pass, so the
//! common delivery is applied without a tree too (`analytics::effect::EventFacts`).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::fields::{Metadata, Scalar, TopFields};
use super::{
    future_skew, is_dimension_value, is_event_type, Event, EventId, ValidationError, MAX_AMOUNT,
    MAX_COUNT, MAX_USER_ID_LEN, SUBSCRIPTION_CREATED, USAGE_TRACKED, USER_SIGNUP,
};

/// A validated event as the webhook received it, ready to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent<'a> {
    pub id: EventId,
    pub event_type: Cow<'a, str>,
    timestamp: DateTime<Utc>,
    user_id: Option<Cow<'a, str>>,
    /// The metadata fields of [`super::fields::RULED`] the event has (empty for
    /// [`Source::Tree`], whose metadata is read from the tree).
    ruled: Vec<(&'static str, Scalar<'a>)>,
    source: Source<'a>,
}

#[derive(Debug, Clone, PartialEq)]
enum Source<'a> {
    /// The sender's object text, trimmed, without duplicate fields; and where in it the value
    /// of the sender's own `received_at` lies, if it has one.
    Text {
        text: &'a str,
        received_at: Option<std::ops::Range<usize>>,
    },
    /// An event the tree validator accepted (one the fast path left to it).
    Tree(Map<String, Value>),
}

impl<'a> ReceivedEvent<'a> {
    /// Validates the JSON text of one event without building a tree. `None` is not a refusal:
    /// it means "judge it with [`Event::from_value`]", which accepts it or says why not.
    pub fn accept(text: &'a str) -> Option<ReceivedEvent<'a>> {
        let text = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
        let fields: TopFields<'a> = serde_json::from_str(text).ok()?;
        if fields.doubtful {
            return None;
        }
        let id = EventId::parse(&string(fields.event_id?)?).ok()?;
        let event_type = string(fields.event_type?)?;
        if !is_event_type(&event_type) {
            return None;
        }
        let timestamp = DateTime::parse_from_rfc3339(&string(fields.timestamp?)?)
            .ok()?
            .with_timezone(&Utc);
        let user_id = match fields.user_id.filter(|raw| !is_null(raw)) {
            Some(user) => {
                let user = string(user)?;
                if user.chars().count() > MAX_USER_ID_LEN || user.chars().any(char::is_control) {
                    return None;
                }
                Some(user)
            }
            None => None,
        };
        let ruled = match fields.metadata {
            None | Some(Metadata::Null) => Vec::new(),
            Some(Metadata::Object(meta)) => {
                metadata_is_valid(&event_type, &meta)?;
                meta
            }
            Some(Metadata::Other) => return None,
        };
        // The sender's value is replaced where it stands (the fast path takes only a string
        // there, read as a tree parse would read it).
        if let Some(raw) = fields.received_at {
            string(raw)?;
        }
        // The raw value is a slice of `text`: its offset says where the value lies.
        let received_at = fields.received_at.map(|raw| {
            let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
            start..start + raw.get().len()
        });
        Some(ReceivedEvent {
            id,
            event_type,
            timestamp,
            user_id,
            ruled,
            source: Source::Text { text, received_at },
        })
    }

    /// The event's `user_id`, when it has one.
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// The event's `received_at` in microseconds, when it holds one (as
    /// [`Event::received_at_micros`] reads it).
    pub fn received_at_micros(&self) -> Option<i64> {
        let at = match &self.source {
            Source::Text {
                text,
                received_at: Some(at),
            } => json_string(&text[at.clone()])?,
            Source::Text { .. } => return None,
            Source::Tree(body) => Cow::Borrowed(body.get("received_at")?.as_str()?),
        };
        Some(DateTime::parse_from_rfc3339(&at).ok()?.timestamp_micros())
    }

    /// A metadata field some rule names ([`super::fields::RULED`]), as [`Event::metadata`]
    /// would give it.
    fn ruled(&self, key: &str) -> Option<Ruled<'_>> {
        match &self.source {
            Source::Tree(body) => body.get("metadata")?.as_object()?.get(key).map(Ruled::Tree),
            Source::Text { .. } => self
                .ruled
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| Ruled::Text(v)),
        }
    }

    /// [`Self::ruled`] when it is a string.
    pub(crate) fn ruled_str(&self, key: &str) -> Option<&str> {
        match self.ruled(key)? {
            Ruled::Tree(v) => v.as_str(),
            Ruled::Text(Scalar::Str(s)) => Some(s),
            Ruled::Text(_) => None,
        }
    }

    /// [`Self::ruled`] when it is a number (`Value::as_f64`).
    pub(crate) fn ruled_f64(&self, key: &str) -> Option<f64> {
        match self.ruled(key)? {
            Ruled::Tree(v) => v.as_f64(),
            Ruled::Text(v) => v.as_f64(),
        }
    }

    /// [`Self::ruled`] when it is a non-negative integer (`Value::as_u64`).
    pub(crate) fn ruled_u64(&self, key: &str) -> Option<u64> {
        match self.ruled(key)? {
            Ruled::Tree(v) => v.as_u64(),
            Ruled::Text(Scalar::U64(n)) => Some(*n),
            Ruled::Text(_) => None,
        }
    }

    /// The event's `timestamp` in UTC (the rules require one).
    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }

    /// Refuses an event more than `max_skew` in the future, as [`Event::check_future_skew`].
    pub fn check_future_skew(
        &self,
        now: DateTime<Utc>,
        max_skew: std::time::Duration,
    ) -> Result<(), ValidationError> {
        future_skew(Some(self.timestamp), now, max_skew)
    }

    /// The stored form: the sender's object with `received_at` (RFC 3339 UTC, as
    /// [`super::format_received_at`] writes it) as its last field.
    pub fn stored(&self, received_at: &str) -> String {
        match &self.source {
            // `received_at` is RFC 3339 text: it needs no escaping.
            Source::Text {
                text,
                received_at: Some(at),
            } => {
                let mut out = String::with_capacity(text.len() + received_at.len());
                out.push_str(&text[..at.start]);
                out.push('"');
                out.push_str(received_at);
                out.push('"');
                out.push_str(&text[at.end..]);
                out
            }
            // `text` is a JSON object holding at least `event_id`, so it ends with `}` and a
            // field goes before it after a comma.
            Source::Text {
                text,
                received_at: None,
            } => {
                let open = &text[..text.len() - 1];
                let mut out = String::with_capacity(text.len() + received_at.len() + 18);
                out.push_str(open);
                out.push_str(",\"received_at\":\"");
                out.push_str(received_at);
                out.push_str("\"}");
                out
            }
            Source::Tree(body) => {
                let mut body = body.clone();
                body.insert("received_at".into(), Value::String(received_at.into()));
                // Serialising a Map of Values cannot fail.
                serde_json::to_string(&body).unwrap_or_default()
            }
        }
    }
}

impl From<Event> for ReceivedEvent<'static> {
    /// An event the tree validator accepted; its `timestamp` was checked by it.
    fn from(event: Event) -> Self {
        let timestamp = event.timestamp().unwrap_or_default();
        ReceivedEvent {
            id: event.id,
            event_type: Cow::Owned(event.event_type),
            timestamp,
            user_id: event.user_id.map(Cow::Owned),
            ruled: Vec::new(),
            source: Source::Tree(event.body),
        }
    }
}

/// `null`, as a raw value's text.
fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A metadata value of [`ReceivedEvent::ruled`]: where the event keeps it.
enum Ruled<'r> {
    Tree(&'r Value),
    Text(&'r Scalar<'r>),
}

/// A raw value that is a JSON string, unescaped; borrowed when it holds no escape.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    json_string(raw.get())
}

/// JSON text that is one string, unescaped; borrowed when it holds no escape.
fn json_string(text: &str) -> Option<Cow<'_, str>> {
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(s) => Some(Cow::Borrowed(s)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// The metadata rules of [`super::check_metadata`] for `event_type`, on the kept fields.
fn metadata_is_valid(event_type: &str, fields: &[(&str, Scalar<'_>)]) -> Option<()> {
    for (key, value) in fields {
        let valid = match (event_type, *key, value) {
            (_, _, Scalar::Null) => true,
            (USER_SIGNUP, "source" | "country", v)
            | (SUBSCRIPTION_CREATED, "plan", v)
            | (USAGE_TRACKED, "feature", v) => {
                matches!(v, Scalar::Str(s) if is_dimension_value(s))
            }
            (USER_SIGNUP, "email" | "company", v) => matches!(v, Scalar::Str(_)),
            (SUBSCRIPTION_CREATED, "amount", v) => v
                .as_f64()
                .is_some_and(|a| a.is_finite() && (0.0..=MAX_AMOUNT).contains(&a)),
            (SUBSCRIPTION_CREATED, "billing_cycle", v) => {
                matches!(v, Scalar::Str(s) if matches!(&**s, "monthly" | "annual"))
            }
            (SUBSCRIPTION_CREATED, "trial", v) => matches!(v, Scalar::Bool),
            (USAGE_TRACKED, "quantity" | "duration_ms", v) => {
                matches!(v, Scalar::U64(n) if *n <= MAX_COUNT)
            }
            // No rule for this field of this type.
            _ => true,
        };
        if !valid {
            return None;
        }
    }
    Some(())
}
