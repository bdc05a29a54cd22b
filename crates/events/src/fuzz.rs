//! Fuzzing entry points: arbitrary bytes into the code a remote server's
//! input reaches first. The cargo-fuzz targets in `fuzz/` call these; a unit
//! test runs them over mutated seeds on every test run. Each must return on
//! any input; a panic or a failed assertion is a bug.

use std::collections::BTreeMap;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, RoomVersionId, signatures};

use crate::Pdu;

/// Room versions whose rules differ in what parsing, hashing and redaction see.
const VERSIONS: [RoomVersionId; 5] =
    [RoomVersionId::V1, RoomVersionId::V3, RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// A PDU as a remote server sends it: parse, derive its event ID, check its
/// hashes and signatures, redact it and run the auth rules that need no
/// state, for each kind of room version.
pub fn pdu(data: &[u8]) {
    let Ok(CanonicalJsonValue::Object(object)) = serde_json::from_slice::<CanonicalJsonValue>(data) else {
        return;
    };
    for version in &VERSIONS {
        let Some(rules) = version.rules() else { continue };
        let Ok(hash) = signatures::reference_hash(&object, &rules) else { continue };
        let Ok(event_id) = EventId::new_v2_or_v3(&hash) else { continue };
        let no_keys: BTreeMap<String, BTreeMap<String, ruma::serde::Base64>> = BTreeMap::new();
        let _ = signatures::verify_event(&no_keys, &object, &rules);
        let Ok(pdu) = Pdu::from_json(event_id, None, object.clone()) else { continue };
        let _ = pdu.redact(version, &pdu);
        let _ =
            ruma::state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |_: &EventId| {
                None::<Pdu>
            });
        let _ = round_trip(&pdu.json);
    }
}

/// Canonical JSON: what parses serialises to text that parses back to the
/// same value and serialises to the same text.
pub fn canonical_json(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(canonical) = CanonicalJsonValue::try_from(value) else { return };
    let text = canonical.to_string();
    let again: CanonicalJsonValue = serde_json::from_str(&text).expect("canonical JSON parses back");
    assert_eq!(again, canonical, "canonical JSON round-trips");
    assert_eq!(again.to_string(), text, "canonical JSON serialises stably");
}

fn round_trip(object: &CanonicalJsonObject) -> Option<()> {
    let text = CanonicalJsonValue::Object(object.clone()).to_string();
    canonical_json(text.as_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    /// Seeds: a real signed PDU, odd numbers, deep nesting, unicode.
    fn seeds() -> Vec<Vec<u8>> {
        let pdu = serde_json::json!({
            "type": "m.room.member", "state_key": "@a:x", "sender": "@a:x", "room_id": "!r:x",
            "content": {"membership": "join", "displayname": "A\u{e9}\u{1F600}"},
            "origin_server_ts": 1, "depth": 3, "prev_events": ["$p"], "auth_events": [["$a", {"sha256": "x"}]],
            "hashes": {"sha256": "abc"}, "signatures": {"x": {"ed25519:1": "c2ln"}}, "unsigned": {"age": 1},
            "redacts": "$r",
        });
        vec![
            pdu.to_string().into_bytes(),
            br#"{"a":[1,-0,9007199254740991,-9007199254740991,1e3,0.5,true,null,"\u0000"]}"#.to_vec(),
            format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes(),
            br#"{"content":{},"type":"m.room.create","sender":"@a:x","origin_server_ts":0}"#.to_vec(),
        ]
    }

    /// A few thousand deterministic mutations of each seed: byte flips,
    /// truncations and splices. Bounded, so it runs in every test run.
    #[test]
    fn fuzz_targets_survive_mutated_seeds() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for seed in seeds() {
            super::pdu(&seed);
            super::canonical_json(&seed);
            for _ in 0..1500 {
                let mut input = seed.clone();
                for _ in 0..(next() % 4 + 1) {
                    let at = (next() as usize) % input.len().max(1);
                    match next() % 4 {
                        0 if !input.is_empty() => input[at] ^= 1 << (next() % 8),
                        1 => input.truncate(at),
                        2 => input.insert(at.min(input.len()), b"{}[],:\"0e-9\\"[(next() % 12) as usize]),
                        _ if !input.is_empty() => input[at] = (next() % 128) as u8,
                        _ => {}
                    }
                }
                super::pdu(&input);
                super::canonical_json(&input);
            }
        }
    }
}
