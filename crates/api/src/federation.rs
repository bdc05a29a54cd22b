//! Server-Server API handlers: signing keys, joins and leaves, transactions,
//! and room history for other servers. Each parses, calls the federation
//! service with the authenticated origin, and shapes ruma's response.

use axum::Router;
use estuary_core::time::now_millis;
use estuary_service::federation::KeyCriteria;
use estuary_service::federation::raw_pdus;
use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::{
        authenticated_media::{Content, ContentMetadata, FileOrLocation, get_content, get_content_thumbnail},
        authorization::get_event_authorization,
        backfill::get_backfill,
        device::get_devices,
        directory::{get_public_rooms, get_public_rooms_filtered},
        discovery::{
            get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version,
        },
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
        keys::{claim_keys, get_keys},
        membership::{
            create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
            prepare_knock_event, prepare_leave_event,
        },
        query::{get_profile_information, get_room_information},
        transactions::send_transaction_message,
    },
    serde::Raw,
};
use serde_json::value::to_raw_value;

use crate::{AppState, error::ApiResult, router::RumaRouter, ruma_wrapper::Ruma};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(server_keys)
        .ruma(remote_server_keys)
        .ruma(remote_server_keys_batch)
        .ruma(version)
        .ruma(make_join)
        .ruma(send_join)
        .ruma(make_leave)
        .ruma(make_knock)
        .ruma(send_knock)
        .ruma(send_leave)
        .ruma(invite)
        .ruma_raw::<create_invite::v1::Request, _, _>(invite_v1)
        .ruma(user_keys_query)
        .ruma(user_keys_claim)
        .ruma(user_devices)
        .ruma(media_download)
        .ruma(media_thumbnail)
        .ruma(query_profile)
        .ruma(query_directory)
        .ruma(send_transaction)
        .ruma(event)
        .ruma(state)
        .ruma(state_ids)
        .ruma(backfill)
        .ruma(missing_events)
        .ruma(event_auth)
        .ruma(timestamp_to_event)
        .ruma(public_rooms)
        .ruma(public_rooms_filtered)
        .ruma(hierarchy)
        .ruma_raw::<ruma::api::federation::openid::get_openid_userinfo::v1::Request, _, _>(openid_userinfo)
}

/// `GET /openid/userinfo`: whose OpenID token this is (for identity and
/// integration servers; no server signature). A missing token is 401, as
/// a wrong one is, not a parse error.
async fn openid_userinfo(
    axum::extract::State(s): axum::extract::State<AppState>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let token = query.get("access_token").ok_or_else(estuary_core::Error::missing_token)?;
    let user = s.accounts.openid_user(token)?;
    Ok(axum::Json(serde_json::json!({"sub": user})))
}

/// `GET /hierarchy/{roomId}`: a room of a space and its children, as
/// the asking server may see them.
async fn hierarchy(
    s: AppState,
    r: Ruma<ruma::api::federation::space::get_hierarchy::v1::Request>,
) -> ApiResult<ruma::api::federation::space::get_hierarchy::v1::Response> {
    use ruma::api::federation::space::get_hierarchy::v1::Response;
    let (room, children, inaccessible) =
        s.federation.serve_hierarchy(r.origin()?, &r.body.room_id, r.body.suggested_only)?;
    fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, estuary_core::Error> {
        serde_json::from_value(value).map_err(estuary_core::Error::internal)
    }
    let mut response = Response::new(parse(room)?);
    response.children = children.into_iter().map(parse).collect::<Result<_, _>>()?;
    response.inaccessible_children = inaccessible;
    Ok(response)
}

fn now() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch::now()
}

fn raw<T: serde::Serialize>(value: &T) -> ApiResult<Box<serde_json::value::RawValue>> {
    Ok(to_raw_value(value).map_err(estuary_core::Error::internal)?)
}

