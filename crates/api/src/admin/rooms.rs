//! Rooms in Synapse's admin API: the list, one room, its members and state,
//! blocking, making a user a room admin and joining a user to a room.

use axum::{
    Json,
    extract::{Path, State},
};
use estuary_core::Error;
use estuary_service::{
    room_deletion::{Deletion, DeletionRequest, Status},
    rooms::{Direction, HistoryPurge, MessagesQuery},
};
use ruma::{OwnedRoomId, RoomId, RoomOrAliasId};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::{
    extract::{AdminBody, AdminQuery, Dir, ServerAdmin, local_user},
    listing::sort_rows_folding_case,
};
use crate::{AppState, error::ApiResult};

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    from: usize,
    #[serde(default = "super::extract::default_limit")]
    limit: usize,
    order_by: Option<String>,
    #[serde(default)]
    dir: Dir,
    search_term: Option<String>,
    public_rooms: Option<bool>,
    empty_rooms: Option<bool>,
}

/// Orders Synapse lists rooms by, and whether each sorts largest first.
const ROOM_ORDERS: &[(&str, bool)] = &[
    ("name", false),
    ("alphabetical", false),
    ("size", true),
    ("canonical_alias", false),
    ("joined_members", true),
    ("joined_local_members", true),
    ("version", true),
    ("creator", false),
    ("encryption", false),
    ("federatable", false),
    ("public", false),
    ("join_rules", false),
    ("guest_access", false),
    ("history_visibility", false),
    ("state_events", true),
];

