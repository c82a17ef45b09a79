//! Decoding Redis replies (RESP2 or RESP3 shapes alike) into deliveries, strings and numbers.
//! A malformed part of a reply is skipped rather than failing the whole call.

use std::borrow::Cow;
use std::collections::HashMap;

use ::redis::Value;

use crate::backend::{Delivery, Lease};
use crate::event::EventId;

/// A delivery of `partition` leased to `consumer` from an entry's parts; `None` without a
/// valid event id.
pub(super) fn delivery(
    partition: u16,
    entry: &str,
    deliveries: i64,
    consumer: &str,
    event_id: Option<&str>,
    payload: Option<String>,
    failures: Option<&str>,
) -> Option<Delivery> {
    let event_id = EventId::parse(event_id?).ok()?;
    let failures: u32 = failures.and_then(|f| f.parse().ok()).unwrap_or(0);
    Some(Delivery {
        lease: Lease::Redis {
            partition,
            entry: entry.to_string(),
            consumer: consumer.to_string(),
            deliveries: deliveries.max(0) as u64,
        },
        event_id,
        payload: payload.unwrap_or_default(),
        attempt: failures.saturating_add(1),
    })
}

/// Deliveries of an `XREADGROUP … >` reply: first deliveries, so their delivery count is 1.
/// `partition_of` names the partition of each stream in the reply (streams it does not know
/// are skipped).
pub(super) fn stream_read_deliveries(
    reply: &Value,
    consumer: &str,
    partition_of: impl Fn(&str) -> Option<u16>,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    // RESP2: [[name, entries], …]; RESP3: a map of name -> entries.
    let streams: Vec<(&Value, &Value)> = match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) if pair.len() == 2 => Some((&pair[0], &pair[1])),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.iter().map(|(k, v)| (k, v)).collect(),
        _ => return out,
    };
    for (name, entries) in streams {
        let Some(partition) = text(name).and_then(|n| partition_of(&n)) else {
            continue;
        };
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let (Some(id), Some(fields)) = (parts.first().and_then(borrowed_text), parts.get(1))
            else {
                continue;
            };
            // Looked up where they lie: only the payload is copied out of the reply.
            if let Some(d) = delivery(
                partition,
                &id,
                1,
                consumer,
                entry_field(fields, "id").and_then(borrowed_text).as_deref(),
                entry_field(fields, "payload").and_then(text),
                entry_field(fields, "failures")
                    .and_then(borrowed_text)
                    .as_deref(),
            ) {
                out.push(d);
            }
        }
    }
    out
}

/// The value of the field `name` of a stream entry (`[k, v, k, v, …]` or a map); of a name
/// given twice, the last, as [`field_map`] keeps it.
fn entry_field<'v>(fields: &'v Value, name: &str) -> Option<&'v Value> {
    let named = |k: &Value| match k {
        Value::BulkString(b) => b == name.as_bytes(),
        Value::SimpleString(s) => s == name,
        _ => false,
    };
    match fields {
        Value::Array(kv) => kv
            .chunks_exact(2)
            .rev()
            .find(|p| named(&p[0]))
            .map(|p| &p[1]),
        Value::Map(kv) => kv.iter().rev().find(|(k, _)| named(k)).map(|(_, v)| v),
        _ => None,
    }
}

/// A stream entry's fields (`[k, v, k, v, …]` or a map) as strings.
pub(super) fn field_map(fields: &Value) -> HashMap<String, String> {
    let mut out = HashMap::new();
    match fields {
        Value::Array(kv) => {
            for pair in kv.chunks_exact(2) {
                if let (Some(k), Some(v)) = (text(&pair[0]), text(&pair[1])) {
                    out.insert(k, v);
                }
            }
        }
        Value::Map(kv) => {
            for (k, v) in kv {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

/// A string, bulk string or integer reply as text.
pub(super) fn text(v: &Value) -> Option<String> {
    borrowed_text(v).map(Cow::into_owned)
}

/// [`text`], borrowed from the reply where it is a string that needs no repair.
fn borrowed_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b)),
        Value::SimpleString(s) => Some(Cow::Borrowed(s)),
        Value::VerbatimString { text, .. } => Some(Cow::Borrowed(text)),
        Value::Int(i) => Some(Cow::Owned(i.to_string())),
        Value::Okay => Some(Cow::Borrowed("OK")),
        _ => None,
    }
}

/// An integer reply, or a string holding one.
pub(super) fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// A double or integer reply, or a string holding a number.
pub(super) fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Double(d) => Some(*d),
        Value::Int(i) => Some(*i as f64),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// `[field, score, field, score, …]` as pairs.
pub(super) fn scored_pairs(v: &Value) -> Vec<(String, f64)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .chunks_exact(2)
        .filter_map(|p| Some((text(&p[0])?, number(&p[1])?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn an_entry_field_is_found_in_either_reply_shape_and_the_last_of_a_name_wins() {
        let resp2 = Value::Array(vec![
            bulk("id"),
            bulk("e-1"),
            bulk("payload"),
            bulk("{}"),
            bulk("id"),
            bulk("e-2"),
        ]);
        let resp3 = Value::Map(vec![
            (bulk("id"), bulk("e-1")),
            (bulk("payload"), bulk("{}")),
        ]);
        let field = |fields: &Value, name| entry_field(fields, name).and_then(text);
        assert_eq!(field(&resp2, "id").as_deref(), Some("e-2"));
        assert_eq!(field(&resp2, "payload").as_deref(), Some("{}"));
        assert_eq!(field(&resp3, "id").as_deref(), Some("e-1"));
        assert_eq!(field(&resp2, "failures"), None);
        assert_eq!(field(&Value::Nil, "id"), None);
        // The key's whole name must match, not a prefix of it.
        assert_eq!(field(&resp3, "pay"), None);
    }
}
