//! `/_synapse/admin/v1/register`: shared-secret registration (no access
//! token; the HMAC proves the caller holds `registration_shared_secret`).

use axum::{Json, extract::State};
use estuary_service::accounts::{shared_secret::SharedSecretRegistration, username};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::extract::AdminBody;
use crate::{AppState, error::ApiResult};

/// `GET /_synapse/admin/v1/register`: a nonce for one registration.
pub async fn nonce(State(services): State<AppState>) -> ApiResult<Json<JsonValue>> {
    Ok(Json(json!({"nonce": services.accounts.new_registration_nonce()?})))
}

#[derive(Deserialize)]
pub struct Registration {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    user_type: Option<String>,
    displayname: Option<String>,
    mac: String,
}

/// `POST /_synapse/admin/v1/register`: the account, logged in.
pub async fn register(
    State(services): State<AppState>,
    AdminBody(body): AdminBody<Registration>,
) -> ApiResult<Json<JsonValue>> {
    let accounts = &services.accounts;
    accounts.check_shared_secret_registration(&SharedSecretRegistration {
        nonce: &body.nonce,
        username: &body.username,
        password: &body.password,
        admin: body.admin,
        user_type: body.user_type.as_deref(),
        mac: &body.mac,
    })?;
    let user_id = username::user_id_for_registration(&body.username, accounts.server_name())?;
    accounts.create_account_as_admin(&user_id, Some(body.password), body.admin, body.user_type).await?;
    let name = body.displayname.unwrap_or_else(|| user_id.localpart().to_owned());
    services.profile.set_field(&user_id, &user_id, ruma::profile::ProfileFieldValue::DisplayName(name))?;
    let tokens = accounts.issue_tokens(&user_id, None, None, false)?;
    services.e2ee.device_changed(&user_id, &tokens.device_id)?;
    tracing::info!(%user_id, admin = body.admin, "account created by shared-secret registration");
    Ok(Json(json!({
        "user_id": user_id,
        "access_token": tokens.access_token,
        "device_id": tokens.device_id,
        "home_server": services.config.server_name,
    })))
}
