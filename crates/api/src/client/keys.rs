//! `/keys/upload`, `/keys/query`, `/keys/claim`, `/keys/changes`.

use axum::Json;
use estuary_core::Error;
use estuary_service::rooms::parse_token;
use ruma::api::client::keys::{claim_keys, get_key_changes, get_keys, upload_keys};
use serde_json::{Value as JsonValue, json};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub(super) fn parsed<T>(raw: &ruma::serde::Raw<T>) -> Result<JsonValue, Error> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))
}

/// One-time or fallback keys as (key ID, key) pairs.
pub(super) fn key_list(
    keys: &std::collections::BTreeMap<
        ruma::OwnedOneTimeKeyId,
        ruma::serde::Raw<ruma::encryption::OneTimeKey>,
    >,
) -> Result<Vec<(String, JsonValue)>, Error> {
    keys.iter().map(|(id, key)| Ok((id.to_string(), parsed(key)?))).collect()
}

pub async fn upload(
    services: AppState,
    request: Ruma<upload_keys::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let body = &request.body;
    let device_keys = body.device_keys.as_ref().map(parsed).transpose()?;
    let counts = services.e2ee.upload(
        request.user()?,
        request.device()?,
        device_keys,
        key_list(&body.one_time_keys)?,
        key_list(&body.fallback_keys)?,
    )?;
    Ok(Json(json!({"one_time_key_counts": counts})))
}

pub async fn query(services: AppState, request: Ruma<get_keys::v3::Request>) -> ApiResult<Json<JsonValue>> {
    let requester = request.user()?.to_owned();
    let requests = request
        .body
        .device_keys
        .iter()
        .map(|(user, devices)| (user.clone(), devices.iter().map(|d| d.to_string()).collect()))
        .collect();
    Ok(Json(services.federation.query_keys(&requester, requests).await?))
}

pub async fn claim(services: AppState, request: Ruma<claim_keys::v3::Request>) -> ApiResult<Json<JsonValue>> {
    request.user()?;
    let mut requests = Vec::new();
    for (user, devices) in &request.body.one_time_keys {
        for (device, algorithm) in devices {
            requests.push((user.clone(), device.to_string(), algorithm.to_string()));
        }
    }
    Ok(Json(services.federation.claim_keys(requests).await?))
}

pub async fn changes(
    services: AppState,
    request: Ruma<get_key_changes::v3::Request>,
) -> ApiResult<get_key_changes::v3::Response> {
    let body = &request.body;
    let from = parse_token(&body.from)?;
    let to = parse_token(&body.to)?.saturating_sub(1);
    let (changed, left) = services.sync.key_changes(request.user()?, from, to)?;
    let parse = |users: Vec<String>| users.into_iter().filter_map(|u| ruma::UserId::parse(u).ok()).collect();
    Ok(get_key_changes::v3::Response::new(parse(changed), parse(left)))
}

/// `/keys/device_signing/upload`: UIA unless it is the first upload or changes nothing.
pub async fn upload_signing_keys(
    services: AppState,
    request: Ruma<ruma::api::client::keys::upload_signing_keys::v3::Request>,
) -> ApiResult<ruma::api::client::keys::upload_signing_keys::v3::Response> {
    let body = &request.body;
    let user = request.user()?.to_owned();
    let mut keys = Vec::new();
    for (kind, key) in [
        ("master", &body.master_key),
        ("self_signing", &body.self_signing_key),
        ("user_signing", &body.user_signing_key),
    ] {
        if let Some(key) = key {
            keys.push((kind, parsed(key)?));
        }
    }
    let e2ee = &services.e2ee;
    if e2ee.has_cross_signing(&user)? && !e2ee.cross_signing_unchanged(&user, &keys)? {
        super::account::require_password(&services, "device_signing_upload", &user, body.auth.as_ref())
            .await?;
    }
    e2ee.upload_cross_signing(&user, keys)?;
    Ok(ruma::api::client::keys::upload_signing_keys::v3::Response::new())
}

pub async fn upload_signatures(
    services: AppState,
    request: Ruma<ruma::api::client::keys::upload_signatures::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let mut signed = Vec::new();
    for (user, keys) in &request.body.signed_keys {
        for (key_id, object) in keys.iter() {
            let object: JsonValue =
                serde_json::from_str(object.get()).map_err(|e| Error::bad_json(e.to_string()))?;
            signed.push((user.clone(), key_id.to_string(), object));
        }
    }
    Ok(Json(services.e2ee.upload_signatures(request.user()?, signed)?))
}
