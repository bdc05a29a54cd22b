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
    let (sender, device) = (request.user()?, request.device()?);
    let (local, remote): (Vec<_>, Vec<_>) =
        targets.into_iter().partition(|(user, _, _)| user.server_name() == services.config.server_name);
    let event_type = body.event_type.to_string();
    services.to_device.send(sender, device, body.txn_id.as_str(), &event_type, local)?;
    if !remote.is_empty() {
        // Unique per sending device and transaction, so the receiving
        // server delivers a retried message once.
        let message_id = format!("{device}.{}", body.txn_id);
        services.federation.send_to_device_remote(sender, &event_type, &message_id, remote)?;
    }
    Ok(send_event_to_device::v3::Response::new())
}