async fn server_keys(
    s: AppState,
    _: Ruma<get_server_keys::v2::Request>,
) -> ApiResult<get_server_keys::v2::Response> {
    Ok(get_server_keys::v2::Response::new(Raw::from_json(raw(&s.federation.keys.own_keys())?)))
}

/// `GET /_matrix/key/v2/query/{serverName}/{keyId}` (deprecated): the
/// notary's answer for that key of the server.
pub(crate) async fn remote_server_keys_by_id(
    axum::extract::State(s): axum::extract::State<AppState>,
    axum::extract::Path((server, key_id)): axum::extract::Path<(String, String)>,
) -> axum::Json<serde_json::Value> {
    let keys = match <&ruma::ServerName>::try_from(server.as_str()) {
        Ok(server) => {
            let criteria = KeyCriteria { key_ids: vec![key_id], valid_until: now_millis() };
            notary_answer(&s, server, &criteria).await
        }
        Err(_) => Vec::new(),
    };
    axum::Json(serde_json::json!({ "server_keys": keys }))
}

/// `GET /_matrix/key/v2/server/{keyId}` (deprecated; servers still ask it).
pub(crate) async fn server_keys_by_id(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> axum::Json<ruma::CanonicalJsonObject> {
    axum::Json(s.federation.keys.own_keys())
}

/// Notary: the key responses of a server that answer `criteria` (fetched
/// if we hold none valid long enough), countersigned by us.
async fn notary_answer(
    s: &AppState,
    server: &ruma::ServerName,
    criteria: &KeyCriteria,
) -> Vec<Raw<ruma::api::federation::discovery::ServerSigningKeys>> {
    let responses = s.federation.keys.notary_responses(&s.federation.client, server, criteria).await;
    let countersign = |response| {
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(response).ok()?;
        s.federation.keys.sign(&mut object);
        to_raw_value(&object).ok().map(Raw::from_json)
    };
    responses.into_iter().filter_map(countersign).collect()
}

async fn remote_server_keys(
    s: AppState,
    r: Ruma<get_remote_server_keys::v2::Request>,
) -> ApiResult<get_remote_server_keys::v2::Response> {
    let valid_until = u64::from(r.body.minimum_valid_until_ts.get());
    let criteria = KeyCriteria { key_ids: Vec::new(), valid_until };
    Ok(get_remote_server_keys::v2::Response::new(notary_answer(&s, &r.body.server_name, &criteria).await))
}

/// Servers answered per notary query (`POST /_matrix/key/v2/query`).
const MAX_NOTARY_SERVERS: usize = 20;

/// `POST /_matrix/key/v2/query`: for each server, the keys asked for
/// (all when none are named), valid until the time asked (now if unsaid).
async fn remote_server_keys_batch(
    s: AppState,
    r: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> ApiResult<get_remote_server_keys_batch::v2::Response> {
    let mut keys = Vec::new();
    // Each server named may cost a fetch: a bounded number per query.
    for (server, wanted) in r.body.server_keys.iter().take(MAX_NOTARY_SERVERS) {
        let valid_until = wanted
            .values()
            .filter_map(|c| c.minimum_valid_until_ts)
            .map(|ts| u64::from(ts.get()))
            .max()
            .unwrap_or_else(now_millis);
        let key_ids = wanted.keys().map(|id| id.to_string()).collect();
        keys.extend(notary_answer(&s, server, &KeyCriteria { key_ids, valid_until }).await);
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(keys))
}

async fn version(
    _: AppState,
    _: Ruma<get_server_version::v1::Request>,
) -> ApiResult<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Estuary".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}

async fn make_join(
    s: AppState,
    r: Ruma<prepare_join_event::v1::Request>,
) -> ApiResult<prepare_join_event::v1::Response> {
    let origin = r.origin()?;
    let (version, template) =
        s.federation.make_join(origin, &r.body.room_id, &r.body.user_id, &r.body.ver)?;
    let mut response = prepare_join_event::v1::Response::new(raw(&template)?);
    response.room_version = Some(version);
    Ok(response)
}

async fn send_join(
    s: AppState,
    r: Ruma<create_join_event::v2::Request>,
) -> ApiResult<create_join_event::v2::Response> {
    let origin = r.origin()?;
    let body = &r.body;
    let pdu = s.federation.send_membership(origin, &body.room_id, &body.event_id, &body.pdu, "join").await?;
    let (state, auth_chain) = s.federation.state_at(origin, &body.room_id, &pdu.event_id)?;
    let mut room_state = create_join_event::v2::RoomState::new();
    room_state.state = raw_pdus(&state);
    room_state.auth_chain = raw_pdus(&auth_chain);
    room_state.event = raw_pdus(std::slice::from_ref(&pdu)).pop();
    Ok(create_join_event::v2::Response::new(room_state))
}

async fn make_leave(
    s: AppState,
    r: Ruma<prepare_leave_event::v1::Request>,
) -> ApiResult<prepare_leave_event::v1::Response> {
    let origin = r.origin()?;
    let (version, template) = s.federation.make_leave(origin, &r.body.room_id, &r.body.user_id)?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), raw(&template)?))
}

