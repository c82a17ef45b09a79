//! Arbitrary bytes into the event validator (rules in `docs/api.md`): it must never panic, and
//! whatever it accepts must survive the trip through the stored form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipeline_core::event::Event;

fuzz_target!(|bytes: &[u8]| {
    match Event::from_slice(bytes) {
        Ok(event) => {
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
