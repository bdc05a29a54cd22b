//! Room aliases and the public room directory.

use estuary_core::{Error, Result, error::ErrorKind};
use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, UserId, events::StateEventType};
use serde_json::{Value as JsonValue, json};

use super::Rooms;
use crate::storage_error::StorageResultExt;

/// An alias reserved while the request that takes it is written.
pub(super) struct AliasClaim<'a> {
    rooms: &'a Rooms,
    alias: OwnedRoomAliasId,
}

impl Drop for AliasClaim<'_> {
    fn drop(&mut self) {
        self.rooms.aliases_claimed.lock().expect("alias claims").remove(&self.alias);
    }
}

/// One page of the public room directory.
pub struct PublicRoomsPage {
    pub chunk: Vec<JsonValue>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

/// Which room directory: the server's own, an appservice network's
/// (published by the bridge), or all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoomList {
    Main,
    /// "appservice ID|network ID", as the third-party protocols name it.
    Network(String),
    All,
}

impl Rooms {
    pub fn resolve_alias(&self, alias: &RoomAliasId) -> Result<Option<OwnedRoomId>> {
        Ok(self.alias_roomid.get(&alias.to_string()).db()?.and_then(|id| RoomId::parse(id).ok()))
    }

    pub fn put_alias(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
        if alias.server_name() != self.config.server_name {
            return Err(Error::invalid_param("Aliases must be on this server"));
        }
        self.require_room(room_id)?;
        let _claim = self
            .claim_alias(alias)
            .map_err(|_| Error::matrix(409, ErrorKind::Unknown, "Room alias already exists"))?;
        let mut batch = self.db.batch();
        self.stage_alias(alias, room_id, creator, &mut batch);
        batch.commit().db()?;
        self.forget_appservice_interest(room_id);
        Ok(())
    }

