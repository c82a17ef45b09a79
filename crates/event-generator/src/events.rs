//! Realistic synthetic events of the three known types (docs/api.md), in the flavour of the
//! original system's samples: signups from marketing sources and countries, subscriptions to
//! the original's plans and prices, usage of product features with quantities.
//!
//! A seed fixes the *content* of a run (types, users, plans, amounts, features). Event ids are
//! always fresh — a per-run nonce plus a counter — because the webhook remembers ids for 24
//! hours: a rerun with the same seed must not turn into a wall of duplicates.

use chrono::SecondsFormat;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use pipeline_core::event::{SUBSCRIPTION_CREATED, USAGE_TRACKED, USER_SIGNUP};

/// Where signups come from.
pub const SOURCES: &[&str] = &[
    "organic",
    "google_ads",
    "facebook",
    "referral",
    "partner",
    "twitter",
    "linkedin",
    "newsletter",
];
/// ISO 3166 country codes of signups.
pub const COUNTRIES: &[&str] = &[
    "US", "GB", "DE", "FR", "CA", "AU", "NL", "IN", "BR", "JP", "ES", "SE",
];
pub const COMPANIES: &[&str] = &[
    "TechCorp",
    "DataFlow Inc",
    "Acme Analytics",
    "CloudNine",
    "Initech",
    "Globex",
    "StartupXYZ",
    "Umbrella Labs",
];
/// The original's plans and their monthly prices.
pub const PLANS: &[(&str, f64)] = &[("basic", 29.99), ("premium", 99.99), ("enterprise", 299.99)];
/// Product features whose usage is tracked.
pub const FEATURES: &[&str] = &[
    "api_call",
    "dashboard_view",
    "report_export",
    "data_import",
    "alert_created",
    "query_run",
    "user_invite",
];

/// The event types the pipeline knows how to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    UserSignup,
    SubscriptionCreated,
    UsageTracked,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [
        EventKind::UserSignup,
        EventKind::SubscriptionCreated,
        EventKind::UsageTracked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserSignup => USER_SIGNUP,
            EventKind::SubscriptionCreated => SUBSCRIPTION_CREATED,
            EventKind::UsageTracked => USAGE_TRACKED,
        }
    }
}

/// One event as sent to the webhook. Typed rather than a `serde_json::Value` so that the load
/// path serialises it cheaply.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SyntheticEvent {
    pub event_id: String,
    pub event_type: &'static str,
    pub user_id: String,
    /// RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    pub metadata: Metadata,
}

/// The metadata of each known type, shaped as docs/api.md describes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Metadata {
    Signup {
        source: &'static str,
        email: String,
        company: &'static str,
        country: &'static str,
    },
    Subscription {
        plan: &'static str,
        amount: f64,
        billing_cycle: &'static str,
        trial: bool,
    },
    Usage {
        feature: &'static str,
        quantity: u64,
        duration_ms: u64,
    },
}

