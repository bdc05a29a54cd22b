//! A parsed PDU: the canonical JSON as signed, plus the fields the server
//! reads all the time, and its shape for clients.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, UInt, UserId, events::TimelineEventType,
};
use serde_json::{Value as JsonValue, value::RawValue};

/// A PDU of some room. `json` is exactly what was hashed and signed (for
/// room versions 3+ it has no `event_id`; the ID is derived from its hash).
#[derive(Clone, Debug)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    /// The room, also for a v12 `m.room.create` whose JSON has no `room_id`.
    pub room_id: OwnedRoomId,
    pub kind: TimelineEventType,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub state_key: Option<String>,
    pub content: Box<RawValue>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub redacts: Option<OwnedEventId>,
    pub depth: u64,
    pub json: CanonicalJsonObject,
    /// Whether the event failed authorization when it was received.
    pub rejected: bool,
}

fn field<'a>(json: &'a CanonicalJsonObject, name: &str) -> Result<&'a CanonicalJsonValue, String> {
    json.get(name).ok_or_else(|| format!("PDU lacks `{name}`"))
}

fn string_field<'a>(json: &'a CanonicalJsonObject, name: &str) -> Result<&'a str, String> {
    field(json, name)?.as_str().ok_or_else(|| format!("PDU `{name}` is not a string"))
}

/// `prev_events`/`auth_events` are `["$id", ...]` (v3+) or `[["$id", {hashes}], ...]` (v1, v2).
fn event_refs(json: &CanonicalJsonObject, name: &str) -> Result<Vec<OwnedEventId>, String> {
    let Some(value) = json.get(name) else { return Ok(Vec::new()) };
    let list = value.as_array().ok_or_else(|| format!("PDU `{name}` is not an array"))?;
    list.iter()
        .map(|item| {
            let id = match item {
                CanonicalJsonValue::String(s) => s.as_str(),
                CanonicalJsonValue::Array(pair) => {
                    pair.first().and_then(|v| v.as_str()).ok_or_else(|| format!("bad `{name}` entry"))?
                }
                _ => return Err(format!("bad `{name}` entry")),
            };
            EventId::parse(id).map_err(|e| format!("bad event ID in `{name}`: {e}"))
        })
        .collect()
}

impl Pdu {
    /// Parse a PDU whose event ID (and, for a v12 create event, room ID) is already known.
    pub fn from_json(
        event_id: OwnedEventId,
        room_id: Option<OwnedRoomId>,
        json: CanonicalJsonObject,
    ) -> Result<Self, String> {
        let room_id = match json.get("room_id").and_then(|v| v.as_str()) {
            Some(id) => RoomId::parse(id).map_err(|e| format!("bad room_id: {e}"))?,
            None => room_id.ok_or("PDU lacks `room_id`")?,
        };
        let content_value = field(&json, "content")?;
        let content = serde_json::value::to_raw_value(content_value).map_err(|e| e.to_string())?;
        let redacts = match json.get("redacts").and_then(|v| v.as_str()) {
            Some(id) => Some(id.to_owned()),
            None => content_value
                .as_object()
                .and_then(|c| c.get("redacts"))
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        };
        let ts = field(&json, "origin_server_ts")?
            .as_integer()
            .and_then(|i| UInt::try_from(i64::from(i)).ok())
            .ok_or("bad origin_server_ts")?;
        let depth = json.get("depth").and_then(|v| v.as_integer()).map(|i| i64::from(i).max(0) as u64);
        Ok(Self {
            event_id,
            room_id,
            kind: string_field(&json, "type")?.into(),
            sender: UserId::parse(string_field(&json, "sender")?).map_err(|e| format!("bad sender: {e}"))?,
            origin_server_ts: MilliSecondsSinceUnixEpoch(ts),
            state_key: json.get("state_key").and_then(|v| v.as_str()).map(str::to_owned),
            content,
            prev_events: event_refs(&json, "prev_events")?,
            auth_events: event_refs(&json, "auth_events")?,
            redacts: redacts.map(|id| EventId::parse(&id)).transpose().map_err(|e| e.to_string())?,
            depth: depth.unwrap_or(0),
            json,
            rejected: false,
        })
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> JsonValue {
        serde_json::from_str(self.content.get()).unwrap_or(JsonValue::Null)
    }

    /// The event as clients see it (the "ClientEvent" format).
    pub fn to_client_json(&self) -> JsonValue {
        let mut event = serde_json::Map::new();
        event.insert("type".into(), self.kind.to_string().into());
        event.insert("content".into(), self.content_value());
        event.insert("event_id".into(), self.event_id.to_string().into());
        event.insert("sender".into(), self.sender.to_string().into());
        event.insert("origin_server_ts".into(), u64::from(self.origin_server_ts.0).into());
        event.insert("room_id".into(), self.room_id.to_string().into());
        if let Some(state_key) = &self.state_key {
            event.insert("state_key".into(), state_key.clone().into());
        }
        if let Some(redacts) = &self.redacts {
            event.insert("redacts".into(), redacts.to_string().into());
        }
        if let Some(unsigned) = self.json.get("unsigned") {
            event.insert("unsigned".into(), unsigned.clone().into());
        }
        JsonValue::Object(event)
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        // A v12 create event has no room ID of its own.
        self.json.contains_key("room_id").then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}

impl Pdu {
    /// Apply the room version's redaction algorithm: the content is stripped
    /// to what the algorithm keeps and `unsigned.redacted_because` is set.
    pub fn redact(&self, room_version: &ruma::RoomVersionId, because: &Pdu) -> Result<Pdu, String> {
        use ruma::canonical_json::{RedactedBecause, redact};
        let rules = room_version.rules().ok_or("unsupported room version")?;
        let mut because_json = because.json.clone();
        because_json.insert("event_id".into(), because.event_id.to_string().into());
        because_json.insert("room_id".into(), because.room_id.to_string().into());
        let redacted =
            redact(self.json.clone(), &rules.redaction, Some(RedactedBecause::from_json(because_json)))
                .map_err(|e| e.to_string())?;
        let mut pdu = Pdu::from_json(self.event_id.clone(), Some(self.room_id.clone()), redacted)?;
        pdu.rejected = self.rejected;
        Ok(pdu)
    }

    /// Whether the room version's redaction has been applied.
    pub fn is_redacted(&self) -> bool {
        self.json
            .get("unsigned")
            .and_then(|u| u.as_object())
            .is_some_and(|u| u.contains_key("redacted_because"))
    }
}
