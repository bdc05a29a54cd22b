//! Estuary's own admin endpoints (`/_estuary/admin`): the consistency check
//! and appservice registrations at runtime.

use axum::{
    Json,
    extract::{Path, State},
};
use estuary_core::Error;
use serde_json::{Value as JsonValue, json};

use super::extract::ServerAdmin;
use crate::{AppState, error::ApiResult};

/// `GET /_estuary/admin/v1/consistency`: the consistency check of
/// `estuary check`, on the running server (a walk of every room, so it runs
/// on the blocking pool).
pub async fn consistency(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
) -> ApiResult<Json<JsonValue>> {
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
    ServerAdmin(_): ServerAdmin,
) -> ApiResult<Json<JsonValue>> {
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
    ServerAdmin(user): ServerAdmin,
    body: axum::body::Bytes,
) -> ApiResult<Json<JsonValue>> {
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
    ServerAdmin(user): ServerAdmin,
    Path(id): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    services.appservices.remove(&id)?;
    tracing::info!(%user, id, "admin removed an appservice");
    Ok(Json(json!({})))
}
