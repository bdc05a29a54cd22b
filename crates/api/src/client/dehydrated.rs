//! Dehydrated devices (MSC3814, `/unstable/org.matrix.msc3814.v1/dehydrated_device`).

use axum::Json;
use estuary_service::devices::DehydratedDevice;
use ruma::api::client::dehydrated_device::{
    delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
};
use serde_json::{Value as JsonValue, json};

use super::keys::{key_list, parsed};
use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn put(
    services: AppState,
    request: Ruma<put_dehydrated_device::unstable::Request>,
) -> ApiResult<Json<JsonValue>> {
    let body = &request.body;
    let device = DehydratedDevice {
        device_id: body.device_id.clone(),
        display_name: body.initial_device_display_name.clone(),
        device_data: parsed(&body.device_data)?,
        device_keys: parsed(&body.device_keys)?,
        one_time_keys: key_list(&body.one_time_keys)?,
        fallback_keys: key_list(&body.fallback_keys)?,
    };
    services.devices.put_dehydrated(request.user()?, device)?;
    Ok(Json(json!({"device_id": body.device_id})))
}

pub async fn get(
    services: AppState,
    request: Ruma<get_dehydrated_device::unstable::Request>,
) -> ApiResult<Json<JsonValue>> {
    let (device_id, device_data) = services.devices.dehydrated(request.user()?)?;
    Ok(Json(json!({"device_id": device_id, "device_data": device_data})))
}

pub async fn delete(
    services: AppState,
    request: Ruma<delete_dehydrated_device::unstable::Request>,
) -> ApiResult<Json<JsonValue>> {
    let device_id = services.devices.delete_dehydrated(request.user()?)?;
    Ok(Json(json!({"device_id": device_id})))
}

pub async fn events(
    services: AppState,
    request: Ruma<get_events::unstable::Request>,
) -> ApiResult<Json<JsonValue>> {
    let body = &request.body;
    let (events, next_batch) =
        services.devices.dehydrated_events(request.user()?, &body.device_id, body.next_batch.as_deref())?;
    let mut response = json!({"events": events});
    if let Some(next_batch) = next_batch {
        response["next_batch"] = next_batch.into();
    }
    Ok(Json(response))
}
