//! Peeking: `/rooms/{roomId}/initialSync` and `/events?room_id=`.

use std::time::Duration;

use axum::Json;
use estuary_service::rooms::parse_token;
use ruma::api::client::peeking::{get_current_state, listen_to_new_events};
use serde_json::Value as JsonValue;

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

/// Messages in an `initialSync` answer.
const INITIAL_SYNC_MESSAGES: usize = 20;

pub async fn initial_sync(
    services: AppState,
    request: Ruma<get_current_state::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let response =
        services.peek.initial_sync(request.user()?, &request.body.room_id, INITIAL_SYNC_MESSAGES)?;
    Ok(Json(response))
}

pub async fn events(
    services: AppState,
    request: Ruma<listen_to_new_events::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let body = &request.body;
    let from = body.from.as_deref().map(parse_token).transpose()?;
    let timeout = body.timeout.unwrap_or(Duration::ZERO);
    let response = services.peek.events(request.user()?, &body.room_id, from, timeout).await?;
    Ok(Json(response))
}
