//! `/account/whoami`, `/account/password`, `/account/deactivate`.

use ruma::api::client::{
    account::{change_password, deactivate, whoami},
    admin,
    uiaa::{AuthFlow, AuthType},
};

use estuary_core::Error;
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
        params: None,
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
    // An appservice manages its users without their passwords (they have none).
    if request.appservice.is_none() {
        require_password(&services, "deactivate", &user_id, request.body.auth.as_ref()).await?;
    }
    services.deactivate_user(&user_id, request.body.erase).await?;
    Ok(deactivate::v3::Response::new(ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport))
}

/// `POST /user/{userId}/openid/request_token`: a token other services can
/// check with this server's `/openid/userinfo`.
pub async fn request_openid_token(
    services: AppState,
    request: Ruma<ruma::api::client::account::request_openid_token::v3::Request>,
) -> ApiResult<ruma::api::client::account::request_openid_token::v3::Response> {
    use ruma::api::client::account::request_openid_token::v3::Response;
    let user = request.user()?;
    if user != request.body.user_id {
        return Err(Error::forbidden("You can only request OpenID tokens for yourself").into());
    }
    let token = services.accounts.create_openid_token(user)?;
    let lifetime = std::time::Duration::from_millis(estuary_service::accounts::OPENID_TOKEN_LIFETIME_MS);
    Ok(Response::new(
        token,
        ruma::authentication::TokenType::Bearer,
        services.config.server_name.clone(),
        lifetime,
    ))
}

/// `GET /admin/whois/{userId}`: a user's devices and where they were last
/// seen, for server admins and the user.
pub async fn whois(
    services: AppState,
    request: Ruma<ruma::api::client::admin::get_user_info::v3::Request>,
) -> ApiResult<ruma::api::client::admin::get_user_info::v3::Response> {
    use ruma::api::client::admin::get_user_info::v3::{ConnectionInfo, DeviceInfo, Response, SessionInfo};
    let (asker, user) = (request.user()?, &request.body.user_id);
    let admin = services.accounts.account(asker)?.is_some_and(|a| a.admin);
    if asker != user && !admin {
        return Err(Error::forbidden("Only server admins may look up other users").into());
    }
    let mut response = Response::new();
    response.user_id = Some(user.clone());
    for (device_id, device) in services.accounts.devices(user)? {
        let mut connection = ConnectionInfo::new();
        connection.ip = device.last_seen_ip;
        connection.last_seen =
            device.last_seen_ts.and_then(ruma::UInt::new).map(ruma::MilliSecondsSinceUnixEpoch);
        let mut session = SessionInfo::new();
        session.connections = vec![connection];
        let mut info = DeviceInfo::new();
        info.sessions = vec![session];
        response.devices.insert(device_id.to_string(), info);
    }
    Ok(response)
}

/// The target of the spec's account moderation endpoints (`/admin/lock`,
/// `/admin/suspend`): the caller must be a server admin, the target a local
/// account (404 otherwise).
fn moderated_user(services: &AppState, caller: &ruma::UserId, target: &ruma::UserId) -> ApiResult<()> {
    if !services.accounts.account(caller)?.is_some_and(|a| a.admin) {
        return Err(Error::forbidden("You are not a server admin").into());
    }
    if !services.accounts.is_local(target) || !services.accounts.exists(target)? {
        return Err(Error::not_found("User not found").into());
    }
    Ok(())
}

pub async fn is_locked(
    services: AppState,
    request: Ruma<admin::is_user_locked::v1::Request>,
) -> ApiResult<admin::is_user_locked::v1::Response> {
    moderated_user(&services, request.user()?, &request.body.user_id)?;
    let locked = services.accounts.restrictions.of(&request.body.user_id).locked;
    Ok(admin::is_user_locked::v1::Response::new(locked))
}

pub async fn lock(
    services: AppState,
    request: Ruma<admin::lock_user::v1::Request>,
) -> ApiResult<admin::lock_user::v1::Response> {
    let (admin, body) = (request.user()?, &request.body);
    moderated_user(&services, admin, &body.user_id)?;
    services.accounts.restrictions.update(&body.user_id, |r| r.locked = body.locked)?;
    tracing::info!(%admin, target = %body.user_id, locked = body.locked, "admin changed a lock");
    Ok(admin::lock_user::v1::Response::new(body.locked))
}

pub async fn is_suspended(
    services: AppState,
    request: Ruma<admin::is_user_suspended::v1::Request>,
) -> ApiResult<admin::is_user_suspended::v1::Response> {
    moderated_user(&services, request.user()?, &request.body.user_id)?;
    let suspended = services.accounts.restrictions.of(&request.body.user_id).suspended;
    Ok(admin::is_user_suspended::v1::Response::new(suspended))
}

pub async fn suspend(
    services: AppState,
    request: Ruma<admin::suspend_user::v1::Request>,
) -> ApiResult<admin::suspend_user::v1::Response> {
    let (admin, body) = (request.user()?, &request.body);
    moderated_user(&services, admin, &body.user_id)?;
    services.accounts.restrictions.update(&body.user_id, |r| r.suspended = body.suspended)?;
    tracing::info!(%admin, target = %body.user_id, suspended = body.suspended, "admin changed a suspension");
    Ok(admin::suspend_user::v1::Response::new(body.suspended))
}
