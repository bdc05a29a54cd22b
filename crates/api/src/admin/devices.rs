//! A user's devices in Synapse's admin API (`/_synapse/admin/v2/users/{userId}/devices`).

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use estuary_core::Error;
use estuary_service::accounts::Device;
use ruma::{OwnedDeviceId, UserId};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::extract::{AdminBody, ServerAdmin, local_user};
use crate::{AppState, error::ApiResult};

fn device_view(user: &UserId, device_id: &str, device: &Device) -> JsonValue {
    json!({
        "device_id": device_id,
        "display_name": device.display_name,
        "last_seen_ip": device.last_seen_ip,
        "last_seen_user_agent": null,
        "last_seen_ts": device.last_seen_ts,
        "user_id": user,
    })
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`.
pub async fn list(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let devices: Vec<_> =
        services.accounts.devices(&user)?.iter().map(|(id, d)| device_view(&user, id.as_str(), d)).collect();
    Ok(Json(json!({"total": devices.len(), "devices": devices})))
}

#[derive(Deserialize)]
pub struct NewDevice {
    device_id: OwnedDeviceId,
}

/// `POST /_synapse/admin/v2/users/{userId}/devices`: a device without a session (201).
pub async fn create(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminBody(body): AdminBody<NewDevice>,
) -> ApiResult<(StatusCode, Json<JsonValue>)> {
    let user = local_user(&services, &user)?;
    if services.accounts.device(&user, &body.device_id)?.is_none() {
        services.accounts.create_device_without_session(&user, &body.device_id, None)?;
        tracing::info!(%admin, target = %user, device = %body.device_id, "admin created a device");
    }
    Ok((StatusCode::CREATED, Json(json!({}))))
}

fn device_of(services: &AppState, user: &UserId, device_id: &str) -> Result<Device, Error> {
    services.accounts.device(user, device_id.into())?.ok_or_else(|| Error::not_found("No device found"))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
pub async fn get(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path((user, device_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let device = device_of(&services, &user, &device_id)?;
    Ok(Json(device_view(&user, &device_id, &device)))
}

#[derive(Deserialize)]
pub struct DeviceUpdate {
    display_name: Option<String>,
}

/// `PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}`: rename.
pub async fn update(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path((user, device_id)): Path<(String, String)>,
    AdminBody(body): AdminBody<DeviceUpdate>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    device_of(&services, &user, &device_id)?;
    services.accounts.set_device_display_name(&user, device_id.as_str().into(), body.display_name)?;
    tracing::info!(%admin, target = %user, device = device_id, "admin renamed a device");
    Ok(Json(json!({})))
}

/// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
pub async fn delete(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path((user, device_id)): Path<(String, String)>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    services.devices.delete(&user, &[device_id.as_str().into()])?;
    tracing::info!(%admin, target = %user, device = device_id, "admin deleted a device");
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub struct DeleteDevices {
    devices: Vec<OwnedDeviceId>,
}

/// `POST /_synapse/admin/v2/users/{userId}/delete_devices`.
pub async fn delete_many(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminBody(body): AdminBody<DeleteDevices>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    services.devices.delete(&user, &body.devices)?;
    tracing::info!(%admin, target = %user, count = body.devices.len(), "admin deleted devices");
    Ok(Json(json!({})))
}
