//! Users in Synapse's admin API: the list, one user's record (read, create,
//! change), deactivation, passwords, flags and a user's rooms.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use estuary_core::Error;
use estuary_service::{accounts::Account, rate_limits::Override};
use ruma::{UserId, profile::ProfileFieldName};
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use super::{
    extract::{AdminBody, AdminQuery, Dir, ServerAdmin, local_user, present, user_id},
    listing::{blocking, page_body, sort_rows},
};
use crate::{AppState, error::ApiResult};

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    from: usize,
    #[serde(default = "super::extract::default_limit")]
    limit: usize,
    user_id: Option<String>,
    name: Option<String>,
    guests: Option<bool>,
    admins: Option<bool>,
    deactivated: Option<bool>,
    locked: Option<bool>,
    order_by: Option<String>,
    #[serde(default)]
    dir: Dir,
}

/// The columns a user list sorts by (Synapse's set).
const USER_ORDERS: &[&str] = &[
    "name",
    "displayname",
    "is_guest",
    "admin",
    "deactivated",
    "user_type",
    "avatar_url",
    "shadow_banned",
    "creation_ts",
    "last_seen_ts",
    "locked",
];

/// Which API version's filter rules: v2 hides deactivated users unless
/// asked; v3 filters only when a flag is given.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListVersion {
    V2,
    V3,
}

