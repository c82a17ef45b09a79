//! Arbitrary bytes into the `POST /webhook/batch` body parser (`webhook::parse_batch`): it
//! must never panic, must refuse with a 4xx only, and must judge every element exactly once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipeline_core::event::Event;

/// Small, so the fuzzer also reaches the "too many events" refusal.
const MAX_EVENTS: usize = 8;

fuzz_target!(|bytes: &[u8]| {
    match webhook::parse_batch(bytes, MAX_EVENTS) {
        Ok(items) => {
            assert!(!items.is_empty() && items.len() <= MAX_EVENTS);
            for (position, item) in items.iter().enumerate() {
                match item {
                    Ok(event) => {
                        let stored = event.stored("2025-12-16T10:00:00.000000Z");
                        assert!(
                            Event::from_slice(stored.as_bytes()).is_ok(),
                            "stored form {stored} no longer validates"
                        );
                    }
                    Err(refused) => {
                        assert_eq!(refused.index, position);
                        assert!(!refused.error.details.is_empty());
                    }
                }
            }
        }
        Err(error) => {
            let status = error.status().as_u16();
            assert!(matches!(status, 400 | 413), "batch refused with {status}");
        }
    }
});
