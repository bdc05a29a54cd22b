//! Calls: TURN credentials (`/voip/turnServer`) and MatrixRTC transports (MSC4143).

use axum::Json;
use estuary_core::Config;
use estuary_service::voip;
use ruma::api::client::{
    rtc::{RtcTransport, transports},
    voip::get_turn_server_info,
};
use serde_json::{Value as JsonValue, json};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

/// Without TURN (or for a guest when guests get none) the answer is `{}`,
/// which clients read as "no TURN server" rather than as an error.
pub async fn turn_server(
    services: AppState,
    request: Ruma<get_turn_server_info::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let user_id = request.user()?;
    let guest = services.accounts.account(user_id)?.is_some_and(|a| a.guest);
    if guest && !services.config.turn_allow_guests {
        return Ok(Json(json!({})));
    }
    let Some(credentials) = voip::turn_credentials(&services.config, user_id, voip::unix_now_secs()) else {
        return Ok(Json(json!({})));
    };
    Ok(Json(json!({
        "username": credentials.username,
        "password": credentials.password,
        "uris": credentials.uris,
        "ttl": credentials.ttl,
    })))
}

/// The configured foci as ruma's transport type.
pub fn rtc_transports(config: &Config) -> Vec<RtcTransport> {
    config
        .rtc_foci
        .iter()
        .filter_map(|focus| {
            let mut data = serde_json::Map::new();
            data.insert("livekit_service_url".into(), focus.livekit_service_url.clone().into());
            RtcTransport::new(&focus.kind, data).ok()
        })
        .collect()
}

pub async fn transports(
    services: AppState,
    _: Ruma<transports::v1::Request>,
) -> ApiResult<transports::v1::Response> {
    Ok(transports::v1::Response::new(rtc_transports(&services.config)))
}
