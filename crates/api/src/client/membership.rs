//! Joining, inviting, leaving, kicking, banning, forgetting; member lists.

use estuary_core::Error;
use ruma::{
    OwnedRoomId, RoomAliasId, RoomId, RoomOrAliasId,
    api::client::membership::{
        ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
        joined_members, joined_rooms, kick_user, leave_room, unban_user,
    },
};

use super::room::raw;
use estuary_service::rate_limits::Action;

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

/// A room ID, or the room a local alias names (a bridge may create the
/// room of an alias in its namespace when asked).
pub(crate) async fn resolve(services: &AppState, room: &RoomOrAliasId) -> Result<OwnedRoomId, Error> {
    let alias = match <&RoomId>::try_from(room) {
        Ok(room_id) => return Ok(room_id.to_owned()),
        Err(alias) => alias,
    };
    if let Some(room_id) = services.rooms.resolve_alias(alias)? {
        return Ok(room_id);
    }
    if services.appservices.query_alias(alias).await
        && let Some(room_id) = services.rooms.resolve_alias(alias)?
    {
        return Ok(room_id);
    }
    Err(Error::not_found("Unknown room alias"))
}

pub async fn join_by_id(
    services: AppState,
    request: Ruma<join_room_by_id::v3::Request>,
) -> ApiResult<join_room_by_id::v3::Response> {
    let body = &request.body;
    let custom = custom_member_content(&request);
    join(&services, &body.room_id, request.user()?, body.reason.clone(), custom, &[]).await?;
    Ok(join_room_by_id::v3::Response::new(body.room_id.clone()))
}

/// The fields of a `/join` body beyond the spec's, which Synapse puts in
/// the member event (`membership` and the spec's own fields excepted).
fn custom_member_content<R>(request: &Ruma<R>) -> serde_json::Map<String, serde_json::Value> {
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&request.raw_body).unwrap_or_default();
    for known in ["reason", "third_party_signed", "membership"] {
        body.remove(known);
    }
    body
}

/// Join a room here, or through other servers when this server is not in
/// it: the servers the client named, the inviting server, the room ID's.
async fn join(
    services: &AppState,
    room_id: &RoomId,
    user_id: &ruma::UserId,
    reason: Option<String>,
    custom: serde_json::Map<String, serde_json::Value>,
    via: &[ruma::OwnedServerName],
) -> Result<(), Error> {
    super::refuse_if_suspended(services, user_id)?;
    refuse_if_blocked(services, room_id)?;
    // A room this server left is joined through the servers still in it:
    // its state here stopped when we left.
    let known = services.rooms.room(room_id)?.is_some();
    let residents = if known { services.rooms.joined_servers(room_id)? } else { Vec::new() };
    let stale = !residents.is_empty() && !services.rooms.is_resident(room_id)?;
    let guest_refused = || Error::forbidden("Guests may only join rooms whose guest access is can_join");
    let guest = services.accounts.is_guest(user_id)?;
    if known && !(stale && services.config.allow_federation) {
        if guest && !services.rooms.guests_can_join(room_id)? {
            return Err(guest_refused());
        }
        if !services.rooms.is_joined(user_id, room_id)? {
            super::rate_limit_user(services, Action::JoinLocal, user_id)?;
        }
        services.rooms.join(room_id, user_id, reason, custom).await?;
        services.federation.share_presence_on_join(room_id, user_id);
        super::room::carry_over(services, user_id, room_id);
        return Ok(());
    }
    // A room elsewhere: a guest joins only when the invite's room state
    // says guests can (the other server cannot tell a guest from a user).
    if guest && !services.rooms.invited_guests_can_join(user_id, room_id)? {
        return Err(guest_refused());
    }
    let mut servers = via.to_vec();
    if let Some(stub) = services.rooms.invite_stub(user_id, room_id)?
        && let Some(invite) = services.rooms.pdu(&stub.event_id)?
    {
        servers.push(invite.sender.server_name().to_owned());
    }
    servers.extend(residents);
    if let Some(server) = room_id.server_name() {
        servers.push(server.to_owned());
    }
    let ours = &services.config.server_name;
    servers.retain(|s| s != ours);
    let mut seen = std::collections::HashSet::new();
    servers.retain(|s| seen.insert(s.clone()));
    if servers.is_empty() || !services.config.allow_federation {
        return Err(Error::not_found("Unknown room"));
    }
    super::rate_limit_user(services, Action::JoinRemote, user_id)?;
    services.federation.join_remote(room_id, user_id, &servers, reason).await?;
    if let Err(err) = services.rooms.follow_upgrade(room_id) {
        tracing::warn!(%room_id, "could not move this server's aliases to the upgraded room: {err}");
    }
    super::room::carry_over(services, user_id, room_id);
    Ok(())
}

