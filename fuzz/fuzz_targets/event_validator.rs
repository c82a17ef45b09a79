//! Arbitrary bytes into the event validator (rules in `docs/api.md`): it must never panic,
//! whatever it accepts must survive the trip through the stored form, and nothing it accepts
//! may break the analytics: metric keys stay short and plain, numbers stay within the bounds.
//! The webhook's tree-free validator (`ReceivedEvent::accept`) is held to the tree validator's
//! verdict on every input: it accepts nothing the tree refuses, and stores the same JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipeline_core::event::{
    format_received_at, Event, ReceivedEvent, SUBSCRIPTION_CREATED, USAGE_TRACKED, USER_SIGNUP,
};

/// At most 64 ASCII letters, digits and `extra` characters.
fn plain(s: &str, extra: &str) -> bool {
    s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

/// The analytics rules of an accepted event, written independently of the validator.
fn check_accepted(event: &Event) {
    let t = &event.event_type;
    assert!(
        t.starts_with(|c: char| c.is_ascii_alphabetic()) && plain(t, "_.:-"),
        "event_type {t:?}"
    );
    if let Some(user) = &event.user_id {
        assert!(user.chars().count() <= 128 && !user.chars().any(char::is_control));
    }
    let Some(meta) = event.metadata() else { return };
    let dimensions: &[&str] = match t.as_str() {
        USER_SIGNUP => &["source", "country"],
        SUBSCRIPTION_CREATED => &["plan"],
        USAGE_TRACKED => &["feature"],
        _ => &[],
    };
    for key in dimensions {
        if let Some(v) = meta.get(*key).filter(|v| !v.is_null()) {
            let s = v.as_str().unwrap_or_else(|| panic!("{key} {v}"));
            assert!(!s.is_empty() && plain(s, " _-.:/"), "{key} {s:?}");
        }
    }
    let present = |key: &str| meta.get(key).filter(|v| !v.is_null());
    if t == SUBSCRIPTION_CREATED {
        if let Some(v) = present("amount") {
            assert!(
                v.as_f64().is_some_and(|a| (0.0..=1e9).contains(&a)),
                "amount {v}"
            );
        }
    }
    if t == USAGE_TRACKED {
        for key in ["quantity", "duration_ms"] {
            if let Some(v) = present(key) {
                assert!(v.as_u64().is_some_and(|n| n <= 1_000_000_000), "{key} {v}");
            }
        }
    }
}

/// The fast path against the tree validator's verdict `tree`.
fn check_fast_path(bytes: &[u8], tree: &Result<Event, pipeline_core::event::ValidationError>) {
    let Some(fast) = std::str::from_utf8(bytes).ok().and_then(ReceivedEvent::accept) else {
        return;
    };
    let Ok(tree) = tree else {
        panic!("fast path accepted what the validator refused: {bytes:?}");
    };
    assert_eq!(fast.id, tree.id);
    assert_eq!(&*fast.event_type, tree.event_type.as_str());
    let at = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    let mut stamped = tree.clone();
    stamped.stamp_received_at(at);
    let stored: serde_json::Value = serde_json::from_str(&fast.stored(&format_received_at(at)))
        .unwrap_or_else(|e| panic!("stored form is not JSON: {e}"));
    assert_eq!(stored, serde_json::Value::Object(stamped.body));
}

fuzz_target!(|bytes: &[u8]| {
    let tree = Event::from_slice(bytes);
    check_fast_path(bytes, &tree);
    match tree {
        Ok(event) => {
            check_accepted(&event);
            // What the webhook stores is what a consumer validates again.
            let stored = event.to_json();
            let again = Event::from_slice(stored.as_bytes())
                .unwrap_or_else(|e| panic!("stored form {stored} no longer validates: {e}"));
            assert_eq!(again.id, event.id);
            assert_eq!(again.event_type, event.event_type);
        }
        Err(error) => {
            // Every refusal names at least one problem, so the 400 has `details`.
            assert!(!error.details.is_empty(), "refusal without details");
        }
    }
});
