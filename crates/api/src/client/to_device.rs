//! `/sendToDevice/{eventType}/{txnId}`.

use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn send(
    services: AppState,
    request: Ruma<send_event_to_device::v3::Request>,
) -> ApiResult<send_event_to_device::v3::Response> {
    let body = &request.body;
    let mut targets = Vec::new();
    for (user, devices) in &body.messages {
        for (device, content) in devices {
            let device = match device {
                DeviceIdOrAllDevices::DeviceId(id) => Some(id.clone()),
                _ => None,
            };
            let content: serde_json::Value = serde_json::from_str(content.json().get()).unwrap_or_default();
            targets.push((user.clone(), device, content));
        }
    }
    services.to_device.send(
        request.user()?,
        request.device()?,
        body.txn_id.as_str(),
        &body.event_type.to_string(),
        targets,
    )?;
    Ok(send_event_to_device::v3::Response::new())
}