    /// Reserve an unused alias until the claim is dropped, so two requests
    /// cannot both take it between the check and the write.
    pub(super) fn claim_alias(&self, alias: &RoomAliasId) -> Result<AliasClaim<'_>> {
        let mut claimed = self.aliases_claimed.lock().expect("alias claims");
        if claimed.contains(alias) || self.resolve_alias(alias)?.is_some() {
            return Err(Error::matrix(400, ErrorKind::RoomInUse, "Room alias already taken"));
        }
        claimed.insert(alias.to_owned());
        Ok(AliasClaim { rooms: self, alias: alias.to_owned() })
    }

    pub(super) fn stage_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
        batch: &mut estuary_storage::Batch,
    ) {
        batch.put(&self.alias_roomid, &alias.to_string(), &room_id.to_string());
        batch.put(&self.roomidalias_creator, &(room_id.to_string(), alias.to_string()), &creator.to_string());
    }

    pub(super) fn stage_public(&self, room_id: &RoomId, batch: &mut estuary_storage::Batch) {
        batch.put(&self.publicroomid, &room_id.to_string(), &String::new());
    }

    /// Delete an alias: its creator, a room moderator (who may change the
    /// canonical alias) or a server admin may.
    pub fn delete_alias(&self, alias: &RoomAliasId, user: &UserId, is_admin: bool) -> Result<()> {
        let room_id = self.resolve_alias(alias)?.ok_or_else(|| Error::not_found("Unknown room alias"))?;
        let key = (room_id.to_string(), alias.to_string());
        let creator = self.roomidalias_creator.get(&key).db()?;
        let allowed = is_admin || creator.as_deref() == Some(user.as_str()) || {
            let room = self.require_room(&room_id)?;
            let state = self.state.load(room.state)?;
            self.is_joined(user, &room_id)?
                && self
                    .power_levels(&state, &room.room_version)?
                    .user_can_send_state(user, StateEventType::RoomCanonicalAlias)
        };
        if !allowed {
            return Err(Error::forbidden("You may not delete this alias"));
        }
        let mut batch = self.db.batch();
        batch.delete(&self.alias_roomid, &alias.to_string());
        batch.delete(&self.roomidalias_creator, &key);
        batch.commit().db()?;
        self.forget_appservice_interest(&room_id);
        Ok(())
    }

    /// Point an existing alias at another room (room upgrades).
    pub(super) fn move_alias(&self, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        let Some(old) = self.resolve_alias(alias)? else { return Ok(()) };
        let old_key = (old.to_string(), alias.to_string());
        let creator = self.roomidalias_creator.get(&old_key).db()?.unwrap_or_default();
        let mut batch = self.db.batch();
        batch.delete(&self.roomidalias_creator, &old_key);
        batch.put(&self.alias_roomid, &alias.to_string(), &room_id.to_string());
        batch.put(&self.roomidalias_creator, &(room_id.to_string(), alias.to_string()), &creator);
        batch.commit().db()?;
        self.forget_appservice_interest(&old);
        self.forget_appservice_interest(room_id);
        Ok(())
    }

    /// After an alias is deleted, remove it from the room's canonical alias
    /// event (best effort: the user may lack the power to change it).
    pub async fn drop_from_canonical_alias(
        &self,
        room_id: &RoomId,
        alias: &RoomAliasId,
        user: &UserId,
    ) -> Result<()> {
        let room = self.require_room(room_id)?;
        let state = self.state.load(room.state)?;
        let Some(pdu) = self.state_pdu(&state, &StateEventType::RoomCanonicalAlias, "")? else {
            return Ok(());
        };
        let mut content = pdu.content_value();
        let mut changed = false;
        if content["alias"] == alias.as_str() {
            content.as_object_mut().map(|c| c.remove("alias"));
            changed = true;
        }
        if let Some(alt) = content["alt_aliases"].as_array_mut() {
            let before = alt.len();
            alt.retain(|a| a != alias.as_str());
            changed |= alt.len() != before;
        }
        if changed {
            let template = estuary_events::PduTemplate::state("m.room.canonical_alias", "", content);
            if let Err(err) = self.send(room_id, user, template, None).await {
                tracing::debug!(%room_id, "canonical alias not updated after alias deletion: {err}");
            }
        }
        Ok(())
    }

    pub fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        Ok(self
            .roomidalias_creator
            .scan_prefix(&(room_id.to_string(),))
            .db()?
            .into_iter()
            .filter_map(|((_, alias), _)| RoomAliasId::parse(alias).ok())
            .collect())
    }

    pub fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()> {
        self.require_room(room_id)?;
        match public {
            true => self.publicroomid.put(&room_id.to_string(), &String::new()).db(),
            false => self.publicroomid.delete(&room_id.to_string()).db(),
        }
    }

    /// Rooms published in the room directory.
    pub fn published_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .publicroomid
            .scan_raw_prefix(&[], usize::MAX)
            .db()?
            .into_iter()
            .filter_map(|(room_id, _)| RoomId::parse(room_id).ok())
            .collect())
    }

    /// Rooms anyone may join or read, for the user directory.
    pub fn open_rooms(&self) -> Result<Vec<OwnedRoomId>> {
        let rows = self.openroomid.scan_raw_prefix(&[], usize::MAX).db()?;
        Ok(rows.into_iter().filter_map(|(room_id, _)| RoomId::parse(room_id).ok()).collect())
    }

    /// Record whether the room is open (join rule `public` or history
    /// `world_readable`) as of `state`, the state after `pdu`, which set one
    /// of the two; in the event's own batch.
    pub(super) fn index_open_room(
        &self,
        staging: &mut super::staging::Staging<'_>,
        pdu: &estuary_events::Pdu,
        state: &super::StateMap,
    ) -> Result<()> {
        let content = |kind: StateEventType| -> Result<JsonValue> {
            let Some(key) = self.short.state_key_short(&kind, "")? else { return Ok(JsonValue::Null) };
            let Some(short) = state.get(&key) else { return Ok(JsonValue::Null) };
            let Some(id) = self.staged_event_id(staging, *short)? else { return Ok(JsonValue::Null) };
            if id == pdu.event_id {
                return Ok(pdu.content_value());
            }
            Ok(self.staged_pdu(staging, &id)?.map(|p| p.content_value()).unwrap_or_default())
        };
        let open = content(StateEventType::RoomJoinRules)?["join_rule"] == "public"
            || content(StateEventType::RoomHistoryVisibility)?["history_visibility"] == "world_readable";
        let room = pdu.room_id.to_string();
        if open {
            staging.batch.put(&self.openroomid, &room, &String::new());
        } else {
            staging.batch.delete(&self.openroomid, &room);
        }
        Ok(())
    }

    /// Databases from before the open-room index get it built once.
    pub fn index_open_rooms_once(&self) -> Result<()> {
        const MARKER: &str = "openroomid_built";
        let global: estuary_storage::Table<String, String> = self.db.table("global").db()?;
        if global.get(&MARKER.to_owned()).db()?.is_some() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for (room_id, _) in self.roomid_room.scan_raw_prefix(&[], usize::MAX).db()? {
            let Ok(room_id) = RoomId::parse(&room_id) else { continue };
            let summary = self.room_summary(&room_id)?;
            if summary["join_rule"] == "public" || summary["world_readable"] == true {
                batch.put(&self.openroomid, &room_id.to_string(), &String::new());
            }
        }
        batch.put(&global, &MARKER.to_owned(), &String::new());
        batch.commit().db()
    }

    pub fn is_public(&self, room_id: &RoomId) -> Result<bool> {
        self.publicroomid.contains(&room_id.to_string()).db()
    }

    /// Whether the room has a name or a canonical alias to show: if so,
    /// clients need no heroes to name it.
    pub fn is_named(&self, room_id: &RoomId) -> Result<bool> {
        let room = self.require_room(room_id)?;
        let state = self.state.load(room.state)?;
        let has = |kind: StateEventType, field: &str| -> Result<bool> {
            let Some(id) = self.state_event_id(&state, &kind, "")? else { return Ok(false) };
            let content = self.stored(&id)?.map(|s| s.json.client().content_value()).unwrap_or_default();
            Ok(content[field].as_str().is_some_and(|v| !v.is_empty()))
        };
        Ok(has(StateEventType::RoomName, "name")? || has(StateEventType::RoomCanonicalAlias, "alias")?)
    }

    /// The directory entry of a room, from its current state.
    pub fn room_summary(&self, room_id: &RoomId) -> Result<JsonValue> {
        let room = self.require_room(room_id)?;
        let state = self.state.load(room.state)?;
        let content = |kind: StateEventType| -> Result<JsonValue> {
            Ok(self.state_pdu(&state, &kind, "")?.map(|p| p.content_value()).unwrap_or_default())
        };
        let mut summary = json!({
            "room_id": room_id,
            "num_joined_members": self.members_with_membership(room_id, "join")?.len(),
            "world_readable": content(StateEventType::RoomHistoryVisibility)?["history_visibility"] == "world_readable",
            "guest_can_join": content(StateEventType::RoomGuestAccess)?["guest_access"] == "can_join",
            "join_rule": content(StateEventType::RoomJoinRules)?["join_rule"].as_str().unwrap_or("invite"),
        });
        let fields = [
            (StateEventType::RoomName, "name", "name"),
            (StateEventType::RoomTopic, "topic", "topic"),
            (StateEventType::RoomCanonicalAlias, "alias", "canonical_alias"),
            (StateEventType::RoomAvatar, "url", "avatar_url"),
            (StateEventType::RoomCreate, "type", "room_type"),
        ];
        for (kind, field, key) in fields {
            if let Some(value) = content(kind)?.get(field).filter(|v| v.is_string()) {
                summary[key] = value.clone();
            }
        }
        Ok(summary)
    }

    /// Publish a room in (or take it out of) the directory of an
    /// appservice's network (`instance`: "appservice ID|network ID").
    pub fn set_network_published(&self, instance: &str, room_id: &RoomId, public: bool) -> Result<()> {
        self.require_room(room_id)?;
        let key = (instance.to_owned(), room_id.to_string());
        if public { self.networkroomid.put(&key, &String::new()) } else { self.networkroomid.delete(&key) }
            .db()
    }

    /// The rooms of a directory list.
    fn listed_rooms(&self, list: &RoomList) -> Result<Vec<String>> {
        let main = || -> Result<Vec<String>> {
            Ok(self
                .publicroomid
                .scan_raw_prefix(&[], usize::MAX)
                .db()?
                .into_iter()
                .map(|(id, _)| id)
                .collect())
        };
        let networks = |prefix: Vec<u8>| -> Result<Vec<String>> {
            Ok(self
                .networkroomid
                .scan_raw_prefix(&prefix, usize::MAX)
                .db()?
                .into_iter()
                .map(|((_, id), _)| id)
                .collect())
        };
        let mut rooms = match list {
            RoomList::Main => main()?,
            RoomList::Network(instance) => networks(estuary_storage::Key::encode(&(instance.clone(),)))?,
            RoomList::All => main()?.into_iter().chain(networks(Vec::new())?).collect(),
        };
        rooms.sort();
        rooms.dedup();
        // A room purged while a listing row remained is not listed.
        rooms.retain(|room| self.roomid_room.contains(room).unwrap_or(false));
        Ok(rooms)
    }

    /// Published rooms, most members first, filtered by a search term.
    pub fn public_rooms(
        &self,
        limit: Option<usize>,
        since: Option<&str>,
        term: Option<&str>,
        list: &RoomList,
    ) -> Result<PublicRoomsPage> {
        let offset = match since {
            Some(token) => token
                .strip_prefix('p')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::invalid_param("Invalid `since` token"))?,
            None => 0,
        };
        let term = term.map(str::to_lowercase).filter(|t| !t.is_empty());
        let mut rooms = Vec::new();
        for room_id in self.listed_rooms(list)? {
            let Ok(room_id) = RoomId::parse(room_id) else { continue };
            let summary = self.room_summary(&room_id)?;
            let matches = term.as_ref().is_none_or(|term| {
                ["name", "topic", "canonical_alias"]
                    .iter()
                    .any(|k| summary[*k].as_str().is_some_and(|v| v.to_lowercase().contains(term)))
            });
            if matches {
                rooms.push(summary);
            }
        }
        rooms.sort_by(|a, b| {
            b["num_joined_members"]
                .as_u64()
                .cmp(&a["num_joined_members"].as_u64())
                .then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        let total = rooms.len();
        let limit = limit.unwrap_or(total.max(1)).max(1);
        let chunk: Vec<JsonValue> = rooms.into_iter().skip(offset).take(limit).collect();
        let next = offset + chunk.len();
        Ok(PublicRoomsPage {
            next_batch: (next < total).then(|| format!("p{next}")),
            prev_batch: (offset > 0).then(|| format!("p{}", offset.saturating_sub(limit))),
            chunk,
            total,
        })
    }
}
