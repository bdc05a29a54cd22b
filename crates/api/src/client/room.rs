//! `createRoom`, sending events, state, single events and redaction.

use axum::Json;
use estuary_core::{Error, error::ErrorKind};
use estuary_events::PduTemplate;
use estuary_service::{
    delayed::ScheduleRequest,
    rooms::{CreateRoom, Preset, Txn},
};
use ruma::{
    RoomAliasId, RoomId,
    api::client::{
        message::send_message_event,
        redact::redact_event,
        room::{Visibility, create_room, get_room_event},
        state::{get_state_event_for_key, get_state_events, send_state_event},
    },
    events::StateEventType,
    serde::Raw,
};
use serde_json::{Map, Value as JsonValue, json};

use estuary_service::rate_limits::Action;

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

/// A JSON value (or a served event) as ruma's raw event type.
pub(super) fn raw<T, V: serde::Serialize + ?Sized>(value: &V) -> Raw<T> {
    // Both have string keys only, so they always serialise.
    Raw::from_json(serde_json::value::to_raw_value(value).expect("JSON values serialise"))
}

fn raw_object<T>(raw: &Raw<T>, what: &str) -> Result<Map<String, JsonValue>, Error> {
    serde_json::from_str(raw.json().get())
        .map_err(|_| Error::bad_json(format!("`{what}` must be a JSON object")))
}

fn raw_content<T>(raw: &Raw<T>) -> Result<JsonValue, Error> {
    let content: JsonValue =
        serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))?;
    if !content.is_object() {
        return Err(Error::bad_json("Event content must be a JSON object"));
    }
    Ok(content)
}

pub async fn create(
    services: AppState,
    request: Ruma<create_room::v3::Request>,
) -> ApiResult<create_room::v3::Response> {
    let body = &request.body;
    super::refuse_if_suspended(&services, request.user()?)?;
    if !body.invite.is_empty() && super::shadow_banned_event_id(&services, request.user()?).is_some() {
        // As Synapse: a room with invites looks created and reaches no one.
        let fake = format!(
            "!{}:{}",
            estuary_service::accounts::tokens::random_token(18),
            services.config.server_name
        );
        let room_id = ruma::OwnedRoomId::try_from(fake).map_err(Error::internal)?;
        return Ok(create_room::v3::Response::new(room_id));
    }
    for _ in &body.invite {
        super::rate_limit_user(&services, Action::InviteByUser, request.user()?)?;
    }
    let preset = body.preset.as_ref().map(|p| match p.as_str() {
        "public_chat" => Ok(Preset::PublicChat),
        "trusted_private_chat" => Ok(Preset::TrustedPrivateChat),
        "private_chat" => Ok(Preset::PrivateChat),
        other => Err(Error::bad_json(format!("Unknown preset {other}"))),
    });
    if let Some(name) = &body.room_alias_name
        && let Ok(alias) = RoomAliasId::parse(format!("#{name}:{}", services.config.server_name))
    {
        services.appservices.check_alias_not_exclusive(&alias, request.appservice.as_deref())?;
    }
    let mut initial_state = Vec::new();
    for event in &body.initial_state {
        let event = raw_object(event, "initial_state")?;
        let kind = event
            .get("type")
            .and_then(|t| t.as_str())
            .ok_or_else(|| Error::bad_json("initial_state needs `type`"))?;
        let state_key = event.get("state_key").and_then(|k| k.as_str()).unwrap_or_default();
        let content = event.get("content").cloned().unwrap_or_else(|| JsonValue::Object(Map::new()));
        initial_state.push(PduTemplate::state(kind, state_key, content));
    }
    // Users of other servers are invited once the room exists: their
    // servers must countersign each invite.
    let ours = |user: &ruma::UserId| user.server_name() == services.config.server_name;
    let (local_invites, remote_invites): (Vec<_>, Vec<_>) =
        body.invite.iter().cloned().partition(|u| ours(u) || !services.config.allow_federation);
    let create = CreateRoom {
        preset: preset.transpose()?,
        public: body.visibility == Visibility::Public,
        room_alias_name: body.room_alias_name.clone(),
        name: body.name.clone(),
        topic: body.topic.clone(),
        invite: local_invites,
        initial_state,
        creation_content: body
            .creation_content
            .as_ref()
            .map(|c| raw_object(c, "creation_content"))
            .transpose()?,
        power_level_content_override: body
            .power_level_content_override
            .as_ref()
            .map(|c| raw_object(c, "power_level_content_override"))
            .transpose()?,
        is_direct: body.is_direct,
        room_version: body.room_version.clone(),
        room_id: None,
    };
    let sender = request.user()?;
    let room_id = services.rooms.create_room(sender, create).await?;
    for invitee in remote_invites {
        if let Err(err) =
            services.federation.invite_remote(&room_id, sender, &invitee, None, body.is_direct).await
        {
            tracing::warn!(%room_id, %invitee, "inviting a user of another server failed: {err}");
        }
    }
    Ok(create_room::v3::Response::new(room_id))
}

