//! The signed JSON of a stored PDU, kept as the text it is stored as and
//! parsed on demand.
//!
//! Reads of many events (sync, `/messages`, context) need only what clients
//! see of each: its type, state key, sender, content, timestamp and unsigned
//! data. Building the whole canonical object for them (hashes, signatures,
//! `auth_events`, `prev_events`) and then copying the client's fields out was
//! most of their time, so the text is parsed twice lazily instead: into the
//! client's fields alone ([`PduJson::client`]), or into the whole object
//! (deref) where federation, redaction or auth need it.

use std::{
    ops::Deref,
    sync::{Arc, OnceLock},
};

use ruma::CanonicalJsonObject;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Value as JsonValue, value::RawValue};

/// The fields of an event that clients see, read from the stored text;
/// everything else in it is skipped unparsed. The content and unsigned data
/// stay JSON text: they are copied into responses as they are, and only
/// the few fields the server itself reads are parsed out of them.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClientFields {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub state_key: Option<String>,
    pub sender: Option<String>,
    pub content: Option<Box<RawValue>>,
    pub origin_server_ts: Option<JsonValue>,
    pub unsigned: Option<Box<RawValue>>,
    pub redacts: Option<JsonValue>,
}

impl ClientFields {
    /// The content read as `T` (a struct of the fields wanted); none when
    /// there is no content or it does not fit.
    pub fn content_as<'a, T: Deserialize<'a>>(&'a self) -> Option<T> {
        serde_json::from_str(self.content.as_ref()?.get()).ok()
    }

    /// The content as a JSON value, for the rare reader of arbitrary fields.
    pub fn content_value(&self) -> JsonValue {
        self.content_as().unwrap_or_default()
    }

    /// A member event's `membership`.
    pub fn membership(&self) -> Option<String> {
        self.content_as::<Membership>()?.membership
    }

    /// The membership a member event replaced, from `unsigned.prev_content`.
    pub fn previous_membership(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Unsigned {
            prev_content: Option<Membership>,
        }
        let unsigned: Unsigned = serde_json::from_str(self.unsigned.as_ref()?.get()).ok()?;
        unsigned.prev_content?.membership
    }
}

#[derive(Deserialize)]
struct Membership {
    membership: Option<String>,
}

/// Clones share the text and the client's fields (the event cache hands
/// out clones); each clone parses the whole object on its own first use.
pub struct PduJson {
    text: Arc<Text>,
    object: OnceLock<CanonicalJsonObject>,
}

struct Text {
    raw: Box<RawValue>,
    client: OnceLock<ClientFields>,
}

impl PduJson {
    /// What clients see of the event (parsed once, on first use).
    pub fn client(&self) -> &ClientFields {
        self.text.client.get_or_init(|| self.parse())
    }

    /// The stored text read as `T`; a corrupt row (never written by this
    /// server) reads as empty, logged, rather than failing every reader.
    fn parse<T: serde::de::DeserializeOwned + Default>(&self) -> T {
        serde_json::from_str(self.text.raw.get()).unwrap_or_else(|e| {
            tracing::error!("a stored event's JSON does not parse: {e}");
            T::default()
        })
    }

    fn from_raw(raw: Box<RawValue>, object: OnceLock<CanonicalJsonObject>) -> Self {
        Self { text: Arc::new(Text { raw, client: OnceLock::new() }), object }
    }

    /// The length of the stored text, in bytes.
    pub fn text_len(&self) -> usize {
        self.text.raw.get().len()
    }
}

impl Clone for PduJson {
    fn clone(&self) -> Self {
        Self { text: self.text.clone(), object: self.object.clone() }
    }
}

impl From<CanonicalJsonObject> for PduJson {
    fn from(object: CanonicalJsonObject) -> Self {
        // Canonical JSON objects always serialise.
        let raw = serde_json::value::to_raw_value(&object).expect("a canonical JSON object serialises");
        Self::from_raw(raw, OnceLock::from(object))
    }
}

/// The whole canonical object, parsed on first use.
impl Deref for PduJson {
    type Target = CanonicalJsonObject;

    fn deref(&self) -> &CanonicalJsonObject {
        self.object.get_or_init(|| self.parse())
    }
}

impl std::fmt::Debug for PduJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text.raw.get())
    }
}

/// Stored as the JSON object it always was: the text written back verbatim.
impl Serialize for PduJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.text.raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PduJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        if !raw.get().starts_with('{') {
            return Err(serde::de::Error::custom("a PDU is a JSON object"));
        }
        Ok(Self::from_raw(raw, OnceLock::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CanonicalJsonObject {
        let json = serde_json::json!({
            "type": "m.room.member", "state_key": "@a:x", "sender": "@a:x",
            "content": {"membership": "join"}, "origin_server_ts": 5,
            "hashes": {"sha256": "abc"}, "signatures": {"x": {"ed25519:1": "sig"}},
            "auth_events": ["$a"], "prev_events": ["$b"], "depth": 3,
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn round_trips_the_stored_text_unchanged() {
        let stored = serde_json::to_string(&PduJson::from(sample())).unwrap();
        let read: PduJson = serde_json::from_str(&stored).unwrap();
        assert_eq!(serde_json::to_string(&read).unwrap(), stored);
        assert_eq!(*read, sample());
    }

    #[test]
    fn client_fields_come_from_the_text() {
        let read: PduJson = serde_json::from_str(&serde_json::to_string(&sample()).unwrap()).unwrap();
        let client = read.client();
        assert_eq!(client.kind.as_deref(), Some("m.room.member"));
        assert_eq!(client.state_key.as_deref(), Some("@a:x"));
        assert_eq!(client.membership().as_deref(), Some("join"));
        assert_eq!(client.content_value(), serde_json::json!({"membership": "join"}));
        assert!(client.redacts.is_none());
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        assert!(serde_json::from_str::<PduJson>("[1]").is_err());
    }
}
