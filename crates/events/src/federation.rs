//! PDUs received from other servers, without I/O: the event ID a received
//! PDU has in its room version, the servers whose signatures it needs, and
//! the signature and content-hash check (an event whose hash does not match
//! is kept only in its redacted form, as the spec says).
//!
//! Also the federation form of an event we send: our stored JSON without
//! anything local (`unsigned`).

use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    RoomVersionId,
    canonical_json::redact,
    room_version_rules::{EventIdFormatVersion, RoomVersionRules},
    signatures::{self, PublicKeyMap, Verified},
};

use crate::{MAX_PDU_BYTES, Pdu, builder::canonical_size};

/// Why a received PDU was refused before any authorization rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPdu(pub String);

impl std::fmt::Display for InvalidPdu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(e: impl std::fmt::Display) -> InvalidPdu {
    InvalidPdu(e.to_string())
}

/// A received PDU as canonical JSON (refusing floats, huge integers and
/// other JSON that is not canonical), within the size limit.
pub fn canonical_pdu(raw: &serde_json::value::RawValue) -> Result<CanonicalJsonObject, InvalidPdu> {
    let object: CanonicalJsonObject = serde_json::from_str(raw.get()).map_err(invalid)?;
    if canonical_size(&object) > MAX_PDU_BYTES {
        return Err(invalid(format!("PDU is larger than {MAX_PDU_BYTES} bytes")));
    }
    Ok(object)
}

/// The rules of a room version this server supports.
pub fn rules(room_version: &RoomVersionId) -> Result<RoomVersionRules, InvalidPdu> {
    room_version.rules().ok_or_else(|| invalid(format!("unsupported room version {room_version}")))
}

/// The event ID of a received PDU: carried in the event (v1, v2) or the
/// reference hash (v3 and later).
pub fn event_id(
    object: &CanonicalJsonObject,
    room_version: &RoomVersionId,
) -> Result<OwnedEventId, InvalidPdu> {
    let rules = rules(room_version)?;
    match rules.event_id_format {
        EventIdFormatVersion::V1 => {
            let id = object
                .get("event_id")
                .and_then(CanonicalJsonValue::as_str)
                .ok_or_else(|| invalid("PDU of a version 1 or 2 room lacks `event_id`"))?;
            EventId::parse(id).map_err(invalid)
        }
        _ => {
            let hash = signatures::reference_hash(object, &rules).map_err(invalid)?;
            EventId::new_v2_or_v3(&hash).map_err(invalid)
        }
    }
}

/// The room a received PDU belongs to; a v12 create event names none, its
/// room ID derives from its event ID.
pub fn room_id(object: &CanonicalJsonObject, event_id: &EventId) -> Result<OwnedRoomId, InvalidPdu> {
    match object.get("room_id").and_then(CanonicalJsonValue::as_str) {
        Some(id) => RoomId::parse(id).map_err(invalid),
        None if object.get("type").and_then(CanonicalJsonValue::as_str) == Some("m.room.create") => {
            RoomId::new_v2(event_id.as_str().trim_start_matches('$')).map_err(invalid)
        }
        None => Err(invalid("PDU lacks `room_id`")),
    }
}

/// The servers whose signatures a received PDU must carry.
pub fn required_servers(
    object: &CanonicalJsonObject,
    room_version: &RoomVersionId,
) -> Result<BTreeSet<OwnedServerName>, InvalidPdu> {
    let rules = rules(room_version)?;
    signatures::required_server_signatures_to_verify_event(object, &rules.signatures).map_err(invalid)
}

/// A received PDU whose signatures verified.
#[derive(Debug, Clone)]
pub struct VerifiedPdu {
    pub pdu: Pdu,
    /// The content hash did not match, so only the redacted form was kept.
    pub redacted: bool,
}

/// Check a received PDU: every required server's signature against `keys`,
/// then its content hash. A bad signature refuses the event; a bad hash
/// keeps it redacted. Any local `unsigned` data the sender added is dropped.
pub fn verify(
    mut object: CanonicalJsonObject,
    room_version: &RoomVersionId,
    keys: &PublicKeyMap,
) -> Result<VerifiedPdu, InvalidPdu> {
    let rules = rules(room_version)?;
    object.remove("unsigned");
    let event_id = event_id(&object, room_version)?;
    let room_id = room_id(&object, &event_id)?;
    let verified = signatures::verify_event(keys, &object, &rules)
        .map_err(|e| invalid(format!("signature check of {event_id} failed: {e}")))?;
    let redacted = verified == Verified::Signatures;
    if redacted {
        object = redact(object, &rules.redaction, None).map_err(invalid)?;
    }
    let pdu = Pdu::from_json(event_id, Some(room_id), object).map_err(invalid)?;
    Ok(VerifiedPdu { pdu, redacted })
}

/// An event as it goes over federation: the signed JSON without our local
/// `unsigned` data (clients' `prev_content`, `redacted_because`).
pub fn outgoing_json(pdu: &Pdu) -> CanonicalJsonObject {
    let mut object = pdu.json.clone();
    object.remove("unsigned");
    object
}

/// Add this server's signature to another server's event (an invite of
/// one of our users, which the inviting server needs our signature on).
pub fn add_signature(
    object: &mut CanonicalJsonObject,
    room_version: &RoomVersionId,
    server_name: &ruma::ServerName,
    key: &crate::ServerSigningKey,
) -> Result<(), InvalidPdu> {
    let rules = rules(room_version)?;
    signatures::sign_event(server_name.as_str(), &key.keypair, object, &rules.redaction).map_err(invalid)
}
