//! `/presence/{userId}/status`.

use estuary_core::Error;
use ruma::api::client::presence::{get_presence, set_presence};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn set(
    services: AppState,
    request: Ruma<set_presence::v3::Request>,
) -> ApiResult<set_presence::v3::Response> {
    let body = &request.body;
    if request.user()? != body.user_id {
        return Err(Error::forbidden("You can only set your own presence").into());
    }
    services.presence.set(&body.user_id, body.presence.as_str(), body.status_msg.clone())?;
    Ok(set_presence::v3::Response::new())
}

/// Written by hand: `last_active_ago` and friends as the spec shows them.
pub async fn get(
    services: AppState,
    request: Ruma<get_presence::v3::Request>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let user_id = &request.body.user_id;
    if user_id.server_name() != services.config.server_name || !services.accounts.exists(user_id)? {
        return Err(Error::not_found("Unknown user").into());
    }
    Ok(axum::Json(services.presence.content(user_id)?))
}
