//! `createRoom`: the create event, then the spec's sequence of initial events.

use std::sync::atomic::Ordering;

use estuary_core::{Error, Result, error::ErrorKind};
use estuary_events::{
    Pdu, PduTemplate,
    builder::{BuildContext, build_pdu},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt,
    UserId, events::room::power_levels::RoomPowerLevelsEventContent,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    Rooms,
    append::{build_error, now_ts, unsupported_version, validate_content},
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
    /// A room ID chosen beforehand (an upgrade's tombstone names it), for
    /// versions before 12 whose room IDs the server picks.
    pub room_id: Option<OwnedRoomId>,
}

/// Room versions this server creates and joins.
pub fn supported_room_version(version: &RoomVersionId) -> bool {
    use RoomVersionId::*;
    matches!(version, V1 | V2 | V3 | V4 | V5 | V6 | V7 | V8 | V9 | V10 | V11 | V12)
}

/// How many times a v12 create event is rebuilt when its room ID is taken.
const CREATE_ATTEMPTS: u64 = 16;

impl Rooms {
    /// A create event timestamp: now, or one past the previous one, so no
    /// two create events of this server share a timestamp.
    fn create_ts(&self) -> u64 {
        let now = u64::from(now_ts().0);
        let previous = self
            .last_create_ts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now.max(last + 1)))
            .unwrap_or(now);
        now.max(previous + 1)
    }

    /// Create a room: every initial event is built and authorised against
    /// the state the ones before it leave, and the room is committed in one
    /// batch, so a refused event (or a crash) leaves no trace of the room.
    pub async fn create_room(&self, creator: &UserId, request: CreateRoom) -> Result<OwnedRoomId> {
        let version =
            request.room_version.clone().unwrap_or_else(|| self.config.default_room_version.clone());
        if !supported_room_version(&version) {
            return Err(unsupported_version());
        }
        let preset =
            request.preset.unwrap_or(if request.public { Preset::PublicChat } else { Preset::PrivateChat });
        let alias = self.requested_alias(request.room_alias_name.as_deref())?;
        let _alias_claim = alias.as_ref().map(|a| self.claim_alias(a)).transpose()?;
        let power_levels = power_levels_content(&version, creator, &request, preset)?;

        let (create, _room_guard) = self
            .unique_create_event(
                creator,
                &version,
                request.creation_content.clone(),
                request.room_id.as_deref(),
            )
            .await?;
        let room_id = create.room_id.clone();
        let mut staging = self.staging(None)?;
        // Only a refusal by the auth rules is the client's content at fault.
        self.stage(&mut staging, create, None).map_err(|e| match e {
            Error::Matrix { kind: ErrorKind::Forbidden, message, .. } => {
                Error::bad_json(format!("Invalid creation content: {message}"))
            }
            other => other,
        })?;
        for template in self.initial_templates(creator, &request, preset, power_levels, alias.as_ref())? {
            validate_content(&template)?;
            if self.same_state(&staging, creator, &template)?.is_some() {
                continue;
            }
            let pdu = self.build_local(&staging, &room_id, creator, template)?;
            self.stage(&mut staging, pdu, None)?;
        }
        if let Some(alias) = &alias {
            self.stage_alias(alias, &room_id, creator, &mut staging.batch);
        }
        if request.public {
            self.stage_public(&room_id, &mut staging.batch);
        }
        self.persist(staging).await?;
        tracing::debug!(%room_id, %creator, %version, "created room");
        Ok(room_id)
    }

    /// The spec's initial events after the creator's join, in its order.
    fn initial_templates(
        &self,
        creator: &UserId,
        request: &CreateRoom,
        preset: Preset,
        power_levels: JsonValue,
        alias: Option<&OwnedRoomAliasId>,
    ) -> Result<Vec<PduTemplate>> {
        // What `initial_state` sets, the preset does not (the spec lets it override).
        let overridden = |kind: &str| {
            request
                .initial_state
                .iter()
                .any(|t| t.kind.to_string() == kind && t.state_key.as_deref() == Some(""))
        };
        let mut templates = vec![
            self.join_template(creator, None)?,
            PduTemplate::state("m.room.power_levels", "", power_levels),
        ];
        if let Some(alias) = alias {
            templates.push(PduTemplate::state("m.room.canonical_alias", "", json!({"alias": alias})));
        }
        let join_rule = if preset == Preset::PublicChat { "public" } else { "invite" };
        let mut preset_state = vec![
            ("m.room.join_rules", json!({"join_rule": join_rule})),
            ("m.room.history_visibility", json!({"history_visibility": "shared"})),
        ];
        if preset != Preset::PublicChat {
            preset_state.push(("m.room.guest_access", json!({"guest_access": "can_join"})));
        }
        for (kind, content) in preset_state {
            if !overridden(kind) {
                templates.push(PduTemplate::state(kind, "", content));
            }
        }
        templates.extend(request.initial_state.iter().cloned());
        if let Some(name) = &request.name {
            templates.push(PduTemplate::state("m.room.name", "", json!({"name": name})));
        }
        if let Some(topic) = &request.topic {
            templates.push(PduTemplate::state("m.room.topic", "", json!({"topic": topic})));
        }
        for invitee in &request.invite {
            templates.push(self.invite_template(invitee, None, request.is_direct)?);
        }
        Ok(templates)
    }

    fn requested_alias(&self, name: Option<&str>) -> Result<Option<OwnedRoomAliasId>> {
        let Some(name) = name else { return Ok(None) };
        let alias = ruma::RoomAliasId::parse(format!("#{name}:{}", self.config.server_name))
            .map_err(|_| Error::invalid_param("Invalid room alias name"))?;
        Ok(Some(alias))
    }

    /// The create event of a new room, with its room lock. A v12 room ID is
    /// the create event's hash, so two rooms created by one user in the same
    /// millisecond with the same content would get the same ID. Create
    /// events get strictly increasing timestamps (`create_ts`), and the room
    /// is looked up under its lock, held until the room is committed: a
    /// taken ID (a clock set back, say) takes the next timestamp.
    async fn unique_create_event(
        &self,
        creator: &UserId,
        version: &RoomVersionId,
        creation_content: Option<Map<String, JsonValue>>,
        chosen: Option<&RoomId>,
    ) -> Result<(Pdu, tokio::sync::OwnedMutexGuard<()>)> {
        let rules = version.rules().ok_or_else(unsupported_version)?;
        let mut content = creation_content.unwrap_or_default();
        content.insert("room_version".into(), version.as_str().into());
        if !rules.authorization.use_room_create_sender {
            content.insert("creator".into(), creator.as_str().into());
        }
        let content = JsonValue::Object(content);
        for _ in 0..CREATE_ATTEMPTS {
            // Before v12 the server picks the room ID; from v12 it is the create event's hash.
            let chosen_id = (!rules.authorization.room_create_event_id_as_room_id)
                .then(|| chosen.map_or_else(|| RoomId::new_v1(&self.config.server_name), ToOwned::to_owned));
            let ctx = BuildContext {
                room_id: chosen_id.as_deref(),
                room_version: version,
                sender: creator.to_owned(),
                prev_events: Vec::new(),
                auth_events: Vec::new(),
                depth: 1,
                origin_server_ts: MilliSecondsSinceUnixEpoch(UInt::new_saturating(self.create_ts())),
                server_name: &self.config.server_name,
                key: &self.key,
            };
            let pdu = build_pdu(PduTemplate::state("m.room.create", "", content.clone()), ctx)
                .map_err(build_error)?;
            // Held until the room is committed (or refused): a second creator
            // of the same ID waits here, then finds it taken.
            let guard = self.room_lock(&pdu.room_id).lock_owned().await;
            if self.room(&pdu.room_id)?.is_none() {
                return Ok((pdu, guard));
            }
            if chosen.is_some() {
                break;
            }
        }
        Err(Error::matrix(503, ErrorKind::Unknown, "Could not pick a free room ID; try again"))
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
