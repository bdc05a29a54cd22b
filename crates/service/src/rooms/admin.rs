//! What server admins read of rooms (the admin API): every room with the
//! figures admin tools list, the current state without membership checks,
//! and the rooms admins blocked.

use std::collections::HashSet;

use estuary_core::{Error, Result};
use estuary_storage::codec::Json;
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId,
    events::{StateEventType, room::power_levels::UserPowerLevel},
};
use serde_json::{Value as JsonValue, json};

use super::Rooms;
use crate::storage_error::StorageResultExt;

/// At most this many rooms are read by one admin listing.
const ROOMS_LISTED: usize = 1_000_000;

/// `global` key of the blocked rooms: room ID → the admin who blocked it.
const BLOCKED_ROOMS_KEY: &str = "blocked_rooms";

impl Rooms {
    /// Every room this server knows.
    pub fn all_room_ids(&self) -> Result<Vec<OwnedRoomId>> {
        let rooms = self.roomid_room.scan_raw_prefix(&[], ROOMS_LISTED).db()?;
        Ok(rooms.into_iter().filter_map(|(id, _)| RoomId::parse(id).ok()).collect())
    }

    /// A room as Synapse's room admin API lists it; `detailed` adds the
    /// fields of a single room (topic, avatar, tombstone).
    pub fn admin_view(&self, room_id: &RoomId, detailed: bool) -> Result<JsonValue> {
        let room = self.require_room(room_id)?;
        let state = self.current_state(&room)?;
        let content = |kind: StateEventType| -> Result<JsonValue> {
            Ok(self.state_pdu(&state, &kind, "")?.map(|p| p.content_value()).unwrap_or_default())
        };
        let create = self.state_pdu(&state, &StateEventType::RoomCreate, "")?;
        let joined = self.members_with_membership(room_id, "join")?;
        let server_name = &self.config.server_name;
        let text = |value: &JsonValue| value.as_str().map(str::to_owned);
        let mut view = json!({
            "room_id": room_id,
            "name": text(&content(StateEventType::RoomName)?["name"]),
            "canonical_alias": text(&content(StateEventType::RoomCanonicalAlias)?["alias"]),
            "joined_members": joined.len(),
            "joined_local_members": joined.iter().filter(|u| u.server_name() == server_name).count(),
            "version": room.room_version.as_str(),
            "creator": create.as_ref().map(|c| c.sender.to_string()),
            "encryption": text(&content(StateEventType::RoomEncryption)?["algorithm"]),
            "federatable": create.as_ref().is_none_or(|c| c.content_value()["m.federate"] != false),
            "public": self.is_public(room_id)?,
            "join_rules": text(&content(StateEventType::RoomJoinRules)?["join_rule"]),
            "guest_access": text(&content(StateEventType::RoomGuestAccess)?["guest_access"]),
            "history_visibility": text(&content(StateEventType::RoomHistoryVisibility)?["history_visibility"]),
            "state_events": state.len(),
            "room_type": create.as_ref().and_then(|c| text(&c.content_value()["type"])),
        });
        if detailed {
            let tombstone = content(StateEventType::RoomTombstone)?;
            view["avatar"] = json!(text(&content(StateEventType::RoomAvatar)?["url"]));
            view["topic"] = json!(text(&content(StateEventType::RoomTopic)?["topic"]));
            view["tombstoned"] = json!(tombstone.get("replacement_room").is_some());
            view["replacement_room"] = json!(text(&tombstone["replacement_room"]));
            let local: Vec<_> = joined.iter().filter(|u| u.server_name() == server_name).collect();
            view["forgotten"] = json!(
                !local.is_empty() && local.iter().all(|u| self.is_forgotten(u, room_id).unwrap_or(false))
            );
        }
        Ok(view)
    }

    /// The room's current state as client events, for admins (no
    /// membership or visibility check).
    pub fn admin_state(&self, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        let room = self.require_room(room_id)?;
        let state = self.current_state(&room)?;
        self.stored_client_events(self.state_pdus(&state)?)
    }