/// `GET /_synapse/admin/v2/users`.
pub async fn list_v2(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> ApiResult<Json<JsonValue>> {
    blocking(move || list(&services, query, ListVersion::V2)).await
}

/// `GET /_synapse/admin/v3/users`.
pub async fn list_v3(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    AdminQuery(query): AdminQuery<ListQuery>,
) -> ApiResult<Json<JsonValue>> {
    blocking(move || list(&services, query, ListVersion::V3)).await
}

fn list(services: &AppState, query: ListQuery, version: ListVersion) -> Result<JsonValue, Error> {
    let order_by = query.order_by.as_deref().unwrap_or("name");
    if !USER_ORDERS.contains(&order_by) {
        return Err(Error::invalid_param(format!(
            "Query parameter 'order_by' must be one of {USER_ORDERS:?}"
        )));
    }
    let keeps = |flag: Option<bool>, value: bool| flag.is_none_or(|wanted| wanted == value);
    let mut rows = Vec::new();
    for (user, account) in services.accounts.all_accounts()? {
        let locked = services.accounts.restrictions.of(&user).locked;
        let deactivated_shown = match (version, query.deactivated) {
            (ListVersion::V2, Some(true)) => true,
            (ListVersion::V2, _) => !account.deactivated,
            (ListVersion::V3, flag) => keeps(flag, account.deactivated),
        };
        let guests_shown = match (version, query.guests) {
            (ListVersion::V2, Some(false)) | (ListVersion::V3, Some(false)) => !account.guest,
            (ListVersion::V3, Some(true)) => account.guest,
            _ => true,
        };
        if !deactivated_shown
            || !guests_shown
            || !keeps(query.admins, account.admin)
            || (locked && query.locked != Some(true))
            || query.user_id.as_deref().is_some_and(|part| !user.as_str().contains(part))
        {
            continue;
        }
        let row = user_row(services, &user, &account, false)?;
        if let Some(part) = query.name.as_deref().filter(|_| query.user_id.is_none())
            && !matches_name(&user, row["displayname"].as_str(), part)
        {
            continue;
        }
        rows.push(row);
    }
    sort_rows(&mut rows, order_by, query.dir == Dir::Backwards, "name");
    let body = page_body("users", rows, query.from, query.limit, true);
    Ok(body)
}

/// Synapse's `name` filter: part of the localpart, or of the display name
/// (case-insensitive).
fn matches_name(user: &UserId, displayname: Option<&str>, part: &str) -> bool {
    let part = part.to_lowercase();
    user.localpart().to_lowercase().contains(&part)
        || displayname.is_some_and(|name| name.to_lowercase().contains(&part))
}

/// A user as Synapse's admin API shows it. The list gives `creation_ts` in
/// ms; the single user (`detailed`) in seconds, with more fields, as the
/// admin UIs expect.
fn user_row(
    services: &AppState,
    user: &UserId,
    account: &Account,
    detailed: bool,
) -> Result<JsonValue, Error> {
    let profile = |field: ProfileFieldName| services.profile.field_string(user, &field);
    let last_seen_ts = services.accounts.devices(user)?.iter().filter_map(|(_, d)| d.last_seen_ts).max();
    let restrictions = services.accounts.restrictions.of(user);
    let mut row = json!({
        "name": user,
        "user_type": account.user_type,
        "is_guest": account.guest,
        "admin": account.admin,
        "deactivated": account.deactivated,
        "shadow_banned": restrictions.shadow_banned,
        "locked": restrictions.locked,
        "displayname": profile(ProfileFieldName::DisplayName)?,
        "avatar_url": profile(ProfileFieldName::AvatarUrl)?,
        "creation_ts": account.created_ts,
        "approved": true,
        "erased": services.rooms.is_erased(user),
        "last_seen_ts": last_seen_ts,
    });
    if detailed {
        row["creation_ts"] = json!(account.created_ts / 1000);
        row["suspended"] = json!(restrictions.suspended);
        row["appservice_id"] = JsonValue::Null;
        row["consent_server_notice_sent"] = JsonValue::Null;
        row["consent_version"] = JsonValue::Null;
        row["consent_ts"] = JsonValue::Null;
        row["threepids"] = json!([]);
        row["external_ids"] = json!([]);
    }
    Ok(row)
}

fn user_record(services: &AppState, user: &UserId) -> Result<JsonValue, Error> {
    let account = services.accounts.account(user)?.ok_or_else(|| Error::not_found("User not found"))?;
    user_row(services, user, &account, true)
}

/// `GET /_synapse/admin/v2/users/{userId}`.
pub async fn get(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    Ok(Json(user_record(&services, &user)?))
}

/// The body of `PUT /v2/users/{userId}`. The UIs send the whole record
/// back; fields not listed here are ignored.
#[derive(Deserialize)]
pub struct PutUser {
    password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    displayname: Option<String>,
    avatar_url: Option<String>,
    admin: Option<bool>,
    deactivated: Option<bool>,
    locked: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    user_type: Option<Option<String>>,
}

fn yes() -> bool {
    true
}

/// Passwords longer than this are refused, as Synapse does.
const MAX_PASSWORD_LEN: usize = 512;

/// `PUT /_synapse/admin/v2/users/{userId}`: create the user (201) or change it (200).
pub async fn put(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminBody(body): AdminBody<PutUser>,
) -> ApiResult<(StatusCode, Json<JsonValue>)> {
    let user = user_id(&user)?;
    if !services.accounts.is_local(&user) {
        return Err(Error::invalid_param("This endpoint can only be used with local users").into());
    }
    if body.deactivated == Some(true) && body.locked == Some(true) {
        return Err(Error::invalid_param("A user can't be deactivated and locked").into());
    }
    if body.password.as_ref().is_some_and(|p| p.len() > MAX_PASSWORD_LEN) {
        return Err(Error::invalid_param("The password is too long").into());
    }
    if let Some(Some(kind)) = &body.user_type
        && !matches!(kind.as_str(), "bot" | "support")
    {
        return Err(Error::invalid_param("Invalid user type").into());
    }
    let created = match services.accounts.account(&user)? {
        None => {
            create_user(&services, &user, &body).await?;
            tracing::info!(%admin, target = %user, "admin created a user");
            true
        }
        Some(account) => {
            modify_user(&services, &admin, &user, &account, &body).await?;
            tracing::info!(%admin, target = %user, "admin changed a user");
            false
        }
    };
    set_profile(&services, &user, &body).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(user_record(&services, &user)?)))
}

async fn create_user(services: &AppState, user: &UserId, body: &PutUser) -> Result<(), Error> {
    let user_type = body.user_type.clone().flatten();
    services
        .accounts
        .create_account_as_admin(user, body.password.clone(), body.admin.unwrap_or(false), user_type)
        .await?;
    if body.displayname.is_none() {
        // New accounts are named after their localpart, as on registration.
        let name = ruma::profile::ProfileFieldValue::DisplayName(user.localpart().to_owned());
        services.profile.set_field(user, user, name)?;
    }
    if body.locked == Some(true) {
        services.accounts.restrictions.update(user, |r| r.locked = true)?;
    }
    Ok(())
}

