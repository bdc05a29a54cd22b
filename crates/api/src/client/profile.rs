//! `/profile/{userId}` and its fields (displayname, avatar_url, extended).

use ruma::api::client::profile::{delete_profile_field, get_profile, get_profile_field, set_profile_field};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn get_profile(
    services: AppState,
    request: Ruma<get_profile::v3::Request>,
) -> ApiResult<get_profile::v3::Response> {
    let user_id = &request.body.user_id;
    let mut response = get_profile::v3::Response::new();
    response.data = match is_remote(&services, user_id) {
        true => services.federation.remote_profile(user_id, None).await?.data,
        false => {
            ask_bridge_for(&services, user_id).await?;
            services.profile.get_profile(user_id)?
        }
    };
    Ok(response)
}

pub async fn get_field(
    services: AppState,
    request: Ruma<get_profile_field::v3::Request>,
) -> ApiResult<get_profile_field::v3::Response> {
    let (user_id, field) = (&request.body.user_id, &request.body.field);
    if is_remote(&services, user_id) {
        let profile = services.federation.remote_profile(user_id, Some(field.clone())).await?.data;
        let value = profile
            .get(field.as_str())
            .and_then(|v| ruma::profile::ProfileFieldValue::new(field.as_str(), v.clone()).ok())
            .ok_or_else(|| estuary_core::Error::not_found("The user has no such profile field"))?;
        return Ok(get_profile_field::v3::Response::new(value));
    }
    ask_bridge_for(&services, user_id).await?;
    let value = services.profile.get_field(user_id, field)?;
    Ok(get_profile_field::v3::Response::new(value))
}

/// An unknown local user in an appservice's namespace: the bridge may
/// create its ghost on demand.
async fn ask_bridge_for(services: &AppState, user_id: &ruma::UserId) -> ApiResult<()> {
    if !services.accounts.exists(user_id)? {
        services.appservices.query_user(user_id).await?;
    }
    Ok(())
}

/// A user of another server, whose profile their server answers for.
fn is_remote(services: &AppState, user_id: &ruma::UserId) -> bool {
    user_id.server_name() != services.config.server_name && services.config.allow_federation
}

pub async fn set_field(
    services: AppState,
    request: Ruma<set_profile_field::v3::Request>,
) -> ApiResult<set_profile_field::v3::Response> {
    let sender = request.user()?;
    super::refuse_if_suspended(&services, sender)?;
    let value = request.body.value.clone();
    let in_member_events = matches!(value.field_name().as_str(), "displayname" | "avatar_url");
    services.profile.set_field(sender, &request.body.user_id, value)?;
    if in_member_events {
        services.rooms.propagate_profile(sender).await?;
    }
    Ok(set_profile_field::v3::Response::new())
}

pub async fn delete_field(
    services: AppState,
    request: Ruma<delete_profile_field::v3::Request>,
) -> ApiResult<delete_profile_field::v3::Response> {
    let sender = request.user()?;
    super::refuse_if_suspended(&services, sender)?;
    services.profile.delete_field(sender, &request.body.user_id, &request.body.field)?;
    if matches!(request.body.field.as_str(), "displayname" | "avatar_url") {
        services.rooms.propagate_profile(sender).await?;
    }
    Ok(delete_profile_field::v3::Response::new())
}
