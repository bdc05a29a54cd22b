//! Spaces as this server knows them: a room's `/hierarchy` chunk (its
//! directory summary and `m.space.child` events), and who may see it. The
//! walk through a space, across servers, is `federation/space.rs`.

use estuary_core::Result;
use ruma::{RoomId, ServerName, UserId};
use serde_json::{Value as JsonValue, json};

use super::Rooms;

impl Rooms {
    /// A room's hierarchy chunk: its summary and its valid `m.space.child`
    /// events (stripped); `None` for a room unknown here.
    pub fn space_chunk(&self, room_id: &RoomId, suggested_only: bool) -> Result<Option<JsonValue>> {
        if self.room(room_id)?.is_none() {
            return Ok(None);
        }
        let mut chunk = self.room_summary(room_id)?;
        chunk["children_state"] = JsonValue::Array(self.space_children(room_id, suggested_only)?);
        Ok(Some(chunk))
    }

    /// Joined, world-readable or publicly joinable rooms can be previewed.
    pub fn can_preview(&self, viewer: &UserId, room_id: &RoomId) -> Result<bool> {
        Ok(self.is_joined(viewer, room_id)? || self.is_open(room_id)?)
    }

    /// What another server may see of a room's hierarchy: a room that is
    /// world-readable or public, or one its users are in.
    pub fn server_can_preview(&self, server: &ServerName, room_id: &RoomId) -> Result<bool> {
        Ok(self.is_open(room_id)?
            || self.members_with_membership(room_id, "join")?.iter().any(|m| m.server_name() == server))
    }

    fn is_open(&self, room_id: &RoomId) -> Result<bool> {
        let summary = self.room_summary(room_id)?;
        Ok(summary["world_readable"] == true || summary["join_rule"] == "public")
    }

    /// The `m.space.child` events of a room (stripped), valid ones only.
    fn space_children(&self, room_id: &RoomId, suggested_only: bool) -> Result<Vec<JsonValue>> {
        let room = self.require_room(room_id)?;
        let state = self.state.load(room.state)?;
        Ok(self
            .state_pdus(&state)?
            .into_iter()
            .filter(|pdu| pdu.kind.to_string() == "m.space.child")
            .filter_map(|pdu| {
                let content = pdu.content_value();
                let valid = content["via"].as_array().is_some_and(|v| !v.is_empty());
                let suggested = content["suggested"] == true;
                (valid && (!suggested_only || suggested)).then(|| {
                    json!({"type": "m.space.child", "state_key": pdu.state_key, "content": content,
                           "sender": pdu.sender, "origin_server_ts": pdu.origin_server_ts})
                })
            })
            .collect())
    }
}