async fn send_leave(
    s: AppState,
    r: Ruma<create_leave_event::v2::Request>,
) -> ApiResult<create_leave_event::v2::Response> {
    let origin = r.origin()?;
    let body = &r.body;
    s.federation.send_membership(origin, &body.room_id, &body.event_id, &body.pdu, "leave").await?;
    Ok(create_leave_event::v2::Response::new())
}

async fn make_knock(
    s: AppState,
    r: Ruma<prepare_knock_event::v1::Request>,
) -> ApiResult<prepare_knock_event::v1::Response> {
    let (version, template) =
        s.federation.make_knock(r.origin()?, &r.body.room_id, &r.body.user_id, &r.body.ver)?;
    Ok(prepare_knock_event::v1::Response::new(version, raw(&template)?))
}

async fn send_knock(
    s: AppState,
    r: Ruma<create_knock_event::v1::Request>,
) -> ApiResult<create_knock_event::v1::Response> {
    let body = &r.body;
    let state = s.federation.send_knock(r.origin()?, &body.room_id, &body.event_id, &body.pdu).await?;
    let state = estuary_service::federation::raw_pdus(&state)
        .into_iter()
        .map(ruma::api::federation::membership::RawStrippedState::Pdu)
        .collect();
    Ok(create_knock_event::v1::Response::new(state))
}

async fn invite(s: AppState, r: Ruma<create_invite::v2::Request>) -> ApiResult<create_invite::v2::Response> {
    let origin = r.origin()?;
    let body = &r.body;
    let stripped = estuary_service::federation::stripped_events(&body.invite_room_state);
    let signed = s
        .federation
        .receive_invite(origin, &body.room_id, &body.event_id, &body.room_version, &body.event, stripped)
        .await?;
    Ok(create_invite::v2::Response::new(raw(&signed)?))
}

