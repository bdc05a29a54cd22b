//! The shape of a `/sync` answer.
//!
//! Rooms' events are [`ClientEvent`]s, written straight from their stored
//! text when the answer is serialised; the rest, small and varied, is JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value as JsonValue;

use crate::rooms::ClientEvent;

#[derive(Serialize)]
pub struct SyncResponse {
    pub(super) next_batch: String,
    pub(super) rooms: SyncRooms,
    pub(super) account_data: Events<JsonValue>,
    pub(super) presence: Events<JsonValue>,
    pub(super) to_device: Events<JsonValue>,
    pub(super) device_lists: DeviceLists,
    pub(super) device_one_time_keys_count: JsonValue,
    pub(super) device_unused_fallback_key_types: JsonValue,
}

impl SyncResponse {
    /// Nothing new for the client: a long-polling sync waits on.
    pub(super) fn is_empty(&self) -> bool {
        let rooms = &self.rooms;
        rooms.join.is_empty()
            && rooms.invite.is_empty()
            && rooms.leave.is_empty()
            && rooms.knock.is_empty()
            && rooms.peek.is_empty()
            && self.account_data.events.is_empty()
            && self.presence.events.is_empty()
            && self.to_device.events.is_empty()
            && self.device_lists.changed.is_empty()
            && self.device_lists.left.is_empty()
    }
}

/// `rooms`, by membership (and MSC2753 peeks), each by room ID.
#[derive(Default, Serialize)]
pub(super) struct SyncRooms {
    pub join: BTreeMap<String, RoomEntry>,
    pub invite: BTreeMap<String, RoomEntry>,
    pub leave: BTreeMap<String, RoomEntry>,
    pub knock: BTreeMap<String, RoomEntry>,
    pub peek: BTreeMap<String, RoomEntry>,
}

#[derive(Serialize)]
pub(super) struct DeviceLists {
    pub changed: Vec<String>,
    pub left: Vec<String>,
}

/// `{"events": [...]}`.
#[derive(Serialize)]
pub(super) struct Events<T> {
    pub events: Vec<T>,
}

impl<T> From<Vec<T>> for Events<T> {
    fn from(events: Vec<T>) -> Self {
        Self { events }
    }
}

/// A room's entry: a joined (or left, or peeked) room's timeline and
/// state, or the stripped state of an invite or knock.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum RoomEntry {
    Room(Box<RoomUpdates>),
    Json(JsonValue),
}

impl From<RoomUpdates> for RoomEntry {
    fn from(room: RoomUpdates) -> Self {
        Self::Room(Box::new(room))
    }
}

#[derive(Serialize)]
pub(super) struct RoomUpdates {
    pub timeline: Timeline,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Events<SyncEvent>>,
    /// MSC4222: the state at the timeline's end, instead of `state`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_after: Option<Events<SyncEvent>>,
    pub account_data: Events<JsonValue>,
    pub ephemeral: Events<JsonValue>,
    pub unread_notifications: JsonValue,
    /// Only for a filter that asks for counts by thread.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread_thread_notifications: Option<JsonValue>,
    pub summary: JsonValue,
}

#[derive(Serialize)]
pub(super) struct Timeline {
    pub events: Vec<SyncEvent>,
    pub limited: bool,
    pub prev_batch: String,
}

/// An event in the filter's `event_format`: as clients see it, or as the
/// PDU servers exchange.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum SyncEvent {
    Client(ClientEvent),
    Federation(JsonValue),
}