async fn modify_user(
    services: &AppState,
    admin: &UserId,
    user: &UserId,
    account: &Account,
    body: &PutUser,
) -> Result<(), Error> {
    if body.admin == Some(false) && admin == user {
        return Err(Error::invalid_param("You may not demote yourself"));
    }
    match body.deactivated {
        Some(true) if !account.deactivated => services.deactivate_user(user, false).await?,
        Some(false) if account.deactivated => {
            services.accounts.reactivate(user, body.password.clone()).await?
        }
        _ => {
            if let Some(password) = &body.password {
                set_password(services, user, password.clone(), body.logout_devices).await?;
            }
        }
    }
    services.accounts.update_account(user, |a| {
        a.admin = body.admin.unwrap_or(a.admin);
        if let Some(user_type) = &body.user_type {
            a.user_type = user_type.clone();
        }
    })?;
    if let Some(locked) = body.locked {
        services.accounts.restrictions.update(user, |r| r.locked = locked)?;
    }
    Ok(())
}

/// Display name and avatar: an empty string removes the field; either
/// change reaches the user's member events.
async fn set_profile(services: &AppState, user: &UserId, body: &PutUser) -> Result<(), Error> {
    use ruma::profile::ProfileFieldValue;
    let mut changed = false;
    if let Some(name) = &body.displayname {
        match name.is_empty() {
            true => services.profile.delete_field(user, user, &ProfileFieldName::DisplayName)?,
            false => services.profile.set_field(user, user, ProfileFieldValue::DisplayName(name.clone()))?,
        }
        changed = true;
    }
    if let Some(url) = &body.avatar_url {
        match url.is_empty() {
            true => services.profile.delete_field(user, user, &ProfileFieldName::AvatarUrl)?,
            false => {
                let url = ruma::OwnedMxcUri::from(url.as_str());
                services.profile.set_field(user, user, ProfileFieldValue::AvatarUrl(url))?
            }
        }
        changed = true;
    }
    if changed && !services.accounts.account(user)?.is_some_and(|a| a.deactivated) {
        services.rooms.propagate_profile(user).await?;
    }
    Ok(())
}

/// A new password; with `logout_devices`, every device is logged out (and
/// its keys and pushers go with it).
async fn set_password(
    services: &AppState,
    user: &UserId,
    password: String,
    logout: bool,
) -> Result<(), Error> {
    services.accounts.set_password(user, password, false, None).await?;
    if logout {
        services.devices.delete_all(user)?;
    }
    Ok(())
}

#[derive(Deserialize)]
pub struct DeactivateBody {
    #[serde(default)]
    erase: bool,
}

/// `POST /_synapse/admin/v1/deactivate/{userId}`.
pub async fn deactivate(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminBody(body): AdminBody<DeactivateBody>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    services.deactivate_user(&user, body.erase).await?;
    tracing::info!(%admin, target = %user, erase = body.erase, "admin deactivated a user");
    Ok(Json(json!({"id_server_unbind_result": "success"})))
}