    /// Make `target` as powerful as the room's most powerful local member,
    /// who sends the change (and invites `target` to a room it cannot join
    /// by itself). The room's creators in room version 12 are above every
    /// level: then `target` gets the highest level any user has, at least 100.
    pub async fn make_room_admin(&self, room_id: &RoomId, target: &ruma::UserId) -> Result<()> {
        let (actor, level) = self
            .most_powerful_local_member(room_id)?
            .ok_or_else(|| Error::invalid_param("No local user in the room can change its power levels"))?;
        let room = self.require_room(room_id)?;
        let state = self.current_state(&room)?;
        let mut content = self
            .state_pdu(&state, &StateEventType::RoomPowerLevels, "")?
            .map(|p| p.content_value())
            .unwrap_or_else(|| json!({}));
        let highest_given =
            content["users"].as_object().into_iter().flatten().filter_map(|(_, l)| l.as_i64()).max();
        let target_level = match level {
            UserPowerLevel::Int(level) => i64::from(level),
            _ => highest_given.unwrap_or(100).max(100),
        };
        if !content["users"].is_object() {
            content["users"] = json!({});
        }
        content["users"][target.as_str()] = json!(target_level);
        let template = estuary_events::PduTemplate::state("m.room.power_levels", "", content);
        self.send(room_id, &actor, template, None).await?;
        let membership = self.membership(target, room_id)?;
        let join_rule =
            self.state_pdu(&state, &StateEventType::RoomJoinRules, "")?.map(|p| p.content_value());
        let public = join_rule.is_some_and(|c| c["join_rule"] == "public");
        if !public && !matches!(membership.as_deref(), Some("join" | "invite")) {
            self.invite(room_id, &actor, target, None, false).await?;
        }
        Ok(())
    }

    /// The `mxc://` URIs the room's events name (unencrypted ones: this
    /// server cannot read the others), this server's first.
    pub fn media_in_room(&self, room_id: &RoomId) -> Result<(Vec<String>, Vec<String>)> {
        fn collect(value: &JsonValue, found: &mut Vec<String>) {
            match value {
                JsonValue::String(text) if text.starts_with("mxc://") => found.push(text.clone()),
                JsonValue::Array(items) => items.iter().for_each(|item| collect(item, found)),
                JsonValue::Object(fields) => fields.values().for_each(|field| collect(field, found)),
                _ => {}
            }
        }
        self.require_room(room_id)?;
        let prefix = estuary_storage::Key::encode(&(room_id.to_string(),));
        let mut found = Vec::new();
        for (_, event_id) in self.roomidstream_eventid.scan_raw_prefix(&prefix, ROOMS_LISTED).db()? {
            if let Some(stored) = self.eventid_pdu.get(&event_id).db()?.map(|Json(s)| s) {
                collect(&serde_json::to_value(stored.json.get("content")).unwrap_or_default(), &mut found);
            }
        }
        found.sort();
        found.dedup();
        let local = format!("mxc://{}/", self.config.server_name);
        Ok(found.into_iter().partition(|uri| uri.starts_with(&local)))
    }

    /// The room's forward extremities, as Synapse's admin API lists them.
    pub fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        let room = self.require_room(room_id)?;
        let mut results = Vec::new();
        for event_id in &room.extremities {
            let Some(stored) = self.stored(event_id)? else { continue };
            results.push(json!({
                "event_id": event_id,
                "state_group": stored.state_after,
                "depth": stored.json.get("depth").and_then(|d| d.as_integer()).map(i64::from),
                "received_ts": stored.json.get("origin_server_ts").and_then(|t| t.as_integer()).map(i64::from),
            }));
        }
        Ok(results)
    }

    fn blocked_rooms(&self) -> Result<std::collections::HashMap<OwnedRoomId, OwnedUserId>> {
        let global: estuary_storage::Table<
            String,
            Json<std::collections::HashMap<OwnedRoomId, OwnedUserId>>,
        > = self.db.table("global").db()?;
        Ok(global.get(&BLOCKED_ROOMS_KEY.to_owned()).db()?.map(|Json(b)| b).unwrap_or_default())
    }

    /// Who blocked the room, if it is blocked: local users cannot join it.
    pub fn blocked_by(&self, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
        Ok(self.blocked_rooms()?.remove(room_id))
    }

    /// Block (or unblock) a room, known here or not.
    pub fn set_blocked(&self, room_id: &RoomId, by: Option<&ruma::UserId>) -> Result<()> {
        let _guard = self.admin_lock.lock().map_err(|_| Error::internal("admin lock poisoned"))?;
        let mut blocked = self.blocked_rooms()?;
        match by {
            Some(admin) => blocked.insert(room_id.to_owned(), admin.to_owned()),
            None => blocked.remove(room_id),
        };
        let global: estuary_storage::Table<
            String,
            Json<std::collections::HashMap<OwnedRoomId, OwnedUserId>>,
        > = self.db.table("global").db()?;
        global.put(&BLOCKED_ROOMS_KEY.to_owned(), &Json(blocked)).db()
    }

    /// The local member with the highest power level in the room (who acts
    /// for admins: `make_room_admin`, admin joins to invite-only rooms).
    pub fn most_powerful_local_member(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<(OwnedUserId, UserPowerLevel)>> {
        let room = self.require_room(room_id)?;
        let state = self.current_state(&room)?;
        let levels = self.power_levels(&state, &room.room_version)?;
        let local: HashSet<_> = self
            .members_with_membership(room_id, "join")?
            .into_iter()
            .filter(|u| u.server_name() == self.config.server_name)
            .collect();
        Ok(local
            .into_iter()
            .map(|user| (levels.for_user(&user), user))
            .max()
            .map(|(level, user)| (user, level)))
    }
}