fn txn<R>(request: &Ruma<R>, txn_id: &str) -> Option<Txn> {
    request.txn_device().map(|device_id| Txn { device_id, txn_id: txn_id.to_owned() })
}

/// The `org.matrix.msc4140.delay` query parameter (milliseconds) that makes
/// a send a delayed event.
fn requested_delay<R>(request: &Ruma<R>) -> Result<Option<u64>, Error> {
    request
        .query_param("org.matrix.msc4140.delay")
        .map(|raw| raw.parse::<u64>().map_err(|_| Error::invalid_param("Delay must be a whole number of ms")))
        .transpose()
}

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`, delayed with `org.matrix.msc4140.delay`.
pub async fn send_message(
    services: AppState,
    request: Ruma<send_message_event::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let body = &request.body;
    let content = raw_content(&body.body)?;
    super::refuse_if_suspended(&services, request.user()?)?;
    if let Some(event_id) = super::shadow_banned_event_id(&services, request.user()?) {
        return Ok(Json(json!({"event_id": event_id})));
    }
    super::rate_limit_user(&services, Action::Message, request.user()?)?;
    if let Some(delay_ms) = requested_delay(&request)? {
        let delay_id = services.delayed.schedule(ScheduleRequest {
            user_id: request.user()?,
            device_id: request.sender_device.as_deref(),
            txn_id: Some(body.txn_id.as_str()),
            room_id: &body.room_id,
            event_type: body.event_type.to_string(),
            state_key: None,
            content,
            delay_ms,
        })?;
        return Ok(Json(json!({"delay_id": delay_id})));
    }
    let mut template = PduTemplate::message(body.event_type.to_string(), content);
    template.origin_server_ts = request.massaged_ts()?;
    let txn = txn(&request, body.txn_id.as_str());
    let pdu = services.rooms.send(&body.room_id, request.user()?, template, txn).await?;
    Ok(Json(json!({"event_id": pdu.event_id})))
}

/// `POST /rooms/{roomId}/send/{eventType}`: the legacy send without a
/// transaction ID (not idempotent), which Synapse still serves.
pub async fn send_message_without_txn(
    axum::extract::State(services): axum::extract::State<AppState>,
    crate::ruma_wrapper::AuthedUser(user): crate::ruma_wrapper::AuthedUser,
    axum::extract::Path((room_id, event_type)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<JsonValue>> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let content: JsonValue =
        serde_json::from_slice(&body).map_err(|e| Error::not_json(format!("Invalid JSON: {e}")))?;
    if !content.is_object() {
        return Err(Error::bad_json("Event content must be a JSON object").into());
    }
    super::refuse_if_suspended(&services, &user)?;
    if let Some(event_id) = super::shadow_banned_event_id(&services, &user) {
        return Ok(Json(json!({"event_id": event_id})));
    }
    super::rate_limit_user(&services, Action::Message, &user)?;
    let pdu = services.rooms.send(&room_id, &user, PduTemplate::message(event_type, content), None).await?;
    Ok(Json(json!({"event_id": pdu.event_id})))
}

/// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`, delayed with `org.matrix.msc4140.delay`.
pub async fn send_state(
    services: AppState,
    request: Ruma<send_state_event::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let body = &request.body;
    let content = raw_content(&body.body)?;
    if body.event_type == StateEventType::RoomCanonicalAlias {
        check_canonical_alias(&services, &body.room_id, &content)?;
    }
    let own_leave = body.event_type == StateEventType::RoomMember
        && body.state_key == request.user()?.as_str()
        && content["membership"] == "leave";
    if !own_leave {
        super::refuse_if_suspended(&services, request.user()?)?;
        if let Some(event_id) = super::shadow_banned_event_id(&services, request.user()?) {
            return Ok(Json(json!({"event_id": event_id})));
        }
        super::rate_limit_user(&services, Action::Message, request.user()?)?;
    }
    if let Some(delay_ms) = requested_delay(&request)? {
        let delay_id = services.delayed.schedule(ScheduleRequest {
            user_id: request.user()?,
            device_id: None,
            txn_id: None,
            room_id: &body.room_id,
            event_type: body.event_type.to_string(),
            state_key: Some(body.state_key.clone()),
            content,
            delay_ms,
        })?;
        return Ok(Json(json!({"delay_id": delay_id})));
    }
    let mut template = PduTemplate::state(body.event_type.to_string(), body.state_key.clone(), content);
    template.origin_server_ts = request.massaged_ts()?;
    let pdu = services.rooms.send(&body.room_id, request.user()?, template, None).await?;
    if body.event_type == StateEventType::RoomGuestAccess {
        estuary_service::guests::remove_revoked(&services.rooms, &services.accounts, &body.room_id).await?;
    }
    Ok(Json(json!({"event_id": pdu.event_id})))
}

