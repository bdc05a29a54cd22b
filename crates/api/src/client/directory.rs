//! Room aliases and the public room directory.

use estuary_core::Error;
use ruma::{
    UInt,
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::{Visibility, aliases},
    },
    directory::PublicRoomsChunk,
    events::StateEventType,
};

use estuary_service::rooms::RoomList;

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn create(
    services: AppState,
    request: Ruma<create_alias::v3::Request>,
) -> ApiResult<create_alias::v3::Response> {
    let body = &request.body;
    services.appservices.check_alias_not_exclusive(&body.room_alias, request.appservice.as_deref())?;
    services.rooms.put_alias(&body.room_alias, &body.room_id, request.user()?)?;
    Ok(create_alias::v3::Response::new())
}

pub async fn get(
    services: AppState,
    request: Ruma<get_alias::v3::Request>,
) -> ApiResult<get_alias::v3::Response> {
    let alias = &request.body.room_alias;
    if alias.server_name() != services.config.server_name && services.config.allow_federation {
        let (room_id, servers) = services.federation.remote_alias(alias).await?;
        return Ok(get_alias::v3::Response::new(room_id, servers));
    }
    if services.rooms.resolve_alias(alias)?.is_none() {
        // A bridge may create the room on demand (its alias namespace).
        services.appservices.query_alias(alias).await;
    }
    let (room_id, servers) = services.federation.local_alias(alias)?;
    Ok(get_alias::v3::Response::new(room_id, servers))
}

pub async fn delete(
    services: AppState,
    request: Ruma<delete_alias::v3::Request>,
) -> ApiResult<delete_alias::v3::Response> {
    let user = request.user()?;
    let admin = services.accounts.account(user)?.is_some_and(|a| a.admin);
    let alias = &request.body.room_alias;
    let room_id = services.rooms.resolve_alias(alias)?;
    services.rooms.delete_alias(alias, user, admin)?;
    if let Some(room_id) = room_id {
        services.rooms.drop_from_canonical_alias(&room_id, alias, user).await?;
    }
    Ok(delete_alias::v3::Response::new())
}

pub async fn room_aliases(
    services: AppState,
    request: Ruma<aliases::v3::Request>,
) -> ApiResult<aliases::v3::Response> {
    let room_id = &request.body.room_id;
    services.rooms.require_readable(request.user()?, room_id)?;
    Ok(aliases::v3::Response::new(services.rooms.room_aliases(room_id)?))
}

pub(crate) fn chunks(page: &estuary_service::rooms::PublicRoomsPage) -> Result<Vec<PublicRoomsChunk>, Error> {
    page.chunk
        .iter()
        .map(|summary| serde_json::from_value(summary.clone()).map_err(Error::internal))
        .collect()
}

pub async fn public_rooms(
    services: AppState,
    request: Ruma<get_public_rooms::v3::Request>,
) -> ApiResult<get_public_rooms::v3::Response> {
    let body = &request.body;
    if let Some(server) = remote_directory(&services, body.server.as_deref()) {
        let filter = ruma::directory::Filter::new();
        let network = ruma::directory::RoomNetwork::Matrix;
        let answer = services
            .federation
            .remote_public_rooms(server, body.limit, body.since.clone(), filter, network)
            .await?;
        let mut response = get_public_rooms::v3::Response::new(answer.chunk);
        (response.next_batch, response.prev_batch) = (answer.next_batch, answer.prev_batch);
        response.total_room_count_estimate = answer.total_room_count_estimate;
        return Ok(response);
    }
    let limit = body.limit.map(|l| u64::from(l) as usize);
    let page = services.rooms.public_rooms(limit, body.since.as_deref(), None, &RoomList::Main)?;
    let mut response = get_public_rooms::v3::Response::new(chunks(&page)?);
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::new(page.total as u64);
    Ok(response)
}