/// `PUT /v1/invite`: the body is the invite itself, of a room of version 1
/// or 2 (the spec: a v1 invite implies one of them; their events are
/// hashed, signed and identified alike).
async fn invite_v1(
    axum::extract::State(s): axum::extract::State<AppState>,
    axum::extract::Path((room_id, event_id)): axum::extract::Path<(String, String)>,
    request: crate::ruma_wrapper::SignedRequest,
) -> ApiResult<crate::ruma_wrapper::RumaResponse<create_invite::v1::Response>> {
    use estuary_core::Error;
    let bad = |e: &dyn std::fmt::Display| Error::bad_json(format!("Invalid invite: {e}"));
    let room_id = ruma::RoomId::parse(&room_id).map_err(|e| Error::invalid_param(e.to_string()))?;
    let event_id = ruma::EventId::parse(&event_id).map_err(|e| Error::invalid_param(e.to_string()))?;
    let event: Box<serde_json::value::RawValue> =
        serde_json::from_slice(&request.body).map_err(|e| bad(&e))?;
    // The invite room state rides in the event's `unsigned`.
    #[derive(serde::Deserialize, Default)]
    struct Unsigned {
        #[serde(default)]
        invite_room_state: Vec<ruma::api::federation::membership::RawStrippedState>,
    }
    #[derive(serde::Deserialize)]
    struct Invite {
        #[serde(default)]
        unsigned: Unsigned,
    }
    let invite: Invite = serde_json::from_str(event.get()).map_err(|e| bad(&e))?;
    let stripped = estuary_service::federation::stripped_events(&invite.unsigned.invite_room_state);
    let version = ruma::RoomVersionId::V1;
    let signed =
        s.federation.receive_invite(&request.origin, &room_id, &event_id, &version, &event, stripped).await?;
    // The spec's answer is `[200, {"event": …}]`; ruma's type writes only
    // the `[200, …]` around what it is given, so the container is ours.
    let answer = raw(&serde_json::json!({ "event": signed }))?;
    Ok(crate::ruma_wrapper::RumaResponse(create_invite::v1::Response::new(answer)))
}

/// A field of a JSON answer as a ruma type (an empty one when absent).
fn field<T: serde::de::DeserializeOwned + Default>(value: &serde_json::Value, name: &str) -> T {
    serde_json::from_value(value[name].clone()).unwrap_or_default()
}

async fn user_keys_query(s: AppState, r: Ruma<get_keys::v1::Request>) -> ApiResult<get_keys::v1::Response> {
    let keys = s.federation.serve_keys_query(r.origin()?, r.body.device_keys.clone())?;
    let mut response = get_keys::v1::Response::new(field(&keys, "device_keys"));
    response.master_keys = field(&keys, "master_keys");
    response.self_signing_keys = field(&keys, "self_signing_keys");
    Ok(response)
}

async fn user_keys_claim(
    s: AppState,
    r: Ruma<claim_keys::v1::Request>,
) -> ApiResult<claim_keys::v1::Response> {
    r.origin()?;
    let claimed = s.federation.serve_keys_claim(r.body.one_time_keys.clone())?;
    Ok(claim_keys::v1::Response::new(field(&claimed, "one_time_keys")))
}

async fn user_devices(
    s: AppState,
    r: Ruma<get_devices::v1::Request>,
) -> ApiResult<get_devices::v1::Response> {
    r.origin()?;
    let user_id = &r.body.user_id;
    let (stream_id, keys) = s.federation.serve_devices(user_id)?;
    let mut response = get_devices::v1::Response::new(user_id.clone(), ruma::UInt::new_saturating(stream_id));
    let devices = keys["device_keys"][user_id.as_str()].as_object().cloned().unwrap_or_default();
    for (device_id, device_keys) in devices {
        let Ok(raw) = serde_json::from_value(device_keys.clone()) else { continue };
        let mut device = get_devices::v1::UserDevice::new(device_id.into(), raw);
        device.device_display_name =
            device_keys["unsigned"]["device_display_name"].as_str().map(str::to_owned);
        response.devices.push(device);
    }
    response.master_key = serde_json::from_value(keys["master_keys"][user_id.as_str()].clone()).ok();
    response.self_signing_key =
        serde_json::from_value(keys["self_signing_keys"][user_id.as_str()].clone()).ok();
    Ok(response)
}

/// A file's bytes as a multipart media answer.
async fn media_content(
    path: &std::path::Path,
    content_type: &str,
    filename: Option<String>,
) -> ApiResult<FileOrLocation> {
    use ruma::http_headers::{ContentDisposition, ContentDispositionType};
    let file = tokio::fs::read(path).await.map_err(estuary_core::Error::internal)?;
    let disposition = ContentDisposition::new(ContentDispositionType::Attachment).with_filename(filename);
    Ok(FileOrLocation::File(Content::new(file, content_type.to_owned(), disposition)))
}

