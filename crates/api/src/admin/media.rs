//! Media admin endpoints.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use estuary_core::Error;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::extract::ServerAdmin;
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
