//! Endpoints appservices and their users call: ping (spec v1.7) and the
//! third-party lookups, answered by the bridges that register protocols.

use std::{collections::BTreeMap, time::Duration};

use estuary_core::Error;
use ruma::api::client::{
    appservice::request_ping,
    thirdparty::{
        get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
        get_user_for_protocol, get_user_for_user_id,
    },
};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

/// `POST /appservice/{appserviceId}/ping`: we ask the appservice, it checks
/// that we reach it with the right token.
pub async fn ping(
    services: AppState,
    request: Ruma<request_ping::v1::Request>,
) -> ApiResult<request_ping::v1::Response> {
    let appservice = request.require_appservice()?;
    if appservice.id() != request.body.appservice_id {
        return Err(Error::forbidden("An appservice may only ping itself").into());
    }
    let millis = services.appservices.ping(appservice, request.body.transaction_id.clone()).await?;
    Ok(request_ping::v1::Response::new(Duration::from_millis(millis)))
}

/// `/thirdparty/protocols`: every protocol the bridges register (none
/// without bridges). Element calls it at every start.
pub async fn protocols(
    services: AppState,
    _: Ruma<get_protocols::v3::Request>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    Ok(axum::Json(serde_json::json!(services.appservices.protocols().await)))
}

/// The descriptions are passed on as the bridges wrote them.
pub async fn protocol(
    services: AppState,
    request: Ruma<get_protocol::v3::Request>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    Ok(axum::Json(services.appservices.protocol(&request.body.protocol).await?))
}

pub async fn locations(
    services: AppState,
    request: Ruma<get_location_for_protocol::v3::Request>,
) -> ApiResult<get_location_for_protocol::v3::Response> {
    let body = &request.body;
    let found = services.appservices.locations(&body.protocol, search_fields(&body.fields)).await?;
    Ok(get_location_for_protocol::v3::Response::new(found))
}

pub async fn users(
    services: AppState,
    request: Ruma<get_user_for_protocol::v3::Request>,
) -> ApiResult<get_user_for_protocol::v3::Response> {
    let body = &request.body;
    let found = services.appservices.users(&body.protocol, search_fields(&body.fields)).await?;
    Ok(get_user_for_protocol::v3::Response::new(found))
}

pub async fn locations_for_alias(
    services: AppState,
    request: Ruma<get_location_for_room_alias::v3::Request>,
) -> ApiResult<get_location_for_room_alias::v3::Response> {
    let found = services.appservices.locations_for_alias(&request.body.alias).await;
    Ok(get_location_for_room_alias::v3::Response::new(found))
}

pub async fn users_for_user_id(
    services: AppState,
    request: Ruma<get_user_for_user_id::v3::Request>,
) -> ApiResult<get_user_for_user_id::v3::Response> {
    let found = services.appservices.users_for_user_id(&request.body.userid).await;
    Ok(get_user_for_user_id::v3::Response::new(found))
}

/// The search fields of a third-party lookup: ruma collects every query
/// parameter, and the caller's own (its access token, an appservice's
/// masquerading) must never reach the bridge.
fn search_fields(query: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    const OURS: [&str; 4] = ["access_token", "user_id", "device_id", "org.matrix.msc3202.device_id"];
    query
        .iter()
        .filter(|(key, _)| !OURS.contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