async fn media_download(
    s: AppState,
    r: Ruma<get_content::v1::Request>,
) -> ApiResult<get_content::v1::Response> {
    r.origin()?;
    let file = s.media.file(s.config.server_name.as_str(), &r.body.media_id)?;
    let content_type =
        file.record.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    let content = media_content(&file.path, &content_type, file.record.filename.clone()).await?;
    Ok(get_content::v1::Response::new(ContentMetadata::new(), content))
}

async fn media_thumbnail(
    s: AppState,
    r: Ruma<get_content_thumbnail::v1::Request>,
) -> ApiResult<get_content_thumbnail::v1::Response> {
    r.origin()?;
    let body = &r.body;
    let spec = crate::client::media::thumbnail_spec(body.width, body.height, body.method.as_ref())?;
    let (path, content_type) = s.media.thumbnail(s.config.server_name.as_str(), &body.media_id, spec).await?;
    let content = media_content(&path, content_type, None).await?;
    Ok(get_content_thumbnail::v1::Response::new(ContentMetadata::new(), content))
}

async fn query_profile(
    s: AppState,
    r: Ruma<get_profile_information::v1::Request>,
) -> ApiResult<get_profile_information::v1::Response> {
    let user_id = &r.body.user_id;
    if user_id.server_name() != s.config.server_name {
        return Err(estuary_core::Error::not_found("The user is not on this server").into());
    }
    let profile = s.profile.get_profile(user_id)?;
    let mut response = get_profile_information::v1::Response::new();
    for (field, value) in profile.iter() {
        if r.body.field.as_ref().is_none_or(|wanted| wanted.as_str() == field) {
            response.data.set(field.to_owned(), value.clone());
        }
    }
    Ok(response)
}

async fn query_directory(
    s: AppState,
    r: Ruma<get_room_information::v1::Request>,
) -> ApiResult<get_room_information::v1::Response> {
    let (room_id, servers) = s.federation.local_alias(&r.body.room_alias)?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}

async fn send_transaction(
    s: AppState,
    r: Ruma<send_transaction_message::v1::Request>,
) -> ApiResult<send_transaction_message::v1::Response> {
    let origin = r.origin()?;
    if r.body.origin != origin {
        return Err(
            estuary_core::Error::forbidden("The transaction's origin is not the signing server").into()
        );
    }
    // A malformed transaction, not an oversized body: 400, as Synapse answers.
    if r.body.pdus.len() > 50 || r.body.edus.len() > 100 {
        return Err(estuary_core::Error::bad_json("A transaction holds at most 50 PDUs and 100 EDUs").into());
    }
    let results = s.federation.receive_transaction(origin, &r.body.pdus, &r.body.edus).await;
    Ok(send_transaction_message::v1::Response::new(results))
}

async fn event(s: AppState, r: Ruma<get_event::v1::Request>) -> ApiResult<get_event::v1::Response> {
    let pdu = s.federation.event(r.origin()?, &r.body.event_id)?;
    let json =
        raw_pdus(std::slice::from_ref(&pdu)).pop().ok_or_else(|| estuary_core::Error::internal("event"))?;
    Ok(get_event::v1::Response::new(s.config.server_name.clone(), now(), json))
}

async fn state(s: AppState, r: Ruma<get_room_state::v1::Request>) -> ApiResult<get_room_state::v1::Response> {
    let (state, auth_chain) = s.federation.state_at(r.origin()?, &r.body.room_id, &r.body.event_id)?;
    Ok(get_room_state::v1::Response::new(raw_pdus(&auth_chain), raw_pdus(&state)))
}

