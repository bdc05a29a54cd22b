//! A PDU as a remote server sends it: parsing, event ID, hashes and
//! signatures, redaction, state-independent auth rules.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| estuary_events::fuzz::pdu(data));
