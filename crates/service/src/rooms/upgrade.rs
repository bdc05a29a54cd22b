//! Room upgrades and space hierarchies.

use estuary_core::{Error, Result};
use estuary_events::PduTemplate;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId, events::StateEventType};
use serde_json::{Map, Value as JsonValue, json};

use super::{CreateRoom, Rooms, append::unsupported_version, create::supported_room_version};

/// State the spec recommends carrying into the replacement room (power levels separately).
const TRANSFERABLE: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

impl Rooms {
    /// Upgrade `old` to `new_version`: new room, transferred state, moved
    /// aliases, a tombstone, and the old room locked down.
    pub async fn upgrade_room(
        &self,
        user: &UserId,
        old: &RoomId,
        new_version: RoomVersionId,
        additional_creators: Vec<OwnedUserId>,
    ) -> Result<OwnedRoomId> {
        if !supported_room_version(&new_version) {
            return Err(unsupported_version());
        }
        let room = self.require_room(old)?;
        let state = self.state.load(room.state)?;
        if !self.is_joined(user, old)?
            || !self
                .power_levels(&state, &room.room_version)?
                .user_can_send_state(user, StateEventType::RoomTombstone)
        {
            return Err(Error::forbidden("You may not upgrade this room"));
        }
        let content = |kind: &str| -> Result<Option<JsonValue>> {
            Ok(self.state_pdu(&state, &StateEventType::from(kind), "")?.map(|p| p.content_value()))
        };
        let old_create = content("m.room.create")?.unwrap_or_default();
        let mut creation = Map::new();
        let mut predecessor = json!({"room_id": old});
        // Before v12 the new room's ID is picked first, so the tombstone can
        // name it and the new room's `predecessor` can name the tombstone,
        // the old room's last event. A v12 room's ID is its create event's
        // hash: the tombstone follows the creation.
        let chosen_id = (new_version != RoomVersionId::V12).then(|| RoomId::new_v1(&self.config.server_name));
        let tombstone = |replacement: &RoomId| {
            let content = json!({"body": "This room has been replaced", "replacement_room": replacement});
            PduTemplate::state("m.room.tombstone", "", content)
        };
        if let Some(new_room) = &chosen_id {
            let sent = self.send(old, user, tombstone(new_room), None).await?;
            predecessor["event_id"] = sent.event_id.to_string().into();
        }
        creation.insert("predecessor".into(), predecessor);
        // The room's kind and whether it federates carry over.
        for key in ["type", "m.federate"] {
            if let Some(value) = old_create.get(key) {
                creation.insert(key.into(), value.clone());
            }
        }
        if !additional_creators.is_empty() {
            creation.insert("additional_creators".into(), json!(additional_creators));
        }
        let mut initial_state = Vec::new();
        for kind in TRANSFERABLE {
            if let Some(content) = content(kind)? {
                initial_state.push(PduTemplate::state(*kind, "", content));
            }
        }
        // Bans stay in force in the new room.
        for banned in self.members_with_membership(old, "ban")? {
            if let Some(ban) = self.state_pdu(&state, &StateEventType::RoomMember, banned.as_str())? {
                let mut content = json!({"membership": "ban"});
                if let Some(reason) = ban.content_value().get("reason") {
                    content["reason"] = reason.clone();
                }
                initial_state.push(PduTemplate::state("m.room.member", banned.as_str(), content));
            }
        }
        let old_power = content("m.room.power_levels")?.unwrap_or_default();
        let request = CreateRoom {
            initial_state,
            creation_content: Some(creation),
            power_level_content_override: old_power.as_object().cloned(),
            room_version: Some(new_version),
            room_id: chosen_id.clone(),
            ..CreateRoom::default()
        };
        let new_room = self.create_room(user, request).await?;

        self.move_directory_entries(old, &new_room)?;
        if let Some(mut canonical) = content("m.room.canonical_alias")? {
            self.send(
                &new_room,
                user,
                PduTemplate::state("m.room.canonical_alias", "", canonical.clone()),
                None,
            )
            .await?;
            canonical = json!({});
            self.send(old, user, PduTemplate::state("m.room.canonical_alias", "", canonical), None).await?;
        }
        if chosen_id.is_none() {
            self.send(old, user, tombstone(&new_room), None).await?;
        }
        self.lock_down(old, user, old_power).await?;
        Ok(new_room)
    }

    /// This server's aliases of `old` now name `new`, and `new` takes
    /// `old`'s place in the public room directory.
    fn move_directory_entries(&self, old: &RoomId, new: &RoomId) -> Result<()> {
        for alias in self.room_aliases(old)? {
            self.move_alias(&alias, new)?;
        }
        if self.is_public(old)? {
            self.set_public(old, false)?;
            self.set_public(new, true)?;
        }
        Ok(())
    }

    /// After this server's first join to `room_id` through another server:
    /// when the room is an upgrade, this server's aliases and directory
    /// entry of its predecessor move to it, as the upgrading server did
    /// with its own. Only when the old room, as this server knows it, names
    /// this one in its tombstone: any room can claim a predecessor.
    pub fn follow_upgrade(&self, room_id: &RoomId) -> Result<()> {
        let Some(old) = self.predecessor(room_id)? else { return Ok(()) };
        let Some(old_room) = self.room(&old)? else { return Ok(()) };
        let state = self.state.load(old_room.state)?;
        let tombstone = self.state_pdu(&state, &StateEventType::RoomTombstone, "")?;
        let replaced_by = tombstone.map(|t| t.content_value()["replacement_room"].clone());
        if replaced_by.as_ref().and_then(|r| r.as_str()) != Some(room_id.as_str()) {
            return Ok(());
        }
        self.move_directory_entries(&old, room_id)
    }

    /// The room this one replaced (its create event's `predecessor`).
    pub fn predecessor(&self, room_id: &RoomId) -> Result<Option<OwnedRoomId>> {
        let Some(room) = self.room(room_id)? else { return Ok(None) };
        let state = self.state.load(room.state)?;
        let create = self.state_pdu(&state, &StateEventType::RoomCreate, "")?;
        let predecessor = create.map(|c| c.content_value()["predecessor"]["room_id"].clone());
        Ok(predecessor.and_then(|p| p.as_str().and_then(|p| RoomId::parse(p).ok())))
    }

    /// Raise `events_default` and `invite` so the old room goes quiet.
    async fn lock_down(&self, room: &RoomId, user: &UserId, mut power: JsonValue) -> Result<()> {
        let users_default = power["users_default"].as_i64().unwrap_or(0);
        let level = (users_default + 1).max(50);
        power["events_default"] = level.into();
        power["invite"] = level.into();
        if let Err(err) =
            self.send(room, user, PduTemplate::state("m.room.power_levels", "", power), None).await
        {
            tracing::debug!(%room, "could not restrict the old room's power levels: {err}");
        }
        Ok(())
    }
}