impl SyntheticEvent {
    /// Compact JSON bytes, as sent on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and finite numbers always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The event as a JSON object, for scenarios that add or break fields.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// How many distinct users a factory draws from: enough for realistic "top users" and
/// "distinct users" figures, few enough that users repeat.
const USER_POOL: usize = 1000;

/// Produces events; one per worker so that no lock sits on the load path.
pub struct EventFactory {
    /// Seeded: the same seed gives the same sequence of event contents.
    rng: StdRng,
    /// Makes ids unique across runs and processes; not derived from the seed.
    run_nonce: u64,
    /// Makes ids unique across the factories (workers) of one run.
    stream: u16,
    /// Ids handed out so far by this factory.
    counter: u64,
    /// The users events are attributed to.
    users: Vec<String>,
}

impl EventFactory {
    /// `seed` fixes the content; `run_nonce` and `stream` only make ids unique.
    pub fn new(seed: u64, run_nonce: u64, stream: u16) -> EventFactory {
        let mut users_rng = StdRng::seed_from_u64(seed);
        let users = (0..USER_POOL)
            .map(|_| {
                let tag: String = (0..6)
                    .map(|_| {
                        let n = users_rng.gen_range(0..36u32);
                        char::from_digit(n, 36).unwrap_or('0')
                    })
                    .collect();
                format!("user_{tag}")
            })
            .collect();
        // Each stream gets its own content sequence, still fixed by the seed.
        let stream_seed = seed ^ (u64::from(stream).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        EventFactory {
            rng: StdRng::seed_from_u64(stream_seed.wrapping_add(1)),
            run_nonce,
            stream,
            counter: 0,
            users,
        }
    }

    /// A fresh `evt_<hex>` id: 48 bits of run nonce, 16 bits of stream, 32 bits of counter.
    pub fn next_id(&mut self) -> String {
        self.counter += 1;
        format!(
            "evt_{:012x}{:04x}{:08x}",
            self.run_nonce & 0xffff_ffff_ffff,
            self.stream,
            self.counter & 0xffff_ffff
        )
    }

    /// A mix weighted like product traffic: mostly usage, some signups, few subscriptions.
    pub fn random_event(&mut self) -> SyntheticEvent {
        let kind = match self.rng.gen_range(0..100) {
            0..=59 => EventKind::UsageTracked,
            60..=84 => EventKind::UserSignup,
            _ => EventKind::SubscriptionCreated,
        };
        self.event(kind)
    }

    /// One event of the given type with realistic metadata.
    pub fn event(&mut self, kind: EventKind) -> SyntheticEvent {
        let event_id = self.next_id();
        let user_id = self
            .users
            .choose(&mut self.rng)
            .cloned()
            .unwrap_or_default();
        let metadata = match kind {
            EventKind::UserSignup => Metadata::Signup {
                source: pick(&mut self.rng, SOURCES),
                email: format!("{user_id}@example.com"),
                company: pick(&mut self.rng, COMPANIES),
                country: pick(&mut self.rng, COUNTRIES),
            },
            EventKind::SubscriptionCreated => {
                let (plan, monthly) = PLANS.choose(&mut self.rng).copied().unwrap_or(PLANS[0]);
                let annual = self.rng.gen_bool(0.3);
                Metadata::Subscription {
                    plan,
                    // An annual plan is billed twelve months at once, so its MRR is the price.
                    amount: if annual {
                        (monthly * 12.0 * 100.0).round() / 100.0
                    } else {
                        monthly
                    },
                    billing_cycle: if annual { "annual" } else { "monthly" },
                    trial: self.rng.gen_bool(0.2),
                }
            }
            EventKind::UsageTracked => Metadata::Usage {
                feature: pick(&mut self.rng, FEATURES),
                quantity: self.rng.gen_range(1..=100),
                duration_ms: self.rng.gen_range(5..=5000),
            },
        };
        SyntheticEvent {
            event_id,
            event_type: kind.as_str(),
            user_id,
            timestamp: chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            metadata,
        }
    }

    /// `{"events":[...]}` with `n` random events, as `/webhook/batch` takes it.
    pub fn batch_body(&mut self, n: usize) -> Vec<u8> {
        let mut body = Vec::with_capacity(16 + n * 256);
        body.extend_from_slice(b"{\"events\":[");
        for i in 0..n {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&self.random_event().to_bytes());
        }
        body.extend_from_slice(b"]}");
        body
    }
}

fn pick(rng: &mut StdRng, from: &[&'static str]) -> &'static str {
    from.choose(rng).copied().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipeline_core::event::Event;

    /// What a seed reproduces: everything but the id and the send time.
    fn content(e: &SyntheticEvent) -> (String, String, Metadata) {
        (
            e.event_type.to_string(),
            e.user_id.clone(),
            e.metadata.clone(),
        )
    }

    #[test]
    fn the_same_seed_gives_the_same_content_with_fresh_ids() {
        let mut a = EventFactory::new(42, 1, 0);
        let mut b = EventFactory::new(42, 2, 0);
        for _ in 0..50 {
            let (x, y) = (a.random_event(), b.random_event());
            assert_eq!(content(&x), content(&y));
            assert_ne!(x.event_id, y.event_id);
        }
        let mut c = EventFactory::new(43, 1, 0);
        let differs = (0..20).any(|_| content(&a.random_event()) != content(&c.random_event()));
        assert!(differs, "another seed gives other content");
    }

    #[test]
    fn ids_are_unique_across_streams_and_look_like_the_original() {
        let mut seen = std::collections::HashSet::new();
        for stream in 0..4 {
            let mut f = EventFactory::new(7, 99, stream);
            for _ in 0..1000 {
                let id = f.next_id();
                assert!(id.starts_with("evt_"));
                assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
                assert!(seen.insert(id));
            }
        }
    }

    #[test]
    fn every_generated_event_passes_the_pipeline_validation() {
        let mut f = EventFactory::new(1, 1, 0);
        for kind in EventKind::ALL {
            let e = f.event(kind);
            let parsed = Event::from_slice(&e.to_bytes()).expect("valid event");
            assert_eq!(parsed.event_type, kind.as_str());
        }
        for _ in 0..500 {
            let e = f.random_event();
            Event::from_slice(&e.to_bytes()).expect("valid event");
        }
    }

    #[test]
    fn subscriptions_use_the_original_plans_and_prices() {
        let mut f = EventFactory::new(3, 1, 0);
        for _ in 0..200 {
            let Metadata::Subscription {
                plan,
                amount,
                billing_cycle,
                ..
            } = f.event(EventKind::SubscriptionCreated).metadata
            else {
                panic!("not a subscription");
            };
            let monthly = PLANS.iter().find(|(p, _)| *p == plan).unwrap().1;
            match billing_cycle {
                "monthly" => assert_eq!(amount, monthly),
                "annual" => assert!((amount / 12.0 - monthly).abs() < 0.01),
                other => panic!("billing cycle {other}"),
            }
        }
    }

    #[test]
    fn batch_body_holds_n_valid_events() {
        let mut f = EventFactory::new(5, 1, 0);
        let body: serde_json::Value = serde_json::from_slice(&f.batch_body(20)).unwrap();
        let events = body["events"].as_array().unwrap();
        assert_eq!(events.len(), 20);
        for e in events {
            Event::from_value(e.clone()).expect("valid event");
        }
    }
}
