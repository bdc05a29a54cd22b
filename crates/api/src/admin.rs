//! Server admin endpoints, at Synapse's paths so existing admin tools work.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use estuary_core::Error;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::{AppState, error::ApiResult, ruma_wrapper::AuthedUser};

fn require_admin(services: &AppState, user: &ruma::UserId) -> Result<(), Error> {
    match services.accounts.account(user)? {
        Some(account) if account.admin => Ok(()),
        _ => Err(Error::forbidden("You are not a server admin")),
    }
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`.
pub async fn delete_media(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
    Path((server_name, media_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    require_admin(&services, &user)?;
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
    AuthedUser(user): AuthedUser,
    Query(query): Query<PurgeQuery>,
) -> ApiResult<Json<JsonValue>> {
    require_admin(&services, &user)?;
    let deleted = services.media.purge_remote(query.before_ts)?;
    Ok(Json(json!({"deleted": deleted})))
}

/// `GET /_estuary/admin/v1/consistency`: the consistency check of
/// `estuary check`, on the running server (a walk of every room, so it runs
/// on the blocking pool).
pub async fn consistency(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
) -> ApiResult<Json<JsonValue>> {
    require_admin(&services, &user)?;
    let report = tokio::task::spawn_blocking(move || services.rooms.check_consistency())
        .await
        .map_err(Error::internal)??;
    if !report.is_clean() {
        tracing::warn!(problems = report.problem_count, "consistency check found problems");
    }
    Ok(Json(serde_json::to_value(report).map_err(Error::internal)?))
}

/// `GET /_estuary/admin/v1/appservices`: every registration, without tokens.
pub async fn list_appservices(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
) -> ApiResult<Json<JsonValue>> {
    require_admin(&services, &user)?;
    let registry = services.appservices.registry();
    let listed: Vec<JsonValue> = registry
        .all
        .iter()
        .map(|a| {
            json!({
                "id": a.id(),
                "url": a.registration.url,
                "sender_localpart": a.registration.sender_localpart,
                "namespaces": a.registration.namespaces,
                "protocols": a.registration.protocols,
                "receive_ephemeral": a.receive_ephemeral,
                "source": a.source,
            })
        })
        .collect();
    Ok(Json(json!({"appservices": listed})))
}

/// `POST /_estuary/admin/v1/appservices`: register an appservice now, from
/// its registration in YAML (as bridges write it) or JSON.
pub async fn register_appservice(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
    body: axum::body::Bytes,
) -> ApiResult<Json<JsonValue>> {
    require_admin(&services, &user)?;
    let text = std::str::from_utf8(&body).map_err(|_| Error::not_json("The registration is not UTF-8"))?;
    // YAML is a superset of JSON: one parser reads both.
    let raw = estuary_service::appservices::parse_yaml(text)?;
    let appservice = services.appservices.register(raw).await?;
    tracing::info!(%user, id = appservice.id(), "admin registered an appservice");
    Ok(Json(json!({"id": appservice.id()})))
}

/// `DELETE /_estuary/admin/v1/appservices/{id}`: remove a runtime registration.
pub async fn remove_appservice(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
    Path(id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    require_admin(&services, &user)?;
    services.appservices.remove(&id)?;
    tracing::info!(%user, id, "admin removed an appservice");
    Ok(Json(json!({})))
}
