//! `/_synapse/admin/v1/registration_tokens`: tokens that let people register
//! when registration requires one.

use axum::{
    Json,
    extract::{Path, State},
};
use estuary_core::Error;
use estuary_service::accounts::registration_tokens::NewRegistrationToken;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::extract::{AdminBody, AdminQuery, ServerAdmin, present};
use crate::{AppState, error::ApiResult};

/// The UIs also send `from`, `limit`, `order_by` and `dir`: there is no
/// paging here, so those are ignored.
#[derive(Deserialize)]
pub struct ListQuery {
    valid: Option<bool>,
}

/// `GET /_synapse/admin/v1/registration_tokens[?valid=true|false]`.
pub async fn list(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> ApiResult<Json<JsonValue>> {
    let tokens: Vec<_> = services
        .accounts
        .registration_tokens()?
        .into_iter()
        .filter(|t| query.valid.is_none_or(|valid| t.is_valid() == valid))
        .collect();
    Ok(Json(json!({"registration_tokens": tokens})))
}

#[derive(Deserialize)]
pub struct NewToken {
    token: Option<String>,
    length: Option<usize>,
    uses_allowed: Option<u64>,
    expiry_time: Option<u64>,
}

/// `POST /_synapse/admin/v1/registration_tokens/new`.
pub async fn create(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    AdminBody(body): AdminBody<NewToken>,
) -> ApiResult<Json<JsonValue>> {
    let new = NewRegistrationToken {
        token: body.token,
        length: body.length,
        uses_allowed: body.uses_allowed,
        expiry_time: body.expiry_time,
    };
    let token = services.accounts.create_registration_token(new).await?;
    tracing::info!(%admin, uses_allowed = ?token.uses_allowed, "admin created a registration token");
    Ok(Json(serde_json::to_value(token).map_err(Error::internal)?))
}

fn no_such_token(token: &str) -> Error {
    Error::not_found(format!("No such registration token: {token}"))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn get(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(token): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let found = services.accounts.registration_token(&token)?.ok_or_else(|| no_such_token(&token))?;
    Ok(Json(serde_json::to_value(found).map_err(Error::internal)?))
}

/// Only the fields sent change; null clears a limit.
#[derive(Deserialize)]
pub struct TokenUpdate {
    #[serde(default, deserialize_with = "present")]
    uses_allowed: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    expiry_time: Option<Option<u64>>,
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn update(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(token): Path<String>,
    AdminBody(body): AdminBody<TokenUpdate>,
) -> ApiResult<Json<JsonValue>> {
    let updated =
        services.accounts.update_registration_token(&token, body.uses_allowed, body.expiry_time).await?;
    tracing::info!(%admin, "admin changed a registration token");
    Ok(Json(serde_json::to_value(updated).map_err(Error::internal)?))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn delete(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(token): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    if !services.accounts.delete_registration_token(&token)? {
        return Err(no_such_token(&token).into());
    }
    tracing::info!(%admin, "admin deleted a registration token");
    Ok(Json(json!({})))
}
