//! The serde visitors the one-pass reader of `received.rs` is made of: they borrow what the
//! event rules read and walk every other value exactly as a `serde_json::Value` parse would
//! (`deserialize_any`: the same grammar, number range and nesting limit), building nothing.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Metadata fields some event type has rules for; their values are kept, to be checked
/// against the rules of the event's type once it is known.
pub(super) const RULED: &[&str] = &[
    "source",
    "country",
    "email",
    "company",
    "plan",
    "amount",
    "billing_cycle",
    "trial",
    "feature",
    "quantity",
    "duration_ms",
];

/// What the metadata rules need of a value, read as a `serde_json::Value` would read it
/// (a non-negative integer is `U64`, a negative one `I64`, anything else numeric `F64`).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar<'a> {
    Null,
    Bool,
    Str(Cow<'a, str>),
    U64(u64),
    I64(i64),
    F64(f64),
    /// An array or object, walked.
    Nested,
}

impl Scalar<'_> {
    /// `Value::as_f64`.
    pub(super) fn as_f64(&self) -> Option<f64> {
        match *self {
            Scalar::U64(n) => Some(n as f64),
            Scalar::I64(n) => Some(n as f64),
            Scalar::F64(x) => Some(x),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Bool)
            }
            fn visit_u64<E>(self, n: u64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::U64(n))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::I64(n))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Scalar<'de>, E> {
                Ok(Scalar::F64(x))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar<'de>, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<Scalar<'de>, S::Error> {
                WalkVisitor.visit_seq(seq).map(|_| Scalar::Nested)
            }
            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Scalar<'de>, M::Error> {
                WalkVisitor.visit_map(map).map(|_| Scalar::Nested)
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The `metadata` field, judged in the same pass as the rest of the event.
pub(super) enum Metadata<'a> {
    Null,
    /// The fields of [`RULED`]; the others were walked.
    Object(Vec<(&'static str, Scalar<'a>)>),
    Other,
}

impl<'de> Deserialize<'de> for Metadata<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MetadataVisitor)
    }
}

struct MetadataVisitor;

impl<'de> Visitor<'de> for MetadataVisitor {
    type Value = Metadata<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("metadata")
    }
    fn visit_unit<E>(self) -> Result<Metadata<'de>, E> {
        Ok(Metadata::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Metadata<'de>, E> {
        Ok(Metadata::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Metadata<'de>, E> {
        Ok(Metadata::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Metadata<'de>, E> {
        Ok(Metadata::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Metadata<'de>, E> {
        Ok(Metadata::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Metadata<'de>, E> {
        Ok(Metadata::Other)
    }
    fn visit_seq<S: SeqAccess<'de>>(self, seq: S) -> Result<Metadata<'de>, S::Error> {
        WalkVisitor.visit_seq(seq).map(|_| Metadata::Other)
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Metadata<'de>, M::Error> {
        let mut fields: Vec<(&'static str, Scalar<'de>)> = Vec::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match RULED.iter().find(|k| **k == key.0) {
                Some(&name) if fields.iter().any(|(k, _)| *k == name) => {
                    return Err(de::Error::custom("duplicate metadata field"));
                }
                Some(&name) => fields.push((name, map.next_value()?)),
                None => {
                    map.next_value::<Walked>()?;
                }
            }
        }
        Ok(Metadata::Object(fields))
    }
}

/// The top-level fields the rules look at, borrowed as raw text.
#[derive(Default)]
pub(super) struct TopFields<'a> {
    pub(super) event_id: Option<&'a RawValue>,
    pub(super) event_type: Option<&'a RawValue>,
    pub(super) timestamp: Option<&'a RawValue>,
    pub(super) user_id: Option<&'a RawValue>,
    pub(super) metadata: Option<Metadata<'a>>,
    /// The sender's own, to be replaced.
    pub(super) received_at: Option<&'a RawValue>,
    /// A field given twice: left to the tree validator.
    pub(super) doubtful: bool,
}

impl<'de: 'a, 'a> Deserialize<'de> for TopFields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TopVisitor(std::marker::PhantomData))
    }
}

struct TopVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for TopVisitor<'a> {
    type Value = TopFields<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an event object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<TopFields<'a>, M::Error> {
        let mut fields = TopFields::default();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let slot = match &*key.0 {
                "event_id" => &mut fields.event_id,
                "event_type" => &mut fields.event_type,
                "timestamp" => &mut fields.timestamp,
                "user_id" => &mut fields.user_id,
                "received_at" => &mut fields.received_at,
                "metadata" => {
                    fields.doubtful |= fields.metadata.is_some();
                    fields.metadata = Some(map.next_value::<Metadata<'de>>()?);
                    continue;
                }
                _ => {
                    map.next_value::<Walked>()?;
                    continue;
                }
            };
            fields.doubtful |= slot.is_some();
            *slot = Some(map.next_value::<&'de RawValue>()?);
        }
        Ok(fields)
    }
}

/// An object key, borrowed when it holds no escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Any JSON value, parsed the way a `serde_json::Value` is (`deserialize_any`: the same
/// number range and nesting limit) and then forgotten.
struct Walked;

impl<'de> Deserialize<'de> for Walked {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WalkVisitor)
    }
}

struct WalkVisitor;

impl<'de> Visitor<'de> for WalkVisitor {
    type Value = Walked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Walked, E> {
        Ok(Walked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Walked, E> {
        Ok(Walked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Walked, E> {
        Ok(Walked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Walked, E> {
        Ok(Walked)
    }
    fn visit_str<E>(self, _: &str) -> Result<Walked, E> {
        Ok(Walked)
    }
    fn visit_unit<E>(self) -> Result<Walked, E> {
        Ok(Walked)
    }
    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Walked, S::Error> {
        while seq.next_element::<Walked>()?.is_some() {}
        Ok(Walked)
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Walked, M::Error> {
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value::<Walked>()?;
        }
        Ok(Walked)
    }
}

/// The `events` array of a `POST /webhook/batch` body as raw elements, each to be judged on
/// its own; `None` when the body is not plainly `{"events": [1 ..= max elements], …}`
/// (the tree parser then says what is wrong).
///
/// The elements are found in the same pass that reads the body (the `events` value is read
/// as a sequence where it lies, not borrowed whole and read again).
pub fn batch_elements(text: &str, max: usize) -> Option<Vec<&RawValue>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let elements = de.deserialize_map(BatchVisitor { max }).ok().flatten()?;
    de.end().ok()?;
    (!elements.is_empty()).then_some(elements)
}

struct BatchVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for BatchVisitor {
    type Value = Option<Vec<&'de RawValue>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut events = None;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            if key.0 == "events" {
                if events.is_some() {
                    return Err(de::Error::custom("events given twice"));
                }
                events = Some(map.next_value_seed(ElementsVisitor { max: self.max })?);
            } else {
                map.next_value::<Walked>()?;
            }
        }
        Ok(events)
    }
}

/// At most `max` raw elements; more is an error, so a huge array is not collected.
struct ElementsVisitor {
    max: usize,
}

impl<'de> de::DeserializeSeed<'de> for ElementsVisitor {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ElementsVisitor {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of events")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let mut elements = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max));
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if elements.len() == self.max {
                return Err(de::Error::custom("too many events"));
            }
            elements.push(raw);
        }
        Ok(elements)
    }
}
