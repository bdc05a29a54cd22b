//! Building new PDUs: fill in the fields, hash, sign, and derive the event ID
//! (and, for a v12 create event, the room ID) as the room version says.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, RoomVersionId, ServerName,
    canonical_json::to_canonical_value,
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules},
    signatures,
};
use serde_json::Value as JsonValue;

use crate::{MAX_PDU_BYTES, Pdu, ServerSigningKey};

/// What the sender wants: everything a client chooses about an event.
#[derive(Clone, Debug)]
pub struct PduTemplate {
    pub kind: TimelineEventType,
    pub content: JsonValue,
    pub state_key: Option<String>,
    /// For `m.room.redaction`: the event redacted.
    pub redacts: Option<OwnedEventId>,
    /// The `origin_server_ts` an appservice asked for (timestamp massaging);
    /// now when `None`.
    pub origin_server_ts: Option<MilliSecondsSinceUnixEpoch>,
}

impl PduTemplate {
    pub fn state(
        kind: impl Into<TimelineEventType>,
        state_key: impl Into<String>,
        content: JsonValue,
    ) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
            origin_server_ts: None,
        }
    }

    pub fn message(kind: impl Into<TimelineEventType>, content: JsonValue) -> Self {
        Self { kind: kind.into(), content, state_key: None, redacts: None, origin_server_ts: None }
    }
}

/// A referenced event: its ID, and for room versions 1 and 2 its reference hash.
#[derive(Clone, Debug)]
pub struct EventRef {
    pub event_id: OwnedEventId,
    pub sha256: Option<String>,
}

/// Where the new event goes in the DAG and who signs it.
pub struct BuildContext<'a> {
    /// None only for the `m.room.create` event of a v12 room (its ID is derived).
    pub room_id: Option<&'a RoomId>,
    pub room_version: &'a RoomVersionId,
    pub sender: OwnedUserId,
    pub prev_events: Vec<EventRef>,
    pub auth_events: Vec<EventRef>,
    pub depth: u64,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub server_name: &'a ServerName,
    pub key: &'a ServerSigningKey,
}

#[derive(Debug)]
pub enum BuildError {
    /// Over the 65,536-byte limit.
    TooLarge,
    UnsupportedRoomVersion,
    Invalid(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge => write!(f, "event is larger than {MAX_PDU_BYTES} bytes"),
            Self::UnsupportedRoomVersion => write!(f, "unsupported room version"),
            Self::Invalid(e) => write!(f, "invalid event: {e}"),
        }
    }
}

pub type BuiltPdu = Pdu;

fn invalid(e: impl std::fmt::Display) -> BuildError {
    BuildError::Invalid(e.to_string())
}

fn references(refs: &[EventRef], format: &EventsReferenceFormatVersion) -> CanonicalJsonValue {
    let items = refs
        .iter()
        .map(|r| match (format, &r.sha256) {
            (EventsReferenceFormatVersion::V1, Some(hash)) => {
                let mut hashes = CanonicalJsonObject::new();
                hashes.insert("sha256".into(), hash.clone().into());
                CanonicalJsonValue::Array(vec![r.event_id.to_string().into(), hashes.into()])
            }
            _ => r.event_id.to_string().into(),
        })
        .collect();
    CanonicalJsonValue::Array(items)
}

/// Build, hash and sign a PDU.
pub fn build_pdu(template: PduTemplate, ctx: BuildContext<'_>) -> Result<BuiltPdu, BuildError> {
    let (server_name, key, room_version, room_id) = (ctx.server_name, ctx.key, ctx.room_version, ctx.room_id);
    let object = event_object(template, &ctx)?;
    sign_object(object, room_version, room_id, server_name, key)
}