async fn state_ids(
    s: AppState,
    r: Ruma<get_room_state_ids::v1::Request>,
) -> ApiResult<get_room_state_ids::v1::Response> {
    let (state, auth_chain) = s.federation.state_at(r.origin()?, &r.body.room_id, &r.body.event_id)?;
    let ids = |pdus: &[estuary_events::Pdu]| pdus.iter().map(|p| p.event_id.clone()).collect();
    Ok(get_room_state_ids::v1::Response::new(ids(&auth_chain), ids(&state)))
}

async fn backfill(s: AppState, r: Ruma<get_backfill::v1::Request>) -> ApiResult<get_backfill::v1::Response> {
    let limit = u64::from(r.body.limit) as usize;
    let pdus = s.federation.backfill(r.origin()?, &r.body.room_id, &r.body.v, limit)?;
    Ok(get_backfill::v1::Response::new(s.config.server_name.clone(), now(), raw_pdus(&pdus)))
}

async fn missing_events(
    s: AppState,
    r: Ruma<get_missing_events::v1::Request>,
) -> ApiResult<get_missing_events::v1::Response> {
    let body = &r.body;
    let limit = u64::from(body.limit) as usize;
    let pdus = s.federation.missing_events(
        r.origin()?,
        &body.room_id,
        &body.earliest_events,
        &body.latest_events,
        limit,
    )?;
    Ok(get_missing_events::v1::Response::new(raw_pdus(&pdus)))
}

/// `/event_auth`: the auth chain of an event, for a server in its room.
async fn event_auth(
    s: AppState,
    r: Ruma<get_event_authorization::v1::Request>,
) -> ApiResult<get_event_authorization::v1::Response> {
    let chain = s.federation.event_auth_chain(r.origin()?, &r.body.room_id, &r.body.event_id)?;
    Ok(get_event_authorization::v1::Response::new(raw_pdus(&chain)))
}

/// Our published rooms, for other servers' room directories.
async fn public_rooms(
    s: AppState,
    r: Ruma<get_public_rooms::v1::Request>,
) -> ApiResult<get_public_rooms::v1::Response> {
    r.origin()?;
    let limit = r.body.limit.map(|l| u64::from(l) as usize);
    let page = s.rooms.public_rooms(
        limit,
        r.body.since.as_deref(),
        None,
        &estuary_service::rooms::RoomList::Main,
    )?;
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = crate::client::directory::chunks(&page)?;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = ruma::UInt::new(page.total as u64);
    Ok(response)
}

async fn public_rooms_filtered(
    s: AppState,
    r: Ruma<get_public_rooms_filtered::v1::Request>,
) -> ApiResult<get_public_rooms_filtered::v1::Response> {
    r.origin()?;
    let body = &r.body;
    let limit = body.limit.map(|l| u64::from(l) as usize);
    let page = s.rooms.public_rooms(
        limit,
        body.since.as_deref(),
        body.filter.generic_search_term.as_deref(),
        &estuary_service::rooms::RoomList::Main,
    )?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = crate::client::directory::chunks(&page)?;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = ruma::UInt::new(page.total as u64);
    Ok(response)
}

/// `GET /timestamp_to_event/{roomId}`: the event closest to a time.
async fn timestamp_to_event(
    s: AppState,
    r: Ruma<ruma::api::federation::event::get_event_by_timestamp::v1::Request>,
) -> ApiResult<ruma::api::federation::event::get_event_by_timestamp::v1::Response> {
    use estuary_service::rooms::Direction;
    let body = &r.body;
    let dir = match body.dir {
        ruma::api::Direction::Forward => Direction::Forward,
        _ => Direction::Backward,
    };
    let (event_id, ts) =
        s.federation.event_at_timestamp(r.origin()?, &body.room_id, u64::from(body.ts.0), dir)?;
    let ts = ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new(ts).unwrap_or_default());
    Ok(ruma::api::federation::event::get_event_by_timestamp::v1::Response::new(event_id, ts))
}
