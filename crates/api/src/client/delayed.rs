//! Delayed events (MSC4140): list, look up, cancel, restart, send now.
//! Scheduling is a query parameter of the send and state endpoints (room.rs).

use axum::Json;
use estuary_core::Error;
use estuary_service::delayed::UpdateAction;
use ruma::api::client::delayed_events::{
    get_all_delayed_events, get_delayed_event, update_delayed_event,
    update_delayed_event::UpdateAction as RumaAction,
};
use serde_json::{Value as JsonValue, json};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

/// `GET /delayed_events`: Synapse's `delayed_events` list, and the
/// `scheduled`/`finalised` split newer matrix-js-sdk reads.
pub async fn list(
    services: AppState,
    request: Ruma<get_all_delayed_events::unstable::Request>,
) -> ApiResult<Json<JsonValue>> {
    let events: Vec<JsonValue> =
        services.delayed.of_user(request.user()?)?.iter().map(|e| e.to_json()).collect();
    Ok(Json(json!({"delayed_events": events, "scheduled": events, "finalised": []})))
}

pub async fn get(
    services: AppState,
    request: Ruma<get_delayed_event::unstable::Request>,
) -> ApiResult<Json<JsonValue>> {
    let event = services
        .delayed
        .of_user(request.user()?)?
        .into_iter()
        .find(|e| e.delay_id == request.body.delay_id)
        .ok_or_else(|| Error::not_found("Delayed event not found"))?;
    Ok(Json(json!({"delayed_event": event.to_json()})))
}

fn action(action: &RumaAction) -> Result<UpdateAction, Error> {
    match action.as_str() {
        "cancel" => Ok(UpdateAction::Cancel),
        "restart" => Ok(UpdateAction::Restart),
        "send" => Ok(UpdateAction::Send),
        other => Err(Error::invalid_param(format!("Unknown action {other}"))),
    }
}

/// `POST /delayed_events/{delay_id}` with `{"action": …}`.
pub async fn update_with_body(
    services: AppState,
    request: Ruma<update_delayed_event::unstable_v1::Request>,
) -> ApiResult<Json<JsonValue>> {
    services.delayed.update(&request.body.delay_id, action(&request.body.action)?).await?;
    Ok(Json(json!({})))
}

/// `POST /delayed_events/{delay_id}/{action}`: the delay ID is the authority.
pub async fn update_in_path(
    services: AppState,
    request: Ruma<update_delayed_event::unstable_v2::Request>,
) -> ApiResult<Json<JsonValue>> {
    services.delayed.update(&request.body.delay_id, action(&request.body.action)?).await?;
    Ok(Json(json!({})))
}
