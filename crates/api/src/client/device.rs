//! `/devices` and `/delete_devices`.

use estuary_core::Error;
use estuary_service::accounts::Device as StoredDevice;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt,
    api::client::device::{self, delete_device, delete_devices, get_device, get_devices, update_device},
};

use super::account::require_password;
use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

fn to_client(device_id: OwnedDeviceId, stored: StoredDevice) -> device::Device {
    let mut device = device::Device::new(device_id);
    device.display_name = stored.display_name;
    device.last_seen_ip = stored.last_seen_ip;
    device.last_seen_ts = stored.last_seen_ts.and_then(UInt::new).map(MilliSecondsSinceUnixEpoch);
    device
}

pub async fn list(
    services: AppState,
    request: Ruma<get_devices::v3::Request>,
) -> ApiResult<get_devices::v3::Response> {
    let devices = services.accounts.devices(request.user()?)?;
    Ok(get_devices::v3::Response::new(devices.into_iter().map(|(id, d)| to_client(id, d)).collect()))
}

pub async fn get(
    services: AppState,
    request: Ruma<get_device::v3::Request>,
) -> ApiResult<get_device::v3::Response> {
    let device_id = request.body.device_id.clone();
    let stored = services
        .accounts
        .device(request.user()?, &device_id)?
        .ok_or_else(|| Error::not_found("No such device"))?;
    Ok(get_device::v3::Response::new(to_client(device_id, stored)))
}

/// `PUT /devices/{deviceId}`: rename a device; an appservice may also
/// create one for its user (spec v1.17, for bridges that encrypt), answered
/// with 201.
pub async fn update(
    services: AppState,
    request: Ruma<update_device::v3::Request>,
) -> ApiResult<(http::StatusCode, axum::Json<serde_json::Value>)> {
    let (body, user) = (&request.body, request.user()?);
    let create = request.appservice.is_some() && services.accounts.device(user, &body.device_id)?.is_none();
    if create {
        services.accounts.create_device_without_session(user, &body.device_id, body.display_name.clone())?;
    } else {
        services.accounts.set_device_display_name(user, &body.device_id, body.display_name.clone())?;
    }
    // The name is shown to others in `/keys/query`: a device-list change.
    services.e2ee.device_changed(user, &body.device_id)?;
    let status = if create { http::StatusCode::CREATED } else { http::StatusCode::OK };
    Ok((status, axum::Json(serde_json::json!({}))))
}

pub async fn delete(
    services: AppState,
    request: Ruma<delete_device::v3::Request>,
) -> ApiResult<delete_device::v3::Response> {
    let user_id = request.user()?.to_owned();
    let device_id = request.body.device_id.clone();
    if services.accounts.device(&user_id, &device_id)?.is_none() {
        return Err(Error::not_found("No such device").into());
    }
    // Appservices manage their users' devices without UIA (spec v1.17).
    if request.appservice.is_none() {
        let purpose = format!("delete_device:{device_id}");
        require_password(&services, &purpose, &user_id, request.body.auth.as_ref()).await?;
    }
    services.devices.delete(&user_id, std::slice::from_ref(&device_id))?;
    Ok(delete_device::v3::Response::new())
}

pub async fn delete_many(
    services: AppState,
    request: Ruma<delete_devices::v3::Request>,
) -> ApiResult<delete_devices::v3::Response> {
    let user_id = request.user()?.to_owned();
    if request.appservice.is_none() {
        require_password(&services, "delete_devices", &user_id, request.body.auth.as_ref()).await?;
    }
    services.devices.delete(&user_id, &request.body.devices)?;
    Ok(delete_devices::v3::Response::new())
}
