//! `/sync`.

use std::time::Duration;

use axum::Json;
use estuary_service::sync::{SyncRequest, SyncResponse};
use ruma::api::client::{filter::FilterDefinition, sync::sync_events};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn sync(
    services: AppState,
    request: Ruma<sync_events::v3::Request>,
) -> ApiResult<Json<SyncResponse>> {
    use sync_events::v3::Filter;
    let _in_flight = InFlight::start();
    let user = request.user()?;
    let body = &request.body;
    let filter = match &body.filter {
        Some(Filter::FilterDefinition(definition)) => definition.clone(),
        // ruma reads anything that is not a valid definition as an ID.
        Some(Filter::FilterId(id)) if id.trim_start().starts_with('{') => {
            return Err(estuary_core::Error::bad_json("The filter is not a valid filter definition").into());
        }
        Some(Filter::FilterId(id)) => services.filters.get(user, id)?,
        Some(_) | None => FilterDefinition::default(),
    };
    let sync_request = SyncRequest {
        since: body.since.clone(),
        filter,
        full_state: body.full_state,
        timeout: body.timeout.unwrap_or(Duration::ZERO),
        // matrix-js-sdk sends the MSC4222 name on every sync.
        use_state_after: body.use_state_after
            || request.query_param("org.matrix.msc4222.use_state_after").is_some_and(|v| v == "true"),
        set_presence: body.set_presence.as_str().to_owned(),
    };
    let response = services.sync.sync(user, request.sender_device.as_deref(), sync_request).await?;
    Ok(Json(response))
}

/// Simplified sliding sync (MSC4186), the sync of Element X and
/// matrix-rust-sdk. An appservice acting as a user has no device, so no
/// connection to keep: it uses `/sync`.
pub async fn sliding_sync(
    services: AppState,
    request: Ruma<sync_events::v5::Request>,
) -> ApiResult<Json<serde_json::Value>> {
    let _in_flight = InFlight::start();
    let user = request.user()?.to_owned();
    let device = request.device()?.to_owned();
    let response = services.sync.sliding_sync(&user, &device, request.body).await?;
    Ok(Json(response))
}

/// Counts a `/sync` in `estuary_sync_requests_in_flight` while it runs
/// (or waits), until it answers or the client goes away.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!("estuary_sync_requests_in_flight").increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("estuary_sync_requests_in_flight").decrement(1.0);
    }
}