/// The room a room ID or alias names, and, for an alias of another
/// server, the servers that server says are in it.
async fn resolve_with_servers(
    services: &AppState,
    room_id_or_alias: &ruma::RoomOrAliasId,
) -> Result<(ruma::OwnedRoomId, Vec<ruma::OwnedServerName>), Error> {
    match <&RoomAliasId>::try_from(room_id_or_alias) {
        Ok(alias)
            if alias.server_name() != services.config.server_name && services.config.allow_federation =>
        {
            match services.rooms.resolve_alias(alias)? {
                Some(room_id) => Ok((room_id, Vec::new())),
                None => services.federation.remote_alias(alias).await,
            }
        }
        _ => Ok((resolve(services, room_id_or_alias).await?, Vec::new())),
    }
}

pub async fn join_by_id_or_alias(
    services: AppState,
    request: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> ApiResult<join_room_by_id_or_alias::v3::Response> {
    let body = &request.body;
    let (room_id, mut via) = resolve_with_servers(&services, &body.room_id_or_alias).await?;
    via.extend(body.via.iter().cloned());
    let custom = custom_member_content(&request);
    join(&services, &room_id, request.user()?, body.reason.clone(), custom, &via).await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

pub async fn invite(
    services: AppState,
    request: Ruma<invite_user::v3::Request>,
) -> ApiResult<invite_user::v3::Response> {
    use invite_user::v3::InvitationRecipient;
    let InvitationRecipient::UserId(recipient) = &request.body.recipient else {
        return Err(Error::forbidden("Third-party invites are not supported").into());
    };
    let reason = recipient.reason.clone();
    let (room_id, sender, invitee) = (&request.body.room_id, request.user()?, &recipient.user_id);
    super::refuse_if_suspended(&services, sender)?;
    refuse_if_blocked(&services, room_id)?;
    if super::shadow_banned_event_id(&services, sender).is_some() {
        return Ok(invite_user::v3::Response::new());
    }
    super::rate_limit_user(&services, Action::InviteByUser, sender)?;
    super::rate_limit_user(&services, Action::InviteOfUser, invitee)?;
    services.rate_limits.check(Action::InviteToRoom, room_id.as_str())?;
    if invitee.server_name() != services.config.server_name && services.config.allow_federation {
        services.federation.invite_remote(room_id, sender, invitee, reason, false).await?;
    } else {
        if !services.accounts.exists(invitee)? {
            // A bridge's ghost may not exist yet: its bridge creates it.
            services.appservices.query_user(invitee).await?;
        }
        services.rooms.invite(room_id, sender, invitee, reason, false).await?;
    }
    Ok(invite_user::v3::Response::new())
}

pub async fn leave(
    services: AppState,
    request: Ruma<leave_room::v3::Request>,
) -> ApiResult<leave_room::v3::Response> {
    let (room_id, user_id) = (&request.body.room_id, request.user()?);
    services.check_not_rejecting_notices(user_id, room_id)?;
    if services.rooms.pending_out_of_band(user_id, room_id)?.is_some() {
        // Declining an invite to (or retracting a knock on) a room this server is not in.
        services.federation.decline_remote_membership(room_id, user_id, request.body.reason.clone()).await?;
        return Ok(leave_room::v3::Response::new());
    }
    services.rooms.leave(room_id, user_id, request.body.reason.clone()).await?;
    Ok(leave_room::v3::Response::new())
}

pub async fn kick(
    services: AppState,
    request: Ruma<kick_user::v3::Request>,
) -> ApiResult<kick_user::v3::Response> {
    let body = &request.body;
    super::refuse_if_suspended(&services, request.user()?)?;
    services.rooms.kick(&body.room_id, request.user()?, &body.user_id, body.reason.clone()).await?;
    Ok(kick_user::v3::Response::new())
}

pub async fn ban(
    services: AppState,
    request: Ruma<ban_user::v3::Request>,
) -> ApiResult<ban_user::v3::Response> {
    let body = &request.body;
    super::refuse_if_suspended(&services, request.user()?)?;
    services
        .rooms
        .set_membership(&body.room_id, request.user()?, &body.user_id, "ban", body.reason.clone())
        .await?;
    Ok(ban_user::v3::Response::new())
}

pub async fn unban(
    services: AppState,
    request: Ruma<unban_user::v3::Request>,
) -> ApiResult<unban_user::v3::Response> {
    let body = &request.body;
    super::refuse_if_suspended(&services, request.user()?)?;
    services.rooms.unban(&body.room_id, request.user()?, &body.user_id, body.reason.clone()).await?;
    Ok(unban_user::v3::Response::new())
}

pub async fn forget(
    services: AppState,
    request: Ruma<forget_room::v3::Request>,
) -> ApiResult<forget_room::v3::Response> {
    services.rooms.forget(&request.body.room_id, request.user()?)?;
    Ok(forget_room::v3::Response::new())
}

pub async fn joined(
    services: AppState,
    request: Ruma<joined_rooms::v3::Request>,
) -> ApiResult<joined_rooms::v3::Response> {
    Ok(joined_rooms::v3::Response::new(services.rooms.rooms_with_membership(request.user()?, "join")?))
}

pub async fn members(
    services: AppState,
    request: Ruma<get_member_events::v3::Request>,
) -> ApiResult<get_member_events::v3::Response> {
    let body = &request.body;
    let events = services.rooms.room_members(
        request.user()?,
        &body.room_id,
        body.at.as_deref(),
        body.membership.as_ref().map(|m| m.as_str()),
        body.not_membership.as_ref().map(|m| m.as_str()),
    )?;
    Ok(get_member_events::v3::Response::new(events.iter().map(raw).collect()))
}

/// `/joined_members`. Written by hand: clients expect `display_name` and
/// `avatar_url` keys even when null, which ruma omits.
pub async fn joined_members(
    services: AppState,
    request: Ruma<joined_members::v3::Request>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let mut joined = serde_json::Map::new();
    for (user, profile) in services.rooms.joined_members(request.user()?, &request.body.room_id)? {
        joined.insert(user, profile);
    }
    Ok(axum::Json(serde_json::json!({ "joined": joined })))
}

pub async fn knock(
    services: AppState,
    request: Ruma<ruma::api::client::knock::knock_room::v3::Request>,
) -> ApiResult<ruma::api::client::knock::knock_room::v3::Response> {
    let body = &request.body;
    let (room_id, mut via) = resolve_with_servers(&services, &body.room_id_or_alias).await?;
    let (user_id, reason) = (request.user()?, body.reason.clone());
    super::refuse_if_suspended(&services, user_id)?;
    refuse_if_blocked(&services, &room_id)?;
    if services.rooms.room(&room_id)?.is_some() || !services.config.allow_federation {
        services.rooms.knock(&room_id, user_id, reason).await?;
        return Ok(ruma::api::client::knock::knock_room::v3::Response::new(room_id));
    }
    // A room on another server: knock through the servers the client or
    // the alias names, or the one in the room ID.
    via.extend(body.via.iter().cloned());
    via.extend(room_id.server_name().map(ToOwned::to_owned));
    via.dedup();
    services.federation.knock_remote(&room_id, user_id, &via, reason).await?;
    Ok(ruma::api::client::knock::knock_room::v3::Response::new(room_id))
}

/// Nobody of this server joins, knocks on or invites to a room an admin blocked.
fn refuse_if_blocked(services: &AppState, room_id: &RoomId) -> Result<(), Error> {
    if services.rooms.blocked_by(room_id)?.is_some() {
        return Err(Error::forbidden("This room has been blocked on this server"));
    }
    Ok(())
}