/// `GET /_synapse/admin/v1/rooms`.
pub async fn list(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> ApiResult<Json<JsonValue>> {
    super::listing::blocking(move || list_rooms(&services, &query)).await
}

fn list_rooms(services: &AppState, query: &ListQuery) -> Result<JsonValue, Error> {
    let order_by = query.order_by.as_deref().unwrap_or("name");
    let Some(&(_, largest_first)) = ROOM_ORDERS.iter().find(|(name, _)| *name == order_by) else {
        let names: Vec<_> = ROOM_ORDERS.iter().map(|(name, _)| *name).collect();
        return Err(Error::invalid_param(format!("Query parameter 'order_by' must be one of {names:?}")));
    };
    let column = match order_by {
        "alphabetical" => "name",
        "size" => "joined_members",
        other => other,
    };
    if query.search_term.as_deref() == Some("") {
        return Err(Error::invalid_param("search_term cannot be empty"));
    }
    let mut rooms = Vec::new();
    for room_id in services.rooms.all_room_ids()? {
        let view = services.rooms.admin_view(&room_id, false)?;
        if query.public_rooms.is_some_and(|public| view["public"] != public)
            || query.empty_rooms.is_some_and(|empty| (view["joined_members"] == 0) != empty)
            || query.search_term.as_deref().is_some_and(|term| !matches_search(&view, term))
        {
            continue;
        }
        rooms.push(view);
    }
    // `dir=b` turns the order's natural direction round.
    let backwards = largest_first != (query.dir == Dir::Backwards);
    sort_rows_folding_case(&mut rooms, column, backwards, "room_id");
    let total = rooms.len();
    let page: Vec<_> = rooms.into_iter().skip(query.from).take(query.limit).collect();
    let mut body = json!({"offset": query.from, "total_rooms": total});
    if query.from + query.limit < total {
        body["next_batch"] = json!(query.from + query.limit);
    }
    if query.from > 0 {
        body["prev_batch"] = json!(query.from.saturating_sub(query.limit));
    }
    body["rooms"] = JsonValue::Array(page);
    Ok(body)
}

/// Synapse's search: part of the name or canonical alias (case-insensitive),
/// or the exact room ID.
fn matches_search(view: &JsonValue, term: &str) -> bool {
    let term_lower = term.to_lowercase();
    let contains = |field: &str| view[field].as_str().is_some_and(|v| v.to_lowercase().contains(&term_lower));
    view["room_id"] == term || contains("name") || contains("canonical_alias")
}

/// A room ID from a path: 400 when it is not one, 404 when unknown here.
fn known_room(services: &AppState, raw: &str) -> Result<OwnedRoomId, Error> {
    let room_id = room_id_param(raw)?;
    services.rooms.room(&room_id)?.ok_or_else(|| Error::not_found("Room not found"))?;
    Ok(room_id)
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`.
pub async fn get(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = known_room(&services, &room_id)?;
    let mut view = services.rooms.admin_view(&room_id, true)?;
    let local_devices: usize = services
        .rooms
        .members_with_membership(&room_id, "join")?
        .iter()
        .filter(|user| services.accounts.is_local(user))
        .map(|user| services.accounts.devices(user).map(|d| d.len()))
        .sum::<Result<usize, _>>()?;
    view["joined_local_devices"] = json!(local_devices);
    Ok(Json(view))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`: who is joined.
pub async fn members(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = known_room(&services, &room_id)?;
    let members = services.rooms.members_with_membership(&room_id, "join")?;
    Ok(Json(json!({"members": members, "total": members.len()})))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities`.
pub async fn forward_extremities(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = known_room(&services, &room_id)?;
    let results = services.rooms.forward_extremities(&room_id)?;
    Ok(Json(json!({"count": results.len(), "results": results})))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`.
pub async fn state(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = known_room(&services, &room_id)?;
    Ok(Json(json!({"state": services.rooms.admin_state(&room_id)?})))
}

fn room_id_param(raw: &str) -> Result<OwnedRoomId, Error> {
    RoomId::parse(raw).map_err(|_| Error::invalid_param(format!("{raw} is not a legal room ID")))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`: rooms not known here may be blocked too.
pub async fn get_block(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = room_id_param(&room_id)?;
    Ok(Json(match services.rooms.blocked_by(&room_id)? {
        Some(admin) => json!({"block": true, "user_id": admin}),
        None => json!({"block": false}),
    }))
}

#[derive(Deserialize)]
pub struct Block {
    block: bool,
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block`: local users cannot join a blocked room.
pub async fn set_block(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(room_id): Path<String>,
    AdminBody(body): AdminBody<Block>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = room_id_param(&room_id)?;
    services.rooms.set_blocked(&room_id, body.block.then_some(&*admin))?;
    tracing::info!(%admin, %room_id, block = body.block, "admin changed a room's block");
    Ok(Json(json!({"block": body.block})))
}

#[derive(Deserialize)]
pub struct MakeRoomAdmin {
    user_id: Option<String>,
}

/// `POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin`: the
/// user (the calling admin by default) gets the highest local power level.
pub async fn make_room_admin(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(room): Path<String>,
    AdminBody(body): AdminBody<MakeRoomAdmin>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = resolve_local(&services, &room).await?;
    let target = match &body.user_id {
        Some(user) => local_user(&services, user)?,
        None => admin.clone(),
    };
    services.rooms.make_room_admin(&room_id, &target).await?;
    tracing::info!(%admin, %room_id, target = %target, "admin made a user room admin");
    Ok(Json(json!({})))
}

/// A room ID or an alias (of any server) as a room this server is in.
async fn resolve_local(services: &AppState, raw: &str) -> Result<OwnedRoomId, Error> {
    let room = <&RoomOrAliasId>::try_from(raw)
        .map_err(|_| Error::invalid_param(format!("{raw} was not legal room ID or room alias")))?;
    let room_id = match <&ruma::RoomAliasId>::try_from(room) {
        Ok(alias) => match services.rooms.resolve_alias(alias)? {
            Some(room_id) => room_id,
            None => services.federation.remote_alias(alias).await?.0,
        },
        Err(_) => room_id_param(raw)?,
    };
    services.rooms.room(&room_id)?.ok_or_else(|| Error::invalid_param("Server not in room"))?;
    Ok(room_id)
}

#[derive(Deserialize)]
pub struct JoinUser {
    user_id: String,
}

/// `POST /_synapse/admin/v1/join/{roomIdOrAlias}`: join a local user to a
/// room this server is in; a room they may not join by themselves is
/// joined after an invite from its most powerful local member.
pub async fn join(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(room): Path<String>,
    AdminBody(body): AdminBody<JoinUser>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &body.user_id)?;
    let room_id = resolve_local(&services, &room).await?;
    let rooms = &services.rooms;
    let public = rooms.admin_view(&room_id, false)?["join_rules"] == "public";
    if !public && rooms.membership(&user, &room_id)?.as_deref() != Some("invite") {
        let (inviter, _) = rooms
            .most_powerful_local_member(&room_id)?
            .ok_or_else(|| Error::invalid_param("No local user in the room can invite"))?;
        rooms.invite(&room_id, &inviter, &user, None, false).await?;
    }
    rooms.join(&room_id, &user, None, Default::default()).await?;
    tracing::info!(%admin, %room_id, target = %user, "admin joined a user to a room");
    Ok(Json(json!({"room_id": room_id})))
}

#[derive(Deserialize)]
pub struct DeleteRoom {
    #[serde(default)]
    block: bool,
    #[serde(default = "yes")]
    purge: bool,
    new_room_user_id: Option<String>,
    room_name: Option<String>,
    message: Option<String>,
    #[serde(default)]
    force_purge: bool,
}

fn yes() -> bool {
    true
}

/// Start (or find) the room's deletion; its `delete_id`. The service checks
/// that `new_room_user_id` is one of this server's users.
fn start_deletion(
    services: &AppState,
    admin: &ruma::UserId,
    room: &str,
    body: DeleteRoom,
) -> Result<String, Error> {
    let new_room_user_id = match &body.new_room_user_id {
        Some(user) => Some(super::extract::user_id(user)?),
        None => None,
    };
    let request = DeletionRequest {
        room_id: room_id_param(room)?,
        requester: admin.to_owned(),
        block: body.block,
        purge: body.purge,
        new_room_user_id,
        room_name: body.room_name,
        message: body.message,
        force_purge: body.force_purge,
    };
    let room_id = request.room_id.clone();
    let delete_id = services.delete_room(request)?;
    tracing::info!(%admin, %room_id, delete_id, "admin deletes a room");
    Ok(delete_id)
}

/// `DELETE /_synapse/admin/v2/rooms/{roomId}`: a deletion that runs in the
/// background; its `delete_id` answers status queries.
pub async fn delete(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(room): Path<String>,
    AdminBody(body): AdminBody<DeleteRoom>,
) -> ApiResult<Json<JsonValue>> {
    let delete_id = start_deletion(&services, &admin, &room, body)?;
    Ok(Json(json!({"delete_id": delete_id})))
}

/// How long the synchronous `DELETE /v1/rooms/{roomId}` waits for its deletion.
const SYNCHRONOUS_DELETE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// `DELETE /_synapse/admin/v1/rooms/{roomId}`: the same, answered when done.
pub async fn delete_now(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(room): Path<String>,
    AdminBody(body): AdminBody<DeleteRoom>,
) -> ApiResult<Json<JsonValue>> {
    let delete_id = start_deletion(&services, &admin, &room, body)?;
    let deadline = tokio::time::Instant::now() + SYNCHRONOUS_DELETE_WAIT;
    loop {
        let deletion =
            services.room_deletions.by_id(&delete_id)?.ok_or_else(|| Error::internal("deletion lost"))?;
        match deletion.status {
            Status::Complete => {
                let result = deletion.shutdown_room.unwrap_or_default();
                return Ok(Json(json!(result)));
            }
            Status::Failed => {
                return Err(Error::internal(deletion.error.unwrap_or_default()).into());
            }
            _ if tokio::time::Instant::now() > deadline => {
                return Err(Error::internal("the deletion goes on in the background; poll its status").into());
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

fn deletion_view(deletion: &Deletion) -> JsonValue {
    let mut view = json!({
        "delete_id": deletion.delete_id,
        "room_id": deletion.request.room_id,
        "status": deletion.status,
        "shutdown_room": deletion.shutdown_room,
    });
    if let Some(error) = &deletion.error {
        view["error"] = json!(error);
    }
    view
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`.
pub async fn delete_status_of_room(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(room): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = room_id_param(&room)?;
    let deletions = services.room_deletions.of_room(&room_id)?;
    if deletions.is_empty() {
        return Err(Error::not_found(format!("No delete task for room_id '{room_id}' found")).into());
    }
    Ok(Json(json!({"results": deletions.iter().map(deletion_view).collect::<Vec<_>>()})))
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`.
pub async fn delete_status(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(delete_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let deletion = services
        .room_deletions
        .by_id(&delete_id)?
        .ok_or_else(|| Error::not_found(format!("delete id '{delete_id}' not found")))?;
    Ok(Json(deletion_view(&deletion)))
}

#[derive(Deserialize)]
pub struct MessagesParams {
    from: Option<String>,
    to: Option<String>,
    #[serde(default = "ten")]
    limit: usize,
    #[serde(default)]
    dir: Dir,
    filter: Option<String>,
}

fn ten() -> usize {
    10
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: the room's history
/// whatever its visibility, paged as the client `/messages` is.
pub async fn messages(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(room_id): Path<String>,
    AdminQuery(params): AdminQuery<MessagesParams>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = known_room(&services, &room_id)?;
    let filter = match &params.filter {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| Error::invalid_param(format!("Invalid filter: {e}")))?
        }
        None => Default::default(),
    };
    let query = MessagesQuery {
        from: params.from,
        to: params.to,
        dir: if params.dir == Dir::Backwards { Direction::Backward } else { Direction::Forward },
        limit: params.limit,
        filter,
    };
    let page = services.rooms.messages_as_admin(&room_id, query)?;
    let mut body = json!({"chunk": page.chunk, "start": page.start});
    if let Some(end) = page.end {
        body["end"] = json!(end);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
pub struct PurgeHistory {
    #[serde(default)]
    delete_local_events: bool,
    purge_up_to_event_id: Option<ruma::OwnedEventId>,
    purge_up_to_ts: Option<u64>,
}

/// `POST /_synapse/admin/v1/purge_history/{roomId}[/{eventId}]`: the room's
/// messages before a point go (state events stay); the answer's
/// `purge_id` answers `GET /v1/purge_history_status/{purgeId}`.
pub async fn purge_history(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(params): Path<Vec<(String, String)>>,
    AdminBody(body): AdminBody<PurgeHistory>,
) -> ApiResult<Json<JsonValue>> {
    let param = |name: &str| params.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
    let room_id = known_room(&services, &param("room_id").unwrap_or_default())?;
    let event_id = match param("event_id") {
        Some(id) => Some(ruma::EventId::parse(&id).map_err(|_| Error::invalid_param("Invalid event ID"))?),
        None => body.purge_up_to_event_id,
    };
    let before = match (event_id, body.purge_up_to_ts) {
        (Some(event_id), _) => services.rooms.purge_point_at_event(&room_id, &event_id)?,
        (None, Some(ts)) => services.rooms.purge_point_at_ts(&room_id, ts)?,
        (None, None) => {
            return Err(Error::bad_json("must specify purge_up_to_event_id or purge_up_to_ts").into());
        }
    };
    let purge = HistoryPurge { before, delete_local_events: body.delete_local_events };
    let purge_id = services.purge_room_history(room_id.clone(), purge);
    tracing::info!(%admin, %room_id, before, purge_id, "admin purges a room's history");
    Ok(Json(json!({"purge_id": purge_id})))
}

/// `GET /_synapse/admin/v1/purge_history_status/{purgeId}`.
pub async fn purge_history_status(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(purge_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let (status, error) = services
        .room_deletions
        .history_purge(&purge_id)
        .ok_or_else(|| Error::not_found("purge id not found"))?;
    let mut body = json!({"status": status});
    if let Some(error) = error {
        body["error"] = json!(error);
    }
    Ok(Json(body))
}
