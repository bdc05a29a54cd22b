//! `/room_keys/version` and `/room_keys/keys`: server-side key backup.

use axum::Json;
use estuary_core::Error;
use ruma::api::client::backup::{
    add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
    delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
    get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
    get_latest_backup_info, update_backup_version,
};
use serde_json::{Value as JsonValue, json};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

type JsonResult = ApiResult<Json<JsonValue>>;

fn json_of<T>(raw: &ruma::serde::Raw<T>) -> Result<JsonValue, Error> {
    serde_json::from_str(raw.json().get()).map_err(|e| Error::bad_json(e.to_string()))
}

/// A backup version's `{algorithm, auth_data}`: an object whose
/// `algorithm` is a string, with `auth_data` (any JSON: it is the
/// algorithm's, and clients and SyTest send strings too); 400 otherwise.
fn version_info_of<T>(raw: &ruma::serde::Raw<T>) -> Result<JsonValue, Error> {
    let value = json_of(raw)?;
    if !value["algorithm"].is_string() || value.get("auth_data").is_none_or(JsonValue::is_null) {
        return Err(Error::bad_json("A backup version needs a string `algorithm` and `auth_data`"));
    }
    Ok(value)
}

pub async fn create(services: AppState, request: Ruma<create_backup_version::v3::Request>) -> JsonResult {
    let version = services.backup.create(request.user()?, version_info_of(&request.body.algorithm)?)?;
    Ok(Json(json!({"version": version})))
}

pub async fn latest(services: AppState, request: Ruma<get_latest_backup_info::v3::Request>) -> JsonResult {
    Ok(Json(services.backup.info(request.user()?, None)?))
}

pub async fn info(services: AppState, request: Ruma<get_backup_info::v3::Request>) -> JsonResult {
    Ok(Json(services.backup.info(request.user()?, Some(&request.body.version))?))
}

pub async fn update(services: AppState, request: Ruma<update_backup_version::v3::Request>) -> JsonResult {
    let body = &request.body;
    services.backup.update(request.user()?, &body.version, version_info_of(&body.algorithm)?)?;
    Ok(Json(json!({})))
}

pub async fn delete_version(
    services: AppState,
    request: Ruma<delete_backup_version::v3::Request>,
) -> JsonResult {
    services.backup.delete_version(request.user()?, &request.body.version)?;
    Ok(Json(json!({})))
}

pub async fn put_all(services: AppState, request: Ruma<add_backup_keys::v3::Request>) -> JsonResult {
    let body = &request.body;
    let mut keys = Vec::new();
    for (room, backup) in &body.rooms {
        for (session, data) in &backup.sessions {
            keys.push((room.to_string(), session.clone(), json_of(data)?));
        }
    }
    Ok(Json(services.backup.put_keys(request.user()?, &body.version, keys)?))
}

pub async fn put_room(
    services: AppState,
    request: Ruma<add_backup_keys_for_room::v3::Request>,
) -> JsonResult {
    let body = &request.body;
    let keys = body
        .sessions
        .iter()
        .map(|(session, data)| Ok((body.room_id.to_string(), session.clone(), json_of(data)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    Ok(Json(services.backup.put_keys(request.user()?, &body.version, keys)?))
}

pub async fn put_session(
    services: AppState,
    request: Ruma<add_backup_keys_for_session::v3::Request>,
) -> JsonResult {
    let body = &request.body;
    let keys = vec![(body.room_id.to_string(), body.session_id.clone(), json_of(&body.session_data)?)];
    Ok(Json(services.backup.put_keys(request.user()?, &body.version, keys)?))
}

pub async fn get_all(services: AppState, request: Ruma<get_backup_keys::v3::Request>) -> JsonResult {
    Ok(Json(services.backup.get_keys(request.user()?, &request.body.version, None, None)?))
}

pub async fn get_room(
    services: AppState,
    request: Ruma<get_backup_keys_for_room::v3::Request>,
) -> JsonResult {
    let body = &request.body;
    Ok(Json(services.backup.get_keys(request.user()?, &body.version, Some(body.room_id.as_str()), None)?))
}

pub async fn get_session(
    services: AppState,
    request: Ruma<get_backup_keys_for_session::v3::Request>,
) -> JsonResult {
    let body = &request.body;
    let user = request.user()?;
    Ok(Json(services.backup.get_keys(
        user,
        &body.version,
        Some(body.room_id.as_str()),
        Some(&body.session_id),
    )?))
}

pub async fn delete_all(services: AppState, request: Ruma<delete_backup_keys::v3::Request>) -> JsonResult {
    Ok(Json(services.backup.delete_keys(request.user()?, &request.body.version, None, None)?))
}

pub async fn delete_room(
    services: AppState,
    request: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> JsonResult {
    let body = &request.body;
    Ok(Json(services.backup.delete_keys(
        request.user()?,
        &body.version,
        Some(body.room_id.as_str()),
        None,
    )?))
}

pub async fn delete_session(
    services: AppState,
    request: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> JsonResult {
    let body = &request.body;
    let user = request.user()?;
    Ok(Json(services.backup.delete_keys(
        user,
        &body.version,
        Some(body.room_id.as_str()),
        Some(&body.session_id),
    )?))
}
