//! `/register` and its helpers.

use std::time::Duration;

use estuary_core::{Error, error::ErrorKind};
use estuary_service::accounts::{UiaaRequest, username};
use ruma::api::client::account::{
    check_registration_token_validity, get_username_availability,
    register::{self, LoginType, RegistrationKind},
};

use estuary_service::rate_limits::Action;

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

/// What a registration asks for. A UIA session remembers them from its
/// first request, as clients may send only `auth` in later stages.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct RegistrationParams {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<ruma::OwnedDeviceId>,
    initial_device_display_name: Option<String>,
    inhibit_login: bool,
    refresh_token: bool,
}

impl RegistrationParams {
    /// This request's parameters, completed by those the session remembers.
    fn of(body: &register::v3::Request, remembered: Option<serde_json::Value>) -> Self {
        let remembered: Self = remembered.and_then(|r| serde_json::from_value(r).ok()).unwrap_or_default();
        Self {
            username: body.username.clone().or(remembered.username),
            password: body.password.clone().or(remembered.password),
            device_id: body.device_id.clone().or(remembered.device_id),
            initial_device_display_name: (body.initial_device_display_name.clone())
                .or(remembered.initial_device_display_name),
            inhibit_login: body.inhibit_login || remembered.inhibit_login,
            refresh_token: body.refresh_token || remembered.refresh_token,
        }
    }
}

pub async fn register(
    services: AppState,
    request: Ruma<register::v3::Request>,
) -> ApiResult<axum::response::Response> {
    let body = &request.body;
    let accounts = &services.accounts;
    let session = body.auth.as_ref().and_then(|a| a.session()).map(str::to_owned);
    let mut params = RegistrationParams::of(body, session.as_deref().and_then(|s| accounts.uiaa.params(s)));
    let guest = body.kind == RegistrationKind::Guest;
    if guest {
        if !services.config.allow_guest_access {
            return Err(Error::matrix(
                403,
                ErrorKind::GuestAccessForbidden,
                "Guest access is disabled on this server",
            )
            .into());
        }
        super::rate_limit_address(&services, Action::Registration, request.client_ip)?;
        let user_id = accounts.next_guest_user_id().await?;
        accounts.create_account(&user_id, params.password.take(), true).await?;
        return new_account(&services, user_id, params).await;
    }
    if request.appservice.is_some() || body.login_type == Some(LoginType::ApplicationService) {
        let appservice = request.require_appservice()?;
        // An appservice registers users in its namespace, without UIA.
        let requested = params.username.clone().ok_or_else(|| Error::missing_param("Missing `username`"))?;
        let user_id = username::user_id_for_registration(&requested, accounts.server_name())?;
        if !appservice.is_user_in_namespace(&user_id) {
            return Err(Error::matrix(
                400,
                ErrorKind::Exclusive,
                "User ID is not in the appservice's namespace",
            )
            .into());
        }
        accounts.check_available(&user_id)?;
        accounts.create_appservice_account(&user_id).await?;
        return new_account(&services, user_id, params).await;
    }
    // The same completed session sent again: the same account, logged in again.
    if let Some(done) = session.as_deref().and_then(|s| accounts.uiaa.result(s))
        && let Ok(user_id) = ruma::OwnedUserId::try_from(done)
    {
        return logged_in(&services, user_id, params);
    }
    // A guest becoming a full account: its own token, its own localpart.
    let guest_token = serde_json::from_slice::<serde_json::Value>(&request.raw_body)
        .ok()
        .and_then(|b| b["guest_access_token"].as_str().map(str::to_owned));
    if let Some(token) = guest_token {
        let guest = accounts
            .authenticate(&token)
            .map_err(|_| Error::forbidden("Invalid guest access token"))?
            .user_id;
        if params.username.as_deref() != Some(guest.localpart()) {
            return Err(Error::forbidden("A guest can only upgrade its own account").into());
        }
        let flows = accounts.registration_flows()?;
        let session = registration_uia(&services, flows, &params, body.auth.as_ref()).await?;
        claim_registration(&services, &session).await?;
        accounts.upgrade_guest(&guest, params.password.take()).await?;
        accounts.uiaa.set_result(&session, guest.to_string());
        return logged_in(&services, guest, params);
    }
    // Check the name first so clients learn of a taken name before UIA.
    let flows = accounts.registration_flows()?;
    let requested = params.username.clone().unwrap_or_else(username::random_localpart);
    let user_id = username::user_id_for_registration(&requested, accounts.server_name())?;
    accounts.check_available(&user_id)?;
    services.appservices.check_not_exclusive(&user_id, None)?;
    let session = registration_uia(&services, flows, &params, body.auth.as_ref()).await?;
    super::rate_limit_address(&services, Action::Registration, request.client_ip)?;
    claim_registration(&services, &session).await?;
    accounts.create_account(&user_id, params.password.take(), false).await?;
    accounts.uiaa.set_result(&session, user_id.to_string());
    new_account(&services, user_id, params).await
}

