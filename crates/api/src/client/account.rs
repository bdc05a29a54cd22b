//! `/account/whoami`, `/account/password`, `/account/deactivate`.

use ruma::api::client::{
    account::{change_password, deactivate, whoami},
    uiaa::{AuthFlow, AuthType},
};

use estuary_service::accounts::UiaaRequest;

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn whoami(
    services: AppState,
    request: Ruma<whoami::v3::Request>,
) -> ApiResult<whoami::v3::Response> {
    let user_id = request.user()?;
    let guest = services.accounts.account(user_id)?.is_some_and(|a| a.guest);
    let mut response = whoami::v3::Response::new(user_id.to_owned(), guest);
    response.device_id = request.sender_device.clone();
    Ok(response)
}

/// UIA for sensitive account operations: the user's password.
pub(super) async fn require_password(
    services: &AppState,
    purpose: &str,
    user_id: &ruma::OwnedUserId,
    auth: Option<&ruma::api::client::uiaa::AuthData>,
) -> ApiResult<()> {
    let uiaa = UiaaRequest {
        flows: vec![AuthFlow::new(vec![AuthType::Password])],
        purpose: format!("{purpose}:{user_id}"),
        user_id: Some(user_id),
    };
    let accounts = &services.accounts;
    accounts.uiaa.check(uiaa, auth, accounts.as_ref()).await?;
    Ok(())
}

pub async fn change_password(
    services: AppState,
    request: Ruma<change_password::v3::Request>,
) -> ApiResult<change_password::v3::Response> {
    let user_id = request.user()?.to_owned();
    require_password(&services, "change_password", &user_id, request.body.auth.as_ref()).await?;
    let body = request.body;
    let current = request.sender_device.as_deref();
    let others: Vec<_> = services
        .accounts
        .devices(&user_id)?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| Some(&**id) != current)
        .collect();
    services.accounts.set_password(&user_id, body.new_password, body.logout_devices, current).await?;
    if body.logout_devices {
        services.devices.delete(&user_id, &others)?;
    }
    Ok(change_password::v3::Response::new())
}

pub async fn deactivate(
    services: AppState,
    request: Ruma<deactivate::v3::Request>,
) -> ApiResult<deactivate::v3::Response> {
    let user_id = request.user()?.to_owned();
    require_password(&services, "deactivate", &user_id, request.body.auth.as_ref()).await?;
    services.devices.delete_all(&user_id)?;
    services.accounts.deactivate(&user_id)?;
    services.profile.clear(&user_id)?;
    Ok(deactivate::v3::Response::new(ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport))
}
