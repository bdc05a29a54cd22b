//! Canonical JSON parses back to itself and serialises stably.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| estuary_events::fuzz::canonical_json(data));
