//! `createRoom`: the create event, then the spec's sequence of initial events.

use std::sync::Arc;

use estuary_core::{Error, Result, error::ErrorKind};
use estuary_events::{
    PduTemplate,
    builder::{BuildContext, build_pdu},
};
use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::room::power_levels::RoomPowerLevelsEventContent,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    Rooms,
    append::{build_error, now_ts, unsupported_version},
    state::StateMap,
};

/// The presets of the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

/// What a client asks for in `createRoom`, already parsed.
#[derive(Clone, Debug, Default)]
pub struct CreateRoom {
    pub preset: Option<Preset>,
    pub public: bool,
    pub room_alias_name: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub initial_state: Vec<PduTemplate>,
    pub creation_content: Option<Map<String, JsonValue>>,
    pub power_level_content_override: Option<Map<String, JsonValue>>,
    pub is_direct: bool,
    pub room_version: Option<RoomVersionId>,
}

/// Room versions this server creates and joins.
pub fn supported_room_version(version: &RoomVersionId) -> bool {
    use RoomVersionId::*;
    matches!(version, V1 | V2 | V3 | V4 | V5 | V6 | V7 | V8 | V9 | V10 | V11 | V12)
}

impl Rooms {
    pub async fn create_room(&self, creator: &UserId, request: CreateRoom) -> Result<OwnedRoomId> {
        let version =
            request.room_version.clone().unwrap_or_else(|| self.config.default_room_version.clone());
        if !supported_room_version(&version) {
            return Err(unsupported_version());
        }
        let alias = self.requested_alias(request.room_alias_name.as_deref())?;
        let preset =
            request.preset.unwrap_or(if request.public { Preset::PublicChat } else { Preset::PrivateChat });
        let power_levels = power_levels_content(&version, creator, &request, preset)?;

        let room_id = self.send_create_event(creator, &version, request.creation_content.clone()).await?;
        let send = |template: PduTemplate| self.send(&room_id, creator, template, None);
        send(self.join_template(creator, None)?).await?;
        send(PduTemplate::state("m.room.power_levels", "", power_levels)).await?;
        if let Some(alias) = &alias {
            self.put_alias(alias, &room_id, creator)?;
            send(PduTemplate::state("m.room.canonical_alias", "", json!({"alias": alias}))).await?;
        }
        let join_rule = if preset == Preset::PublicChat { "public" } else { "invite" };
        send(PduTemplate::state("m.room.join_rules", "", json!({"join_rule": join_rule}))).await?;
        send(PduTemplate::state("m.room.history_visibility", "", json!({"history_visibility": "shared"})))
            .await?;
        if preset != Preset::PublicChat {
            send(PduTemplate::state("m.room.guest_access", "", json!({"guest_access": "can_join"}))).await?;
        }
        for template in request.initial_state {
            send(template).await?;
        }
        if let Some(name) = request.name {
            send(PduTemplate::state("m.room.name", "", json!({"name": name}))).await?;
        }
        if let Some(topic) = request.topic {
            send(PduTemplate::state("m.room.topic", "", json!({"topic": topic}))).await?;
        }
        for invitee in &request.invite {
            self.invite(&room_id, creator, invitee, None, request.is_direct).await?;
        }
        if request.public {
            self.set_public(&room_id, true)?;
        }
        tracing::debug!(%room_id, %creator, %version, "created room");
        Ok(room_id)
    }

    fn requested_alias(&self, name: Option<&str>) -> Result<Option<OwnedRoomAliasId>> {
        let Some(name) = name else { return Ok(None) };
        let alias = ruma::RoomAliasId::parse(format!("#{name}:{}", self.config.server_name))
            .map_err(|_| Error::invalid_param("Invalid room alias name"))?;
        if self.resolve_alias(&alias)?.is_some() {
            return Err(Error::matrix(400, ErrorKind::RoomInUse, "Room alias already taken"));
        }
        Ok(Some(alias))
    }

    /// Build, authorise and store the `m.room.create` event of a new room.
    async fn send_create_event(
        &self,
        creator: &UserId,
        version: &RoomVersionId,
        creation_content: Option<Map<String, JsonValue>>,
    ) -> Result<OwnedRoomId> {
        let rules = version.rules().ok_or_else(unsupported_version)?;
        let mut content = creation_content.unwrap_or_default();
        content.insert("room_version".into(), version.as_str().into());
        if !rules.authorization.use_room_create_sender {
            content.insert("creator".into(), creator.as_str().into());
        }
        // Before v12 the server picks the room ID; from v12 it is the create event's hash.
        let chosen_id = (!rules.authorization.room_create_event_id_as_room_id)
            .then(|| RoomId::new_v1(&self.config.server_name));
        let ctx = BuildContext {
            room_id: chosen_id.as_deref(),
            room_version: version,
            sender: creator.to_owned(),
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            depth: 1,
            origin_server_ts: now_ts(),
            server_name: &self.config.server_name,
            key: &self.key,
        };
        let pdu = build_pdu(PduTemplate::state("m.room.create", "", JsonValue::Object(content)), ctx)
            .map_err(build_error)?;
        let empty = Arc::new(StateMap::new());
        self.authorize(&pdu, version, &empty)
            .map_err(|e| Error::bad_json(format!("Invalid creation content: {e}")))?;
        let room_id = pdu.room_id.clone();
        let lock = self.room_lock(&room_id);
        let _guard = lock.lock().await;
        self.persist(pdu, None, version, empty, None)?;
        Ok(room_id)
    }
}

/// The default power levels for the room version, adjusted by preset and override.
fn power_levels_content(
    version: &RoomVersionId,
    creator: &UserId,
    request: &CreateRoom,
    preset: Preset,
) -> Result<JsonValue> {
    let rules = version.rules().ok_or_else(unsupported_version)?;
    // Every field spelled out: clients read them without knowing the defaults.
    let mut content = serde_json::to_value(RoomPowerLevelsEventContent::new(&rules.authorization))?;
    for (key, default) in [
        ("ban", 50),
        ("kick", 50),
        ("redact", 50),
        ("invite", 0),
        ("events_default", 0),
        ("state_default", 50),
        ("users_default", 0),
    ] {
        if content.get(key).is_none() {
            content[key] = json!(default);
        }
    }
    for key in ["events", "users"] {
        if content.get(key).is_none() {
            content[key] = json!({});
        }
    }
    if content.get("notifications").is_none() {
        content["notifications"] = json!({"room": 50});
    }
    let creators_are_privileged = rules.authorization.explicitly_privilege_room_creators;
    let users = content["users"].as_object_mut().map(std::mem::take).unwrap_or_default();
    let mut users = users;
    if !creators_are_privileged {
        users.insert(creator.to_string(), json!(100));
    }
    if preset == Preset::TrustedPrivateChat {
        for invitee in &request.invite {
            users.insert(invitee.to_string(), json!(100));
        }
    }
    content["users"] = JsonValue::Object(users);
    if let Some(overrides) = &request.power_level_content_override {
        for (key, value) in overrides {
            content[key] = value.clone();
        }
    }
    if !creators_are_privileged && let Some(users) = content["users"].as_object_mut() {
        // An override's user map still leaves the creator in charge.
        users.entry(creator.to_string()).or_insert(json!(100));
    }
    serde_json::from_value::<RoomPowerLevelsEventContent>(content.clone())
        .map_err(|e| Error::bad_json(format!("Invalid power_level_content_override: {e}")))?;
    if creators_are_privileged && let Some(users) = content["users"].as_object_mut() {
        // v12: creators have infinite power and must not be listed.
        users.remove(creator.as_str());
    }
    Ok(content)
}
