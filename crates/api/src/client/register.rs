//! `/register` and its helpers.

use std::time::Duration;

use estuary_core::{Error, error::ErrorKind};
use estuary_service::accounts::{UiaaRequest, username};
use ruma::api::client::account::{
    check_registration_token_validity, get_username_availability,
    register::{self, LoginType, RegistrationKind},
};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn register(
    services: AppState,
    request: Ruma<register::v3::Request>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let body = &request.body;
    let accounts = &services.accounts;
    let guest = body.kind == RegistrationKind::Guest;
    let user_id = if guest {
        if !services.config.allow_guest_access {
            return Err(Error::matrix(
                403,
                ErrorKind::GuestAccessForbidden,
                "Guest access is disabled on this server",
            )
            .into());
        }
        accounts.next_guest_user_id()?
    } else if request.appservice.is_some() || body.login_type == Some(LoginType::ApplicationService) {
        let appservice = request.require_appservice()?;
        // An appservice registers users in its namespace, without UIA.
        let requested = body.username.clone().ok_or_else(|| Error::missing_param("Missing `username`"))?;
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
        user_id
    } else {
        // Check the name first so clients learn of a taken name before UIA.
        let flows = accounts.registration_flows()?;
        let requested = body.username.clone().unwrap_or_else(username::random_localpart);
        let user_id = username::user_id_for_registration(&requested, accounts.server_name())?;
        accounts.check_available(&user_id)?;
        services.appservices.check_not_exclusive(&user_id, None)?;
        let uiaa = UiaaRequest { flows, purpose: "register".to_owned(), user_id: None };
        accounts.uiaa.check(uiaa, body.auth.as_ref(), accounts.as_ref()).await?;
        user_id
    };

    if request.appservice.is_some() && !guest {
        accounts.create_appservice_account(&user_id).await?;
    } else {
        accounts.create_account(&user_id, body.password.clone(), guest).await?;
    }
    // Like Synapse, start with the localpart as display name.
    let display_name =
        ruma::api::client::profile::ProfileFieldValue::DisplayName(user_id.localpart().to_owned());
    services.profile.set_field(&user_id, &user_id, display_name)?;
    let mut response = register::v3::Response::new(user_id.clone());
    if body.inhibit_login {
        // Only the user ID: ruma's type would add `"device_id": null`.
        return Ok(axum::Json(serde_json::json!({"user_id": user_id})).into_response());
    }
    let display_name = body.initial_device_display_name.clone();
    let tokens = accounts.issue_tokens(&user_id, body.device_id.clone(), display_name, body.refresh_token)?;
    services.e2ee.device_list_changed(&user_id)?;
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
    if !accounts.registration_tokens_in_use()? {
        return Err(Error::forbidden("This server does not use registration tokens").into());
    }
    let valid = accounts.registration_token_valid(&request.body.token)?;
    Ok(check_registration_token_validity::v1::Response::new(valid))
}