#[derive(Deserialize)]
pub struct ResetPassword {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`.
pub async fn reset_password(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminBody(body): AdminBody<ResetPassword>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    if body.new_password.len() > MAX_PASSWORD_LEN {
        return Err(Error::invalid_param("The password is too long").into());
    }
    set_password(&services, &user, body.new_password, body.logout_devices).await?;
    tracing::info!(%admin, target = %user, "admin reset a password");
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/whois/{userId}`: devices and where they were last seen.
pub async fn whois(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let mut devices = serde_json::Map::new();
    for (device_id, device) in services.accounts.devices(&user)? {
        let connection =
            json!({"ip": device.last_seen_ip, "last_seen": device.last_seen_ts, "user_agent": null});
        devices.insert(device_id.to_string(), json!({"sessions": [{"connections": [connection]}]}));
    }
    Ok(Json(json!({"user_id": user, "devices": devices})))
}

/// `POST /_synapse/admin/v1/users/{userId}/login`: an access token of the
/// user, on a new device named for the purpose, for support work.
pub async fn login_as(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    if user == admin {
        return Err(Error::invalid_param("Cannot use admin API to login as self").into());
    }
    let issued = services.accounts.issue_tokens(&user, None, Some("Admin login".to_owned()), false)?;
    tracing::info!(%admin, target = %user, device = %issued.device_id, "admin logged in as a user");
    Ok(Json(json!({"access_token": issued.access_token})))
}

#[derive(Deserialize)]
pub struct SuspendBody {
    suspend: bool,
}

/// `PUT /_synapse/admin/v1/suspend/{userId}`.
pub async fn suspend(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminBody(body): AdminBody<SuspendBody>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    services.accounts.restrictions.update(&user, |r| r.suspended = body.suspend)?;
    tracing::info!(%admin, target = %user, suspended = body.suspend, "admin changed a suspension");
    Ok(Json(json!({format!("user_{user}_suspended"): body.suspend})))
}

/// `POST` (ban) and `DELETE` (lift) `/_synapse/admin/v1/users/{userId}/shadow_ban`.
pub async fn shadow_ban(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    method: http::Method,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let banned = method == http::Method::POST;
    services.accounts.restrictions.update(&user, |r| r.shadow_banned = banned)?;
    tracing::info!(%admin, target = %user, banned, "admin changed a shadow-ban");
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/users/{userId}/admin`.
pub async fn get_admin(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let admin = services.accounts.account(&user)?.is_some_and(|a| a.admin);
    Ok(Json(json!({"admin": admin})))
}

#[derive(Deserialize)]
pub struct AdminFlag {
    admin: bool,
}

/// `PUT /_synapse/admin/v1/users/{userId}/admin`.
pub async fn set_admin(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminBody(body): AdminBody<AdminFlag>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    if user == admin && !body.admin {
        return Err(Error::invalid_param("You may not demote yourself").into());
    }
    services.accounts.update_account(&user, |a| a.admin = body.admin)?;
    tracing::info!(%admin, target = %user, admin_flag = body.admin, "admin changed a user's admin flag");
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`.
pub async fn joined_rooms(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = user_id(&user)?;
    let rooms = services.rooms.rooms_with_membership(&user, "join")?;
    Ok(Json(json!({"total": rooms.len(), "joined_rooms": rooms})))
}

/// `GET /_synapse/admin/v1/users/{userId}/memberships`: every room the user
/// has a membership in, with it.
pub async fn memberships(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = user_id(&user)?;
    let memberships: serde_json::Map<_, _> = services
        .rooms
        .memberships(&user)?
        .into_iter()
        .map(|(room_id, membership)| (room_id.to_string(), json!(membership)))
        .collect();
    Ok(Json(json!({"total": memberships.len(), "memberships": memberships})))
}

/// `GET /_synapse/admin/v1/users/{userId}/pushers`.
pub async fn pushers(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let pushers = services.push.pushers(&user)?;
    Ok(Json(json!({"total": pushers.len(), "pushers": pushers})))
}

/// `GET /_synapse/admin/v1/users/{userId}/override_ratelimit`: `{}` without one.
pub async fn get_rate_limit_override(
    State(services): State<AppState>,
    ServerAdmin(_): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let custom = services.rate_limits.override_of(&user);
    Ok(Json(custom.map_or_else(|| json!({}), |o| json!(o))))
}

#[derive(Deserialize)]
pub struct RateLimitOverride {
    #[serde(default)]
    messages_per_second: u32,
    #[serde(default)]
    burst_count: u32,
}

/// `POST /_synapse/admin/v1/users/{userId}/override_ratelimit`: the user's
/// own message limit; zeros exempt the user from every limit.
pub async fn set_rate_limit_override(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
    AdminBody(body): AdminBody<RateLimitOverride>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    let custom = Override { messages_per_second: body.messages_per_second, burst_count: body.burst_count };
    services.rate_limits.set_override(&user, Some(custom))?;
    tracing::info!(%admin, target = %user, ?custom, "admin overrode a user's rate limit");
    Ok(Json(json!(custom)))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit`.
pub async fn delete_rate_limit_override(
    State(services): State<AppState>,
    ServerAdmin(admin): ServerAdmin,
    Path(user): Path<String>,
) -> ApiResult<Json<JsonValue>> {
    let user = local_user(&services, &user)?;
    services.rate_limits.set_override(&user, None)?;
    tracing::info!(%admin, target = %user, "admin removed a user's rate limit override");
    Ok(Json(json!({})))
}
