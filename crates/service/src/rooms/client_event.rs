//! An event as clients see it (the spec's `ClientEvent`), written straight
//! from the stored text.
//!
//! Reads of many events (sync, `/messages`) used to parse each event's
//! content into a JSON tree, copy it into the response's tree and write it
//! out again; together that was a third of an initial sync. A
//! [`ClientEvent`] keeps the stored event and writes its content as the
//! text it is stored as; only `unsigned`, which the server adds to, is a
//! JSON map of its own.

use ruma::EventId;
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::{Map, Value as JsonValue};

use super::StoredPdu;

pub struct ClientEvent {
    stored: StoredPdu,
    /// The stored `unsigned` data and what the server adds for the viewer
    /// (`age`, `transaction_id`, `m.relations`).
    unsigned: Map<String, JsonValue>,
    /// `redacts` at the top level: from room version 11 it is in the
    /// content, and clients still read it at the top.
    redacts: Option<JsonValue>,
    /// Sync lists events under their room, without `room_id`.
    with_room_id: bool,
}

impl ClientEvent {
    /// The event as served at `now` (milliseconds), which sets its `age`.
    pub(crate) fn new(stored: StoredPdu, now: u64) -> Self {
        let fields = stored.json.client();
        let mut unsigned: Map<String, JsonValue> =
            fields.unsigned.as_ref().and_then(|u| serde_json::from_str(u.get()).ok()).unwrap_or_default();
        // Synapse also names the redaction in `unsigned.redacted_by`, and
        // clients and SyTest read it there.
        if let Some(by) = unsigned.get("redacted_because").and_then(|b| b.get("event_id")).cloned() {
            unsigned.insert("redacted_by".into(), by);
        }
        let sent_at = fields.origin_server_ts.as_ref().and_then(JsonValue::as_u64).unwrap_or(0);
        unsigned.insert("age".into(), now.saturating_sub(sent_at).into());
        let redacts = match (&fields.redacts, fields.kind.as_deref()) {
            (Some(redacts), _) => Some(redacts.clone()),
            (None, Some("m.room.redaction")) => {
                fields.content_as::<Redaction>().and_then(|c| c.redacts).map(JsonValue::String)
            }
            _ => None,
        };
        Self { stored, unsigned, redacts, with_room_id: true }
    }

    pub fn stored(&self) -> &StoredPdu {
        &self.stored
    }

    pub fn event_id(&self) -> &EventId {
        &self.stored.event_id
    }

    pub fn kind(&self) -> Option<&str> {
        self.stored.kind()
    }

    pub fn sender(&self) -> Option<&str> {
        self.stored.sender()
    }

    pub fn state_key(&self) -> Option<&str> {
        self.stored.state_key()
    }

    pub fn origin_server_ts(&self) -> Option<u64> {
        self.stored.json.client().origin_server_ts.as_ref().and_then(JsonValue::as_u64)
    }

    pub fn unsigned(&self, key: &str) -> Option<&JsonValue> {
        self.unsigned.get(key)
    }

    pub fn set_unsigned(&mut self, key: &str, value: JsonValue) {
        self.unsigned.insert(key.to_owned(), value);
    }

    /// Without the replaced state's content and sender (`prev_content`,
    /// `prev_sender`): clients read them to describe a change in the
    /// timeline, not in the state a room starts from, and for member events
    /// they were a sixth of an initial sync. Synapse leaves them out there
    /// too; `replaces_state` stays.
    pub fn without_replaced_content(mut self) -> Self {
        self.unsigned.remove("prev_content");
        self.unsigned.remove("prev_sender");
        self
    }

    /// Without `room_id`, as sync lists events under their room.
    pub fn without_room_id(mut self) -> Self {
        self.with_room_id = false;
        self
    }

    /// As a JSON value, for answers built as JSON trees.
    pub fn into_json(self) -> JsonValue {
        // Stored events are JSON objects, which always serialise.
        serde_json::to_value(&self).unwrap_or_default()
    }
}

#[derive(serde::Deserialize)]
struct Redaction {
    redacts: Option<String>,
}

impl Serialize for ClientEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = self.stored.json.client();
        let mut map = serializer.serialize_map(None)?;
        if let Some(kind) = &fields.kind {
            map.serialize_entry("type", kind)?;
        }
        if let Some(content) = &fields.content {
            map.serialize_entry("content", content)?;
        }
        if let Some(sender) = &fields.sender {
            map.serialize_entry("sender", sender)?;
        }
        if let Some(ts) = &fields.origin_server_ts {
            map.serialize_entry("origin_server_ts", ts)?;
        }
        if let Some(state_key) = &fields.state_key {
            map.serialize_entry("state_key", state_key)?;
        }
        map.serialize_entry("unsigned", &self.unsigned)?;
        if let Some(redacts) = &self.redacts {
            map.serialize_entry("redacts", redacts)?;
        }
        map.serialize_entry("event_id", self.stored.event_id.as_str())?;
        if self.with_room_id {
            map.serialize_entry("room_id", self.stored.room_id.as_str())?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(pdu: JsonValue) -> StoredPdu {
        serde_json::from_value(json!({
            "event_id": "$e", "room_id": "!r:x", "json": pdu,
            "stream": 1, "state_before": 0, "state_after": 0,
        }))
        .unwrap()
    }

    #[test]
    fn writes_the_client_fields_and_age() {
        let pdu = json!({
            "type": "m.room.message", "sender": "@a:x", "content": {"body": "hi", "n": [1, 2]},
            "origin_server_ts": 1000, "hashes": {"sha256": "h"}, "depth": 3, "prev_events": [],
        });
        let event = ClientEvent::new(stored(pdu), 1500).into_json();
        assert_eq!(
            event,
            json!({
                "type": "m.room.message", "sender": "@a:x", "content": {"body": "hi", "n": [1, 2]},
                "origin_server_ts": 1000, "unsigned": {"age": 500}, "event_id": "$e", "room_id": "!r:x",
            })
        );
    }

    #[test]
    fn keeps_stored_unsigned_and_names_the_redaction() {
        let pdu = json!({
            "type": "m.room.member", "state_key": "@a:x", "sender": "@a:x", "content": {},
            "origin_server_ts": 1, "unsigned": {"redacted_because": {"event_id": "$r"}, "prev_content": {}},
        });
        let mut event = ClientEvent::new(stored(pdu), 1).without_room_id();
        event.set_unsigned("transaction_id", "t".into());
        let json = event.into_json();
        assert_eq!(json["unsigned"]["redacted_by"], "$r");
        assert_eq!(json["unsigned"]["prev_content"], json!({}));
        assert_eq!(json["unsigned"]["transaction_id"], "t");
        assert_eq!(json["state_key"], "@a:x");
        assert!(json.get("room_id").is_none());
    }

    #[test]
    fn a_version_11_redaction_names_its_target_at_the_top() {
        let pdu = json!({
            "type": "m.room.redaction", "sender": "@a:x", "content": {"redacts": "$t"}, "origin_server_ts": 1,
        });
        assert_eq!(ClientEvent::new(stored(pdu), 1).into_json()["redacts"], "$t");
        let message = json!({"type": "m.room.message", "sender": "@a:x", "content": {"redacts": "$t"}});
        assert!(ClientEvent::new(stored(message), 1).into_json().get("redacts").is_none());
    }
}
