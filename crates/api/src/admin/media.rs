//! Media admin endpoints.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use estuary_core::Error;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use estuary_service::media::{BulkDelete, media_view};

use super::{
    extract::{AdminQuery, Dir, ServerAdmin, local_user},
    listing::{page_body, sort_rows},
};
use crate::{AppState, error::ApiResult};

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`.
pub async fn delete_media(
    State(services): State<AppState>,
    ServerAdmin(user): ServerAdmin,
    Path((server_name, media_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    if !services.media.delete(&server_name, &media_id)? {
        return Err(Error::not_found("Media not found").into());
    }
    tracing::info!(%user, %server_name, %media_id, "admin deleted media");
    Ok(Json(json!({"deleted_media": [media_id], "total": 1})))
}

#[derive(Deserialize)]
pub struct PurgeQuery {
    before_ts: u64,
}

/// `POST /_synapse/admin/v1/purge_media_cache?before_ts=<ms>`: remote media only.
pub async fn purge_media_cache(
    State(services): State<AppState>,
    ServerAdmin(user): ServerAdmin,
    Query(query): Query<PurgeQuery>,
) -> ApiResult<Json<JsonValue>> {
    let deleted = services.media.purge_remote(query.before_ts)?;
    tracing::info!(%user, before_ts = query.before_ts, deleted, "admin purged the remote media cache");
    Ok(Json(json!({"deleted": deleted})))
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`: served to no one.
pub async fn quarantine(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path((server_name, media_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    if !services.media.set_quarantined(&server_name, &media_id, Some(&admin))? {
        return Err(Error::not_found("Unknown media").into());
    }
    tracing::info!(%admin, %server_name, %media_id, "admin quarantined media");
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`.
pub async fn unquarantine(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path((server_name, media_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    if !services.media.set_quarantined(&server_name, &media_id, None)? {
        return Err(Error::not_found("Unknown media").into());
    }
    tracing::info!(%admin, %server_name, %media_id, "admin released media from quarantine");
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine` (and the older
/// `/quarantine_media/{roomId}`): everything the room's events name.
pub async fn quarantine_room(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = ruma::RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let (local, remote) = services.rooms.media_in_room(&room_id)?;
    let uris: Vec<String> = local.into_iter().chain(remote).collect();
    let count = services.media.quarantine_uris(&uris, &admin)?;
    tracing::info!(%admin, %room_id, count, "admin quarantined a room's media");
    Ok(Json(json!({"num_quarantined": count})))
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`.
pub async fn quarantine_user(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = super::extract::user_id(&user)?;
    let count = services.media.quarantine_uploads_of(&user, &admin)?;
    tracing::info!(%admin, target = %user, count, "admin quarantined a user's media");
    Ok(Json(json!({"num_quarantined": count})))
}

/// `POST /_synapse/admin/v1/media/protect/{mediaId}` and `/unprotect/{mediaId}`.
pub async fn protect(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    uri: axum::http::Uri,
    Path(media_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let protected = !uri.path().contains("/unprotect/");
    if !services.media.set_protected(&media_id, protected)? {
        return Err(Error::not_found("Unknown media").into());
    }
    tracing::info!(%admin, %media_id, protected, "admin changed media protection");
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/room/{roomId}/media`.
pub async fn room_media(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(room_id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let room_id = ruma::RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let (local, remote) = services.rooms.media_in_room(&room_id)?;
    Ok(Json(json!({"total": local.len() + remote.len(), "local": local, "remote": remote})))
}

#[derive(Deserialize)]
pub struct BulkDeleteQuery {
    before_ts: u64,
    #[serde(default)]
    size_gt: u64,
    #[serde(default = "yes")]
    keep_profiles: bool,
}

fn yes() -> bool {
    true
}

/// Timestamps below this are seconds, not ms: an admin's likely mistake.
const SMALLEST_MS_TIMESTAMP: u64 = 30_000_000_000;

/// `POST /_synapse/admin/v1/media/delete?before_ts=&size_gt=&keep_profiles=`
/// (and the older form naming this server): local media created before
/// `before_ts`, larger than `size_gt`, avatars kept unless told otherwise.
pub async fn delete_older(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    server_name: Option<Path<String>>,
    AdminQuery(query): AdminQuery<BulkDeleteQuery>,
) -> ApiResult<Json<JsonValue>> {
    if let Some(Path(server_name)) = server_name
        && server_name != services.config.server_name.as_str()
    {
        return Err(Error::invalid_param("Can only delete local media").into());
    }
    if query.before_ts < SMALLEST_MS_TIMESTAMP {
        return Err(Error::invalid_param("before_ts is in ms, and this looks like seconds").into());
    }
    let keep = if query.keep_profiles { services.profile.avatar_urls()? } else { Default::default() };
    let filter = BulkDelete { before_ts: query.before_ts, size_gt: query.size_gt, keep };
    let media = services.clone();
    let deleted = tokio::task::spawn_blocking(move || media.media.delete_local(&filter))
        .await
        .map_err(Error::internal)??;
    tracing::info!(%admin, before_ts = query.before_ts, count = deleted.len(), "admin deleted old media");
    Ok(Json(json!({"total": deleted.len(), "deleted_media": deleted})))
}

#[derive(Deserialize)]
pub struct UserMediaQuery {
    #[serde(default)]
    from: usize,
    #[serde(default = "super::extract::default_limit")]
    limit: usize,
    order_by: Option<String>,
    dir: Option<Dir>,
}

const MEDIA_ORDERS: &[&str] = &[
    "media_id",
    "upload_name",
    "created_ts",
    "last_access_ts",
    "media_length",
    "media_type",
    "quarantined_by",
    "safe_from_quarantine",
];

/// A user's uploads, ordered and paged as Synapse does: newest first when
/// neither `order_by` nor `dir` is given.
fn user_media_page(
    services: &AppState,
    user: &ruma::UserId,
    query: &UserMediaQuery,
) -> Result<(Vec<JsonValue>, usize), Error> {
    let order_by = query.order_by.as_deref().unwrap_or("created_ts");
    if !MEDIA_ORDERS.contains(&order_by) {
        return Err(Error::invalid_param(format!(
            "Query parameter 'order_by' must be one of {MEDIA_ORDERS:?}"
        )));
    }
    let backwards = match (&query.order_by, query.dir) {
        (None, None) => true,
        (_, dir) => dir == Some(Dir::Backwards),
    };
    let mut media: Vec<JsonValue> =
        services.media.uploads_of(user)?.iter().map(|(id, record)| media_view(id, record)).collect();
    sort_rows(&mut media, order_by, backwards, "media_id");
    let total = media.len();
    Ok((media.into_iter().skip(query.from).take(query.limit).collect(), total))
}

/// `GET /_synapse/admin/v1/users/{userId}/media`.
pub async fn user_media(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
    AdminQuery(query): AdminQuery<UserMediaQuery>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let (page, total) = user_media_page(&services, &user, &query)?;
    let mut body = json!({"total": total});
    if query.from + page.len() < total {
        body["next_token"] = json!(query.from + page.len());
    }
    body["media"] = JsonValue::Array(page);
    Ok(Json(body))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/media`: the page the same
/// query would list.
pub async fn delete_user_media(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminQuery(query): AdminQuery<UserMediaQuery>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let (page, _) = user_media_page(&services, &user, &query)?;
    let server_name = services.config.server_name.to_string();
    let mut deleted = Vec::new();
    for media_id in page.iter().filter_map(|m| m["media_id"].as_str()) {
        if services.media.delete(&server_name, media_id)? {
            deleted.push(media_id.to_owned());
        }
    }
    tracing::info!(%admin, target = %user, count = deleted.len(), "admin deleted a user's media");
    Ok(Json(json!({"total": deleted.len(), "deleted_media": deleted})))
}

#[derive(Deserialize)]
pub struct StatisticsQuery {
    #[serde(default)]
    from: usize,
    #[serde(default = "super::extract::default_limit")]
    limit: usize,
    order_by: Option<String>,
    #[serde(default)]
    dir: Dir,
    search_term: Option<String>,
}

/// `GET /_synapse/admin/v1/statistics/users/media`: uploads per user.
pub async fn statistics(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    AdminQuery(query): AdminQuery<StatisticsQuery>,
) -> ApiResult<Json<JsonValue>> {
    const ORDERS: &[&str] = &["user_id", "displayname", "media_length", "media_count"];
    let order_by = query.order_by.as_deref().unwrap_or("user_id");
    if !ORDERS.contains(&order_by) {
        return Err(
            Error::invalid_param(format!("Query parameter 'order_by' must be one of {ORDERS:?}")).into()
        );
    }
    if query.search_term.as_deref() == Some("") {
        return Err(Error::invalid_param("search_term cannot be empty").into());
    }
    let mut users = Vec::new();
    for (user, (count, bytes)) in services.media.uploads_per_user()? {
        let displayname =
            services.profile.field_string(&user, &ruma::profile::ProfileFieldName::DisplayName)?;
        if let Some(term) = &query.search_term
            && !user.localpart().contains(term.as_str())
            && !displayname.as_deref().is_some_and(|name| name.contains(term.as_str()))
        {
            continue;
        }
        users.push(
            json!({"user_id": user, "displayname": displayname, "media_count": count, "media_length": bytes}),
        );
    }
    sort_rows(&mut users, order_by, query.dir == Dir::Backwards, "user_id");
    let body = page_body("users", users, query.from, query.limit, false);
    Ok(Json(body))
}
