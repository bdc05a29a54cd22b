//! Sliding sync extensions, each only when the request enables it:
//! `to_device`, `e2ee`, `account_data`, `receipts` and `typing`.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use estuary_core::Result;
use ruma::{OwnedRoomId, RoomId, api::client::sync::sync_events::v5::request::ExtensionRoomConfig};
use serde_json::{Map, Value as JsonValue, json};

use super::{Sync, object, sliding::Answer};

/// The rooms an answer covers: each list's rooms (within its ranges) and
/// the room subscriptions.
pub(super) struct Scope {
    pub list_rooms: BTreeMap<String, Vec<OwnedRoomId>>,
    pub subscribed: BTreeSet<OwnedRoomId>,
}

impl Scope {
    /// The rooms an extension asks for: of the lists it names (all without
    /// `lists`) and the subscriptions it names (all without `rooms`, or `*`).
    fn rooms(
        &self,
        lists: Option<&Vec<String>>,
        rooms: Option<&Vec<ExtensionRoomConfig>>,
    ) -> BTreeSet<OwnedRoomId> {
        let mut out = BTreeSet::new();
        for (name, list) in &self.list_rooms {
            if lists.is_none_or(|names| names.iter().any(|n| n == name || n == "*")) {
                out.extend(list.iter().cloned());
            }
        }
        match rooms {
            None => out.extend(self.subscribed.iter().cloned()),
            Some(configs) => {
                for config in configs {
                    match config {
                        ExtensionRoomConfig::Room(room) if self.subscribed.contains(room) => {
                            out.insert(room.clone());
                        }
                        ExtensionRoomConfig::AllSubscribed => out.extend(self.subscribed.iter().cloned()),
                        _ => {}
                    }
                }
            }
        }
        out
    }
}

impl Sync {
    /// The `extensions` of an answer, and whether they carry anything new.
    pub(super) fn sliding_extensions(
        &self,
        a: &Answer<'_>,
        rooms: &Map<String, JsonValue>,
        scope: &Scope,
    ) -> Result<(JsonValue, bool)> {
        let ext = &a.request.extensions;
        let mut out = Map::new();
        let mut updates = false;
        if ext.to_device.enabled == Some(true) {
            let since = ext.to_device.since.as_deref().and_then(|s| s.parse::<u64>().ok());
            let limit = ext.to_device.limit.map_or(100, |l| (u64::from(l) as usize).clamp(1, 1000));
            let (events, next_batch) = self.to_device.take_batch(a.w.user, a.device, since, a.w.to, limit)?;
            updates |= !events.is_empty();
            out.insert(
                "to_device".into(),
                object([("next_batch", next_batch.to_string().into()), ("events", events.into())]),
            );
        }
        if ext.e2ee.enabled == Some(true) {
            let (changed, left) = match a.w.since {
                Some(since) => self.key_changes(a.w.user, since, a.w.to)?,
                None => (Vec::new(), Vec::new()),
            };
            updates |= !changed.is_empty() || !left.is_empty();
            out.insert(
                "e2ee".into(),
                json!({
                    "device_lists": {"changed": changed, "left": left},
                    "device_one_time_keys_count": self.e2ee.one_time_key_counts(a.w.user, a.device)?,
                    "device_unused_fallback_key_types": self.e2ee.unused_fallback_key_types(a.w.user, a.device)?,
                }),
            );
        }
        if ext.account_data.enabled == Some(true) {
            let in_scope = scope.rooms(ext.account_data.lists.as_ref(), ext.account_data.rooms.as_ref());
            let (global, per_room) = self.account_data_extension(a, rooms, &in_scope)?;
            updates |= !global.is_empty() || !per_room.is_empty();
            out.insert(
                "account_data".into(),
                object([("global", global.into()), ("rooms", per_room.into())]),
            );
        }
        if ext.receipts.enabled == Some(true) || ext.typing.enabled == Some(true) {
            let changed = &a.changed_ephemeral;
            if ext.receipts.enabled == Some(true) {
                let in_scope = scope.rooms(ext.receipts.lists.as_ref(), ext.receipts.rooms.as_ref());
                let receipts = self.receipts_extension(a, rooms, &in_scope, changed)?;
                updates |= !receipts.is_empty();
                out.insert("receipts".into(), object([("rooms", receipts.into())]));
            }
            if ext.typing.enabled == Some(true) {
                let in_scope = scope.rooms(ext.typing.lists.as_ref(), ext.typing.rooms.as_ref());
                let mut typing = Map::new();
                for room_id in in_scope {
                    let since = if is_initial(rooms, &room_id) { None } else { a.w.since };
                    if since.is_some() && !changed.contains(&room_id) {
                        continue;
                    }
                    if let Some(event) = self.ephemeral.typing_event(&room_id, since, a.w.to) {
                        typing.insert(room_id.to_string(), event);
                    }
                }
                updates |= !typing.is_empty();
                out.insert("typing".into(), object([("rooms", typing.into())]));
            }
        }
        Ok((JsonValue::Object(out), updates))
    }

