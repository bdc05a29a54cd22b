//! `/login`, `/login/get_token`, `/refresh`, `/logout`, `/logout/all`.

use std::time::Duration;

use estuary_core::{Error, error::ErrorKind};
use estuary_service::accounts::{IssuedTokens, LOGIN_TOKEN_LIFETIME_MS, UiaaRequest};
use ruma::{
    OwnedUserId, UserId,
    api::client::{
        session::{
            get_login_token, get_login_types,
            login::{self, v3::LoginInfo},
            logout, logout_all, refresh_token,
        },
        uiaa::{AuthFlow, AuthType, UserIdentifier},
    },
};

use estuary_service::rate_limits::Action;

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn login_types(
    _: AppState,
    _: Ruma<get_login_types::v3::Request>,
) -> ApiResult<get_login_types::v3::Response> {
    use get_login_types::v3::{LoginType, PasswordLoginType, TokenLoginType};
    let mut token = TokenLoginType::new();
    token.get_login_token = true;
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(PasswordLoginType::new()),
        LoginType::Token(token),
    ]))
}

pub async fn login(services: AppState, request: Ruma<login::v3::Request>) -> ApiResult<login::v3::Response> {
    let accounts = &services.accounts;
    let appservice = request.require_appservice().cloned();
    if appservice.is_err() {
        super::rate_limit_address(&services, Action::LoginByAddress, request.client_ip)?;
    }
    let body = request.body;
    let user_id = match &body.login_info {
        LoginInfo::Password(password) => {
            #[allow(deprecated)]
            let user_id =
                password_login_user(&services, password.identifier.as_ref(), password.user.as_deref())?;
            let limits = &services.rate_limits;
            limits.check_login_not_blocked(user_id.as_str())?;
            if !accounts.verify_password(&user_id, &password.password).await? {
                limits.record_failed_login(user_id.as_str())?;
                return Err(login_refused(&services, &user_id)?.into());
            }
            // Counted once the password is right: wrong guesses count as
            // failed attempts only, so nobody can lock another user out.
            super::rate_limit_user(&services, Action::LoginByAccount, &user_id)?;
            user_id
        }
        LoginInfo::Token(token) => accounts.consume_login_token(&token.token)?,
        LoginInfo::ApplicationService(login) => {
            let appservice = appservice?;
            #[allow(deprecated)]
            let user_id = password_login_user(&services, login.identifier.as_ref(), login.user.as_deref())?;
            if !appservice.is_user_in_namespace(&user_id) || !accounts.exists(&user_id)? {
                return Err(Error::forbidden("User is not in the appservice's namespace").into());
            }
            if accounts.account(&user_id)?.is_some_and(|a| a.deactivated) {
                return Err(login_refused(&services, &user_id)?.into());
            }
            user_id
        }
        _ => return Err(Error::matrix(400, ErrorKind::Unknown, "Unsupported login type").into()),
    };
    let tokens = accounts.issue_tokens(
        &user_id,
        body.device_id,
        body.initial_device_display_name,
        body.refresh_token,
    )?;
    // A new device is a device-list change for everyone sharing a room.
    services.e2ee.device_changed(&user_id, &tokens.device_id)?;
    Ok(login_response(user_id, tokens, &services))
}

/// Why a password login failed: deactivated accounts say so, everything
/// else (unknown user, wrong password) is the same 403.
fn login_refused(services: &AppState, user_id: &UserId) -> Result<Error, Error> {
    Ok(match services.accounts.account(user_id)? {
        Some(account) if account.deactivated => {
            Error::matrix(403, ErrorKind::UserDeactivated, "This account has been deactivated")
        }
        _ => Error::forbidden("Invalid username or password"),
    })
}

/// The user a password login names: `m.id.user` (localpart or full ID) or
/// the deprecated top-level `user`.
fn password_login_user(
    services: &AppState,
    identifier: Option<&UserIdentifier>,
    legacy_user: Option<&str>,
) -> Result<OwnedUserId, Error> {
    let user = match (identifier, legacy_user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.as_str(),
        (Some(_), _) => {
            return Err(Error::forbidden(
                "Logging in with a third-party identifier (email, phone) is not supported on this \
                 server; use your Matrix user ID",
            ));
        }
        (None, Some(user)) => user,
        (None, None) => return Err(Error::missing_param("Missing `identifier`")),
    };
    let server_name = services.accounts.server_name();
    let user_id = match user.strip_prefix('@') {
        Some(_) => UserId::parse(user).map_err(|_| Error::invalid_param("Invalid user ID"))?,
        None => UserId::parse_with_server_name(user.to_lowercase(), server_name)
            .map_err(|_| Error::invalid_param("Invalid user ID"))?,
    };
    if user_id.server_name() != server_name {
        return Err(Error::forbidden("That user is not on this server"));
    }
    Ok(user_id)
}

fn login_response(user_id: OwnedUserId, tokens: IssuedTokens, services: &AppState) -> login::v3::Response {
    let mut response = login::v3::Response::new(user_id, tokens.access_token, tokens.device_id);
    response.refresh_token = tokens.refresh_token;
    response.expires_in = tokens.expires_in_ms.map(Duration::from_millis);
    #[allow(deprecated)]
    {
        response.home_server = Some(services.config.server_name.clone());
    }
    // Clients move to this URL after logging in (matrix-rust-sdk does), so
    // it is sent only when the admin set it: the default guess
    // (server name and listening port) is wrong behind a proxy or on port 0.
    response.well_known = services
        .config
        .well_known_client
        .clone()
        .map(|url| login::v3::DiscoveryInfo::new(login::v3::HomeserverInfo::new(url)));
    response
}

pub async fn get_login_token(
    services: AppState,
    request: Ruma<get_login_token::v1::Request>,
) -> ApiResult<get_login_token::v1::Response> {
    let user_id = request.user()?.to_owned();
    let uiaa = UiaaRequest {
        flows: vec![AuthFlow::new(vec![AuthType::Password])],
        purpose: format!("get_login_token:{user_id}"),
        user_id: Some(&user_id),
        params: None,
    };
    let accounts = &services.accounts;
    accounts.uiaa.check(uiaa, request.body.auth.as_ref(), accounts.as_ref()).await?;
    let token = accounts.create_login_token(&user_id)?;
    Ok(get_login_token::v1::Response::new(Duration::from_millis(LOGIN_TOKEN_LIFETIME_MS), token))
}

pub async fn refresh(
    services: AppState,
    request: Ruma<refresh_token::v3::Request>,
) -> ApiResult<refresh_token::v3::Response> {
    let tokens = services.accounts.refresh(&request.body.refresh_token)?;
    let mut response = refresh_token::v3::Response::new(tokens.access_token);
    response.refresh_token = tokens.refresh_token;
    response.expires_in_ms = tokens.expires_in_ms.map(Duration::from_millis);
    Ok(response)
}

pub async fn logout(
    services: AppState,
    request: Ruma<logout::v3::Request>,
) -> ApiResult<logout::v3::Response> {
    let (user, device) = (request.user()?, request.device()?);
    services.devices.delete(user, &[device.to_owned()])?;
    Ok(logout::v3::Response::new())
}

pub async fn logout_all(
    services: AppState,
    request: Ruma<logout_all::v3::Request>,
) -> ApiResult<logout_all::v3::Response> {
    let user = request.user()?;
    services.devices.delete_all(user)?;
    Ok(logout_all::v3::Response::new())
}