/// The event's fields before hashing and signing: what `make_join` and
/// `make_leave` hand a joining server to sign (`sign_object`).
pub fn event_object(
    template: PduTemplate,
    ctx: &BuildContext<'_>,
) -> Result<CanonicalJsonObject, BuildError> {
    let rules: RoomVersionRules = ctx.room_version.rules().ok_or(BuildError::UnsupportedRoomVersion)?;
    let mut content = template.content;
    let mut object = CanonicalJsonObject::new();
    if let Some(redacts) = &template.redacts {
        if rules.redaction.content_field_redacts {
            if let Some(map) = content.as_object_mut() {
                map.insert("redacts".into(), redacts.to_string().into());
            }
        } else {
            object.insert("redacts".into(), redacts.to_string().into());
        }
    }
    object.insert("type".into(), template.kind.to_string().into());
    object.insert("content".into(), to_canonical_value(&content).map_err(invalid)?);
    object.insert("sender".into(), ctx.sender.to_string().into());
    object.insert("origin_server_ts".into(), to_canonical_value(ctx.origin_server_ts).map_err(invalid)?);
    object.insert("depth".into(), to_canonical_value(ctx.depth).map_err(invalid)?);
    object.insert("prev_events".into(), references(&ctx.prev_events, &rules.events_reference_format));
    object.insert("auth_events".into(), references(&ctx.auth_events, &rules.events_reference_format));
    if let Some(room_id) = ctx.room_id {
        object.insert("room_id".into(), room_id.to_string().into());
    }
    if let Some(state_key) = &template.state_key {
        object.insert("state_key".into(), state_key.clone().into());
    }
    // Rooms v1 and v2 carry a server-chosen event ID inside the signed event.
    if matches!(rules.event_id_format, EventIdFormatVersion::V1) {
        object.insert("event_id".into(), EventId::new_v1(ctx.server_name).to_string().into());
    }
    Ok(object)
}

/// Make another server's event template ours before signing it: in room
/// versions 1 and 2 the event ID is chosen by the signing server, so a
/// template gets a fresh one of ours (and one of theirs is replaced).
pub fn claim_template(
    object: &mut CanonicalJsonObject,
    room_version: &RoomVersionId,
    server_name: &ServerName,
) {
    let v1 =
        room_version.rules().is_some_and(|rules| matches!(rules.event_id_format, EventIdFormatVersion::V1));
    if v1 {
        object.insert("event_id".into(), EventId::new_v1(server_name).to_string().into());
    } else {
        object.remove("event_id");
    }
}

/// Hash and sign an event's fields as `server_name` and derive its ID.
pub fn sign_object(
    mut object: CanonicalJsonObject,
    room_version: &RoomVersionId,
    room_id: Option<&RoomId>,
    server_name: &ServerName,
    key: &ServerSigningKey,
) -> Result<BuiltPdu, BuildError> {
    let rules: RoomVersionRules = room_version.rules().ok_or(BuildError::UnsupportedRoomVersion)?;
    object.remove("signatures");
    object.remove("hashes");
    object.remove("unsigned");
    signatures::hash_and_sign_event(server_name.as_str(), &key.keypair, &mut object, &rules.redaction)
        .map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => BuildError::TooLarge,
            other => invalid(other),
        })?;
    if canonical_size(&object) > MAX_PDU_BYTES {
        return Err(BuildError::TooLarge);
    }
    let v1_event_id = match rules.event_id_format {
        EventIdFormatVersion::V1 => Some(
            object
                .get("event_id")
                .and_then(|v| v.as_str())
                .and_then(|id| EventId::parse(id).ok())
                .ok_or_else(|| invalid("event lacks `event_id`"))?,
        ),
        _ => None,
    };
    let room_id = match room_id {
        Some(id) => Some(id.to_owned()),
        None => object.get("room_id").and_then(|v| v.as_str()).and_then(|id| RoomId::parse(id).ok()),
    };
    let (event_id, room_id) = derive_ids(&object, &rules, v1_event_id, room_id.as_deref())?;
    Pdu::from_json(event_id, Some(room_id), object).map_err(BuildError::Invalid)
}

/// The event ID from the reference hash (v3+), and the room ID of a v12 create event.
fn derive_ids(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
    v1_event_id: Option<OwnedEventId>,
    room_id: Option<&RoomId>,
) -> Result<(OwnedEventId, OwnedRoomId), BuildError> {
    let event_id = match v1_event_id {
        Some(id) => id,
        None => {
            let hash = signatures::reference_hash(object, rules).map_err(invalid)?;
            EventId::new_v2_or_v3(&hash).map_err(invalid)?
        }
    };
    let room_id = match room_id {
        Some(id) => id.to_owned(),
        None => RoomId::new_v2(event_id.as_str().trim_start_matches('$')).map_err(invalid)?,
    };
    Ok((event_id, room_id))
}

/// Size of the canonical JSON serialisation.
pub fn canonical_size(object: &CanonicalJsonObject) -> usize {
    serde_json::to_vec(object).map(|v| v.len()).unwrap_or(usize::MAX)
}

/// The reference hash of a stored PDU (what v1/v2 `prev_events` carry).
pub fn reference_hash(pdu: &Pdu, room_version: &RoomVersionId) -> Option<String> {
    let rules = room_version.rules()?;
    signatures::reference_hash(&pdu.json, &rules).ok()
}
