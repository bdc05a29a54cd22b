//! Peeking and the legacy event stream: `/rooms/{roomId}/initialSync`,
//! `/events` (one room with `room_id`, else everything of the user) and the
//! global `/initialSync`.

use std::{collections::HashMap, time::Duration};

use axum::{
    Json,
    extract::{Query, State},
};
use estuary_core::Error;
use estuary_service::rooms::parse_token;
use ruma::{RoomId, api::client::peeking::get_current_state};
use serde_json::Value as JsonValue;

use crate::{
    AppState,
    error::ApiResult,
    ruma_wrapper::{AuthedDevice, AuthedUser, Ruma},
};

/// Messages in an `initialSync` answer without `limit`.
const INITIAL_SYNC_MESSAGES: usize = 20;
/// `/events` without `timeout` answers at once (the spec gives no default;
/// clients that long-poll send one).
const DEFAULT_EVENTS_TIMEOUT: Duration = Duration::ZERO;

pub async fn initial_sync(
    services: AppState,
    request: Ruma<get_current_state::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let limit =
        number(request.query_param("limit").as_deref(), "limit")?.unwrap_or(INITIAL_SYNC_MESSAGES as u64);
    let response = services.peek.initial_sync(request.user()?, &request.body.room_id, limit as usize)?;
    Ok(Json(response))
}

/// `GET /events`: with `room_id`, new events of that room (peeking);
/// without, the user's whole legacy event stream (not for guests).
pub async fn events(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<JsonValue>> {
    let param = |name: &str| query.get(name).map(String::as_str).filter(|v| !v.is_empty());
    let from = param("from").map(parse_token).transpose()?;
    let timeout = number(param("timeout"), "timeout")?.map_or(DEFAULT_EVENTS_TIMEOUT, Duration::from_millis);
    let limit = number(param("limit"), "limit")?.map(|l| l as usize);
    if let Some(room_id) = param("room_id") {
        let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room_id"))?;
        return Ok(Json(services.peek.events(&user, &room_id, from, timeout).await?));
    }
    if services.accounts.account(&user)?.is_some_and(|a| a.guest) {
        return Err(Error::invalid_param("Guest users must give a room_id").into());
    }
    Ok(Json(services.event_stream.events(&user, from, timeout, limit).await?))
}

/// `GET /initialSync` (`limit` messages per room, `archived` for left rooms).
pub async fn global_initial_sync(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<JsonValue>> {
    let limit =
        number(query.get("limit").map(String::as_str), "limit")?.unwrap_or(INITIAL_SYNC_MESSAGES as u64);
    let archived = query.get("archived").is_some_and(|a| a == "true");
    Ok(Json(services.event_stream.initial_sync(&user, limit as usize, archived)?))
}

/// A whole-number query parameter; 400 `M_INVALID_PARAM` when it is not one.
fn number(value: Option<&str>, name: &str) -> Result<Option<u64>, Error> {
    value
        .map(|v| v.parse::<u64>().map_err(|_| Error::invalid_param(format!("{name} must be a whole number"))))
        .transpose()
}

/// `POST /peek/{roomIdOrAlias}` (MSC2753): this device follows a
/// world-readable room in its `/sync` without joining.
pub async fn peek_by_device(
    State(services): State<AppState>,
    AuthedDevice(user, device): AuthedDevice,
    axum::extract::Path(room): axum::extract::Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room = ruma::OwnedRoomOrAliasId::try_from(room)
        .map_err(|e| Error::invalid_param(format!("Invalid room ID or alias: {e}")))?;
    let room_id = super::membership::resolve(&services, &room).await?;
    services.rooms.peek(&user, &device, &room_id)?;
    Ok(Json(serde_json::json!({"room_id": room_id})))
}

/// `POST /unpeek/{roomId}`: stop following the room on this device.
pub async fn unpeek(
    State(services): State<AppState>,
    AuthedDevice(user, device): AuthedDevice,
    axum::extract::Path(room_id): axum::extract::Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id =
        RoomId::parse(room_id).map_err(|e| Error::invalid_param(format!("Invalid room ID: {e}")))?;
    services.rooms.unpeek(&user, &device, &room_id)?;
    Ok(Json(serde_json::json!({})))
}