/// A completed session registers once: it is claimed (a concurrent request
/// on it is refused) and the registration token it passed with counts one
/// use. Once done, the same session sent again gets the same account.
async fn claim_registration(services: &AppState, session: &str) -> Result<(), Error> {
    let accounts = &services.accounts;
    if let Some(token) = accounts.uiaa.claim(session)? {
        accounts.use_registration_token(&token).await?;
    }
    Ok(())
}

/// One step of the registration flows (the session remembers `params`);
/// the session's ID once complete.
async fn registration_uia(
    services: &AppState,
    flows: Vec<ruma::api::client::uiaa::AuthFlow>,
    params: &RegistrationParams,
    auth: Option<&ruma::api::client::uiaa::AuthData>,
) -> Result<String, Error> {
    let accounts = &services.accounts;
    let remember = serde_json::to_value(params).map_err(Error::from)?;
    let uiaa = UiaaRequest { flows, purpose: "register".to_owned(), user_id: None, params: Some(remember) };
    accounts.uiaa.check(uiaa, auth, accounts.as_ref()).await
}

/// A new account's display name (its localpart, as Synapse starts it),
/// then the login response.
async fn new_account(
    services: &AppState,
    user_id: ruma::OwnedUserId,
    params: RegistrationParams,
) -> ApiResult<axum::response::Response> {
    let display_name =
        ruma::api::client::profile::ProfileFieldValue::DisplayName(user_id.localpart().to_owned());
    services.profile.set_field(&user_id, &user_id, display_name)?;
    logged_in(services, user_id, params)
}

/// The registration response: a new device and its tokens, or with
/// `inhibit_login` only the user ID.
fn logged_in(
    services: &AppState,
    user_id: ruma::OwnedUserId,
    params: RegistrationParams,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    if params.inhibit_login {
        // Only the user ID: ruma's type would add `"device_id": null`.
        return Ok(axum::Json(serde_json::json!({"user_id": user_id})).into_response());
    }
    let accounts = &services.accounts;
    let display_name = params.initial_device_display_name;
    let tokens = accounts.issue_tokens(&user_id, params.device_id, display_name, params.refresh_token)?;
    services.e2ee.device_changed(&user_id, &tokens.device_id)?;
    let mut response = register::v3::Response::new(user_id);
    response.access_token = Some(tokens.access_token);
    response.device_id = Some(tokens.device_id);
    response.refresh_token = tokens.refresh_token;
    response.expires_in = tokens.expires_in_ms.map(Duration::from_millis);
    Ok(crate::ruma_wrapper::RumaResponse(response).into_response())
}

pub async fn available(
    services: AppState,
    request: Ruma<get_username_availability::v3::Request>,
) -> ApiResult<get_username_availability::v3::Response> {
    let accounts = &services.accounts;
    let user_id = username::user_id_for_registration(&request.body.username, accounts.server_name())?;
    accounts.check_available(&user_id)?;
    Ok(get_username_availability::v3::Response::new(true))
}

pub async fn token_validity(
    services: AppState,
    request: Ruma<check_registration_token_validity::v1::Request>,
) -> ApiResult<check_registration_token_validity::v1::Response> {
    let accounts = &services.accounts;
    super::rate_limit_address(&services, Action::RegistrationTokenValidity, request.client_ip)?;
    if !accounts.registration_tokens_in_use()? {
        return Err(Error::forbidden("This server does not use registration tokens").into());
    }
    let valid = accounts.registration_token_valid(&request.body.token)?;
    Ok(check_registration_token_validity::v1::Response::new(valid))
}
