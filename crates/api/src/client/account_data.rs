//! `/user/{userId}/account_data/{type}` and its per-room twin.

use ruma::{
    api::client::config::{
        get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
    },
    serde::Raw,
};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn set_global(
    services: AppState,
    request: Ruma<set_global_account_data::v3::Request>,
) -> ApiResult<set_global_account_data::v3::Response> {
    let body = &request.body;
    super::require_self(request.user()?, &body.user_id, "account data")?;
    let content = body.data.json().to_owned();
    services.account_data.set(&body.user_id, None, &body.event_type.to_string(), content)?;
    Ok(set_global_account_data::v3::Response::new())
}

pub async fn get_global(
    services: AppState,
    request: Ruma<get_global_account_data::v3::Request>,
) -> ApiResult<get_global_account_data::v3::Response> {
    let body = &request.body;
    super::require_self(request.user()?, &body.user_id, "account data")?;
    let content = services.account_data.get(&body.user_id, None, &body.event_type.to_string())?;
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(content)))
}

pub async fn set_room(
    services: AppState,
    request: Ruma<set_room_account_data::v3::Request>,
) -> ApiResult<set_room_account_data::v3::Response> {
    let body = &request.body;
    super::require_self(request.user()?, &body.user_id, "account data")?;
    let content = body.data.json().to_owned();
    services.account_data.set(&body.user_id, Some(&body.room_id), &body.event_type.to_string(), content)?;
    Ok(set_room_account_data::v3::Response::new())
}

pub async fn get_room(
    services: AppState,
    request: Ruma<get_room_account_data::v3::Request>,
) -> ApiResult<get_room_account_data::v3::Response> {
    let body = &request.body;
    super::require_self(request.user()?, &body.user_id, "account data")?;
    let content =
        services.account_data.get(&body.user_id, Some(&body.room_id), &body.event_type.to_string())?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(content)))
}