    /// Global account data changed since the connection's last answer (all
    /// of it at first), and each room's: all of it for a room new to the
    /// connection, what changed for the others.
    fn account_data_extension(
        &self,
        a: &Answer<'_>,
        rooms: &Map<String, JsonValue>,
        in_scope: &BTreeSet<OwnedRoomId>,
    ) -> Result<(Vec<JsonValue>, Map<String, JsonValue>)> {
        let global = self.global_account_data(&a.w)?;
        let event = |kind: &str, content: &serde_json::value::RawValue| json!({"type": kind, "content": serde_json::from_str::<JsonValue>(content.get()).unwrap_or_default()});
        let mut per_room = Map::new();
        for room_id in in_scope {
            let events: Vec<JsonValue> = if a.w.since.is_none() || is_initial(rooms, room_id) {
                let all = self.account_data.of_user(a.w.user, Some(room_id))?;
                all.iter().map(|(_, kind, content)| event(kind, content)).collect()
            } else {
                let changes = self.account_data_changes(&a.w)?;
                let here = changes.iter().filter(|(room, ..)| room == room_id.as_str());
                here.map(|(_, kind, content)| event(kind, content)).collect()
            };
            if !events.is_empty() {
                per_room.insert(room_id.to_string(), events.into());
            }
        }
        Ok((global, per_room))
    }

    /// Each room's `m.receipt` event: for a room new to the connection, the
    /// receipts on its timeline's events and the user's own; after that,
    /// the receipts that changed.
    fn receipts_extension(
        &self,
        a: &Answer<'_>,
        rooms: &Map<String, JsonValue>,
        in_scope: &BTreeSet<OwnedRoomId>,
        changed: &HashSet<OwnedRoomId>,
    ) -> Result<Map<String, JsonValue>> {
        let mut out = Map::new();
        for room_id in in_scope {
            let initial = a.w.since.is_none() || is_initial(rooms, room_id);
            let event = if initial {
                let event = self.ephemeral.receipt_event(a.w.user, room_id, None, a.w.to)?;
                event.and_then(|e| relevant_receipts(e, rooms.get(room_id.as_str()), a.w.user.as_str()))
            } else if changed.contains(room_id) {
                self.ephemeral.receipt_event(a.w.user, room_id, a.w.since, a.w.to)?
            } else {
                None
            };
            if let Some(event) = event {
                out.insert(room_id.to_string(), event);
            }
        }
        Ok(out)
    }
}

fn is_initial(rooms: &Map<String, JsonValue>, room_id: &RoomId) -> bool {
    rooms.get(room_id.as_str()).is_some_and(|room| room["initial"] == true)
}

/// Of a room's receipts, those on events of its timeline in this answer
/// and the user's own; `None` when none are left.
fn relevant_receipts(mut event: JsonValue, room: Option<&JsonValue>, user: &str) -> Option<JsonValue> {
    let in_timeline: HashSet<&str> = room
        .and_then(|r| r["timeline"].as_array())
        .map(|events| events.iter().filter_map(|e| e["event_id"].as_str()).collect())
        .unwrap_or_default();
    let content = event["content"].as_object_mut()?;
    content.retain(|event_id, by_type| {
        if in_timeline.contains(event_id.as_str()) {
            return true;
        }
        let Some(by_type) = by_type.as_object_mut() else { return false };
        by_type.retain(|_, by_user| {
            by_user.as_object_mut().map(|users| {
                users.retain(|u, _| u == user);
                !users.is_empty()
            }) == Some(true)
        });
        !by_type.is_empty()
    });
    (!content.is_empty()).then_some(event)
}