pub async fn public_rooms_filtered(
    services: AppState,
    request: Ruma<get_public_rooms_filtered::v3::Request>,
) -> ApiResult<get_public_rooms_filtered::v3::Response> {
    let body = &request.body;
    if let Some(server) = remote_directory(&services, body.server.as_deref()) {
        let (filter, network) = (body.filter.clone(), body.room_network.clone());
        let answer = services
            .federation
            .remote_public_rooms(server, body.limit, body.since.clone(), filter, network)
            .await?;
        let mut response = get_public_rooms_filtered::v3::Response::new();
        (response.chunk, response.next_batch, response.prev_batch) =
            (answer.chunk, answer.next_batch, answer.prev_batch);
        response.total_room_count_estimate = answer.total_room_count_estimate;
        return Ok(response);
    }
    let limit = body.limit.map(|l| u64::from(l) as usize);
    let term = body.filter.generic_search_term.as_deref();
    let page =
        services.rooms.public_rooms(limit, body.since.as_deref(), term, &room_list(&body.room_network))?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = chunks(&page)?;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::new(page.total as u64);
    Ok(response)
}

/// The other server whose directory a client asks for (`server`), if any.
fn remote_directory<'a>(
    services: &AppState,
    server: Option<&'a ruma::ServerName>,
) -> Option<&'a ruma::ServerName> {
    server.filter(|s| *s != services.config.server_name && services.config.allow_federation)
}

/// The directory a `/publicRooms` search names: ours, a bridge network's
/// (`third_party_instance_id`), or all (`include_all_networks`).
fn room_list(network: &ruma::directory::RoomNetwork) -> RoomList {
    match network {
        ruma::directory::RoomNetwork::All => RoomList::All,
        ruma::directory::RoomNetwork::ThirdParty(instance) => RoomList::Network(instance.clone()),
        _ => RoomList::Main,
    }
}

/// `PUT` and `DELETE /directory/list/appservice/{networkId}/{roomId}`: an
/// appservice publishes a room in its network's directory, or takes it out.
pub async fn set_network_visibility(
    axum::extract::State(services): axum::extract::State<AppState>,
    request: axum::extract::Request,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let (parts, body) = request.into_parts();
    let token = crate::ruma_wrapper::access_token(&parts).ok_or_else(Error::missing_token)?;
    let appservice = services.appservices.by_token(&token).ok_or_else(|| Error::unknown_token(false))?;
    let segments: Vec<&str> = parts.uri.path().rsplitn(3, '/').collect();
    let (Some(room_id), Some(network)) = (segments.first(), segments.get(1)) else {
        return Err(Error::unrecognized(404, "Unknown path").into());
    };
    let room_id = crate::ruma_wrapper::percent_decode(room_id);
    let room_id = ruma::RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let public = match parts.method {
        http::Method::DELETE => false,
        _ => {
            let bytes =
                axum::body::to_bytes(body, 65_536).await.map_err(|_| Error::too_large("Body too large"))?;
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            body["visibility"] == "public"
        }
    };
    let instance = format!("{}|{}", appservice.id(), crate::ruma_wrapper::percent_decode(network));
    services.rooms.set_network_published(&instance, &room_id, public)?;
    Ok(axum::Json(serde_json::json!({})))
}

pub async fn get_visibility(
    services: AppState,
    request: Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<get_room_visibility::v3::Response> {
    let room_id = &request.body.room_id;
    services.rooms.require_room(room_id)?;
    let visibility =
        if services.rooms.is_public(room_id)? { Visibility::Public } else { Visibility::Private };
    Ok(get_room_visibility::v3::Response::new(visibility))
}

pub async fn set_visibility(
    services: AppState,
    request: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<set_room_visibility::v3::Response> {
    let user = request.user()?;
    let room_id = &request.body.room_id;
    let rooms = &services.rooms;
    let room = rooms.require_room(room_id)?;
    let state = rooms.current_state(&room)?;
    let allowed = rooms.is_joined(user, room_id)?
        && rooms
            .power_levels(&state, &room.room_version)?
            .user_can_send_state(user, StateEventType::RoomCanonicalAlias);
    if !allowed {
        return Err(Error::forbidden("You may not change this room's directory visibility").into());
    }
    rooms.set_public(room_id, request.body.visibility == Visibility::Public)?;
    Ok(set_room_visibility::v3::Response::new())
}