/// Every alias a canonical alias event names must point to this room.
fn check_canonical_alias(services: &AppState, room_id: &RoomId, content: &JsonValue) -> Result<(), Error> {
    let bad = |message: &str| Error::matrix(400, ErrorKind::BadAlias, message);
    let aliases = content["alias"]
        .as_str()
        .into_iter()
        .chain(content["alt_aliases"].as_array().into_iter().flatten().filter_map(|a| a.as_str()));
    for alias in aliases {
        let alias = RoomAliasId::parse(alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
        if alias.server_name() == services.config.server_name
            && services.rooms.resolve_alias(&alias)?.as_deref() != Some(room_id)
        {
            return Err(bad("An alias does not point to this room"));
        }
    }
    Ok(())
}

pub async fn get_state_event(
    services: AppState,
    request: Ruma<get_state_event_for_key::v3::Request>,
) -> ApiResult<get_state_event_for_key::v3::Response> {
    use get_state_event_for_key::v3::StateEventFormat;
    let body = &request.body;
    let event =
        services.rooms.room_state_event(request.user()?, &body.room_id, &body.event_type, &body.state_key)?;
    let value = match body.format {
        StateEventFormat::Event => event,
        _ => event["content"].clone(),
    };
    Ok(get_state_event_for_key::v3::Response::new(
        serde_json::value::to_raw_value(&value).map_err(Error::from)?,
    ))
}

pub async fn get_state(
    services: AppState,
    request: Ruma<get_state_events::v3::Request>,
) -> ApiResult<get_state_events::v3::Response> {
    let events = services.rooms.room_state(request.user()?, &request.body.room_id)?;
    Ok(get_state_events::v3::Response::new(events.iter().map(raw).collect()))
}

pub async fn get_event(
    services: AppState,
    request: Ruma<get_room_event::v3::Request>,
) -> ApiResult<get_room_event::v3::Response> {
    let body = &request.body;
    let event = services.rooms.get_event(
        request.user()?,
        request.sender_device.as_deref(),
        &body.room_id,
        &body.event_id,
    )?;
    Ok(get_room_event::v3::Response::new(raw(&event)))
}

pub async fn redact(
    services: AppState,
    request: Ruma<redact_event::v3::Request>,
) -> ApiResult<redact_event::v3::Response> {
    let body = &request.body;
    let txn = txn(&request, body.txn_id.as_str());
    let reason = body.reason.as_deref();
    let event_id =
        redact_event_as(&services, &body.room_id, request.user()?, &body.event_id, reason, txn).await?;
    Ok(redact_event::v3::Response::new(event_id))
}

/// `POST /rooms/{roomId}/redact/{eventId}`: the legacy redaction without a
/// transaction ID (not idempotent), which Synapse still serves.
pub async fn redact_without_txn(
    axum::extract::State(services): axum::extract::State<AppState>,
    crate::ruma_wrapper::AuthedUser(user): crate::ruma_wrapper::AuthedUser,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<JsonValue>> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let event_id = ruma::EventId::parse(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
    let content: JsonValue = match body.is_empty() {
        true => json!({}),
        false => serde_json::from_slice(&body).map_err(|e| Error::not_json(format!("Invalid JSON: {e}")))?,
    };
    if !content.is_object() {
        return Err(Error::bad_json("The body must be a JSON object").into());
    }
    let reason = content.get("reason").and_then(JsonValue::as_str);
    let event_id = redact_event_as(&services, &room_id, &user, &event_id, reason, None).await?;
    Ok(Json(json!({"event_id": event_id})))
}

/// Redact `event_id` as `user`: their own event, or another's with the power to.
async fn redact_event_as(
    services: &AppState,
    room_id: &RoomId,
    user: &ruma::UserId,
    event_id: &ruma::EventId,
    reason: Option<&str>,
    txn: Option<Txn>,
) -> Result<ruma::OwnedEventId, Error> {
    super::rate_limit_user(services, Action::Message, user)?;
    let rooms = &services.rooms;
    let target = rooms.stored(event_id)?.ok_or_else(|| Error::not_found("Event not found"))?;
    if target.room_id != room_id {
        return Err(Error::invalid_param("The event belongs to another room"));
    }
    let room = rooms.require_room(room_id)?;
    let own = target.pdu()?.sender == user;
    let state = rooms.current_state(&room)?;
    if !own && !rooms.power_levels(&state, &room.room_version)?.user_can_redact_event_of_other(user) {
        return Err(Error::forbidden("You may not redact other users' events"));
    }
    if !own {
        // A suspended user may still redact their own events (the spec's advice).
        super::refuse_if_suspended(services, user)?;
    }
    let mut content = json!({});
    if let Some(reason) = reason {
        content["reason"] = reason.into();
    }
    let mut template = PduTemplate::message("m.room.redaction", content);
    template.redacts = Some(event_id.to_owned());
    Ok(rooms.send(room_id, user, template, txn).await?.event_id)
}

/// `POST /rooms/{roomId}/upgrade`, by hand: a `new_version` that is no
/// room version at all is `M_UNSUPPORTED_ROOM_VERSION`, not a JSON error.
pub async fn upgrade(
    axum::extract::State(services): axum::extract::State<AppState>,
    crate::ruma_wrapper::AuthedUser(user): crate::ruma_wrapper::AuthedUser,
    axum::extract::Path(room_id): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let room_id =
        ruma::RoomId::parse(room_id).map_err(|e| Error::invalid_param(format!("Invalid room ID: {e}")))?;
    super::refuse_if_suspended(&services, &user)?;
    let body: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| Error::not_json("The body is not JSON"))?;
    let version = body["new_version"].as_str().ok_or_else(|| Error::bad_json("Missing `new_version`"))?;
    let version =
        ruma::RoomVersionId::try_from(version).map_err(|_| estuary_service::rooms::unsupported_version())?;
    let additional_creators = match body.get("additional_creators") {
        Some(list) => serde_json::from_value(list.clone())
            .map_err(|e| Error::bad_json(format!("Invalid `additional_creators`: {e}")))?,
        None => Vec::new(),
    };
    let new_room = services.rooms.upgrade_room(&user, &room_id, version, additional_creators).await?;
    carry_over(&services, &user, &new_room);
    Ok(axum::Json(serde_json::json!({"replacement_room": new_room})))
}

/// After a join to (or the creation of) an upgraded room: the user's tags,
/// `m.direct` entry and room push rule follow them from its predecessor.
/// Best effort: the join itself already happened.
pub(crate) fn carry_over(services: &AppState, user: &ruma::UserId, room_id: &ruma::RoomId) {
    let result = services.rooms.predecessor(room_id).and_then(|old| match old {
        Some(old) => estuary_service::upgrade_carry::carry_over(
            &services.account_data,
            &services.push,
            user,
            &old,
            room_id,
        ),
        None => Ok(()),
    });
    if let Err(err) = result {
        tracing::warn!(%room_id, %user, "could not carry the user's room data over from the old room: {err}");
    }
}

pub async fn hierarchy(
    services: AppState,
    request: Ruma<ruma::api::client::space::get_hierarchy::v1::Request>,
) -> ApiResult<ruma::api::client::space::get_hierarchy::v1::Response> {
    use ruma::api::client::space::get_hierarchy::v1::Response;
    let body = &request.body;
    let walk = estuary_service::federation::HierarchyRequest {
        viewer: request.user()?,
        root: &body.room_id,
        suggested_only: body.suggested_only,
        max_depth: body.max_depth.map(|d| u64::from(d) as usize),
        from: body.from.as_deref(),
        limit: body.limit.map_or(50, |l| u64::from(l) as usize),
    };
    let (rooms, next) = services.federation.hierarchy(walk).await?;
    let mut response = Response::new();
    response.rooms = rooms
        .into_iter()
        .map(|room| serde_json::from_value(room).map_err(Error::internal))
        .collect::<Result<_, _>>()?;
    response.next_batch = next;
    Ok(response)
}
