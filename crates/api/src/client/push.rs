//! Push rules and `/notifications`.

use estuary_core::{Error, error::ErrorKind};
use ruma::{
    UserId,
    api::client::push::{
        delete_pushrule, get_notifications, get_pushrule, get_pushrule_actions, get_pushrule_enabled,
        get_pushrules_all, get_pushrules_global_scope, set_pushrule, set_pushrule_actions,
        set_pushrule_enabled,
    },
    push::{Action, InsertPushRuleError, RemovePushRuleError, Ruleset},
};
use serde_json::json;

use axum::extract::{Path, State};

use crate::{
    AppState,
    error::ApiResult,
    ruma_wrapper::{AuthedUser, Ruma},
};

fn not_found() -> Error {
    Error::not_found("No such push rule")
}

fn ruleset(services: &AppState, user: &UserId) -> Result<Ruleset, Error> {
    services.push.ruleset(user)
}

/// Actions the spec defines: `notify`, `set_tweak`, and the legacy
/// `dont_notify` and `coalesce` (which evaluate as no action). Anything
/// else is refused rather than stored and silently never acted on.
fn check_actions(actions: &[Action]) -> Result<(), Error> {
    for action in actions {
        if let Action::_Custom(_) = action {
            let name = serde_json::to_value(action).unwrap_or_default();
            if !matches!(name.as_str(), Some("dont_notify" | "coalesce")) {
                return Err(Error::bad_json(format!("Unrecognised push rule action: {name}")));
            }
        }
    }
    Ok(())
}

fn new_rule_actions(rule: &ruma::push::NewPushRule) -> &[Action] {
    use ruma::push::NewPushRule;
    match rule {
        NewPushRule::Override(r) | NewPushRule::Underride(r) => &r.actions,
        NewPushRule::Content(r) => &r.actions,
        NewPushRule::Room(r) => &r.actions,
        NewPushRule::Sender(r) => &r.actions,
        _ => &[],
    }
}

pub async fn all(
    services: AppState,
    request: Ruma<get_pushrules_all::v3::Request>,
) -> ApiResult<get_pushrules_all::v3::Response> {
    Ok(get_pushrules_all::v3::Response::new(ruleset(&services, request.user()?)?))
}

pub async fn global(
    services: AppState,
    request: Ruma<get_pushrules_global_scope::v3::Request>,
) -> ApiResult<get_pushrules_global_scope::v3::Response> {
    Ok(get_pushrules_global_scope::v3::Response::new(ruleset(&services, request.user()?)?))
}

pub async fn get(
    services: AppState,
    request: Ruma<get_pushrule::v3::Request>,
) -> ApiResult<get_pushrule::v3::Response> {
    let body = &request.body;
    let rules = ruleset(&services, request.user()?)?;
    let rule = rules.get(body.kind.clone(), &body.rule_id).ok_or_else(not_found)?;
    Ok(get_pushrule::v3::Response::new(rule.into()))
}

pub async fn set(
    services: AppState,
    request: Ruma<set_pushrule::v3::Request>,
) -> ApiResult<set_pushrule::v3::Response> {
    let body = &request.body;
    let user = request.user()?;
    check_actions(new_rule_actions(&body.rule))?;
    let mut rules = ruleset(&services, user)?;
    rules.insert(body.rule.clone(), body.after.as_deref(), body.before.as_deref()).map_err(|e| match e {
        InsertPushRuleError::UnknownRuleId => not_found(),
        InsertPushRuleError::ServerDefaultRuleId | InsertPushRuleError::InvalidRuleId => {
            Error::invalid_param(format!("Invalid rule ID: {e}"))
        }
        other => Error::bad_json(other.to_string()),
    })?;
    services.push.save(user, &rules)?;
    Ok(set_pushrule::v3::Response::new())
}

pub async fn delete(
    services: AppState,
    request: Ruma<delete_pushrule::v3::Request>,
) -> ApiResult<delete_pushrule::v3::Response> {
    let body = &request.body;
    let user = request.user()?;
    let mut rules = ruleset(&services, user)?;
    rules.remove(body.kind.clone(), &body.rule_id).map_err(|e| match e {
        RemovePushRuleError::NotFound => not_found(),
        other => Error::matrix(400, ErrorKind::InvalidParam, other.to_string()),
    })?;
    services.push.save(user, &rules)?;
    Ok(delete_pushrule::v3::Response::new())
}

pub async fn get_enabled(
    services: AppState,
    request: Ruma<get_pushrule_enabled::v3::Request>,
) -> ApiResult<get_pushrule_enabled::v3::Response> {
    let body = &request.body;
    let rules = ruleset(&services, request.user()?)?;
    let rule = rules.get(body.kind.clone(), &body.rule_id).ok_or_else(not_found)?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

pub async fn set_enabled(
    services: AppState,
    request: Ruma<set_pushrule_enabled::v3::Request>,
) -> ApiResult<set_pushrule_enabled::v3::Response> {
    let body = &request.body;
    let user = request.user()?;
    let mut rules = ruleset(&services, user)?;
    rules.set_enabled(body.kind.clone(), &body.rule_id, body.enabled).map_err(|_| not_found())?;
    services.push.save(user, &rules)?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

pub async fn get_actions(
    services: AppState,
    request: Ruma<get_pushrule_actions::v3::Request>,
) -> ApiResult<get_pushrule_actions::v3::Response> {
    let body = &request.body;
    let rules = ruleset(&services, request.user()?)?;
    let rule = rules.get(body.kind.clone(), &body.rule_id).ok_or_else(not_found)?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()))
}

pub async fn set_actions(
    services: AppState,
    request: Ruma<set_pushrule_actions::v3::Request>,
) -> ApiResult<set_pushrule_actions::v3::Response> {
    let body = &request.body;
    let user = request.user()?;
    check_actions(&body.actions)?;
    let mut rules = ruleset(&services, user)?;
    rules.set_actions(body.kind.clone(), &body.rule_id, body.actions.clone()).map_err(|_| not_found())?;
    services.push.save(user, &rules)?;
    Ok(set_pushrule_actions::v3::Response::new())
}

/// The push-rule kinds, in the order the spec evaluates them.
const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

/// `GET /pushrules/global/{kind}/`: the rules of one kind (the trailing slash
/// asks for the whole list, as SyTest and older clients do).
pub async fn kind(
    State(services): State<AppState>,
    AuthedUser(user): AuthedUser,
    Path(kind): Path<String>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    if !KINDS.contains(&kind.as_str()) {
        return Err(malformed_path().into());
    }
    let rules = serde_json::to_value(ruleset(&services, &user)?).map_err(Error::from)?;
    // ruma leaves empty kinds out of a ruleset; a kind's list is then empty.
    Ok(axum::Json(rules.get(kind.as_str()).cloned().unwrap_or_else(|| json!([]))))
}

/// A path under `/pushrules/` that names no scope, kind, rule or attribute the
/// API has is a malformed request (400), not an unknown endpoint.
pub fn is_push_rule_path(path: &str) -> bool {
    ["/_matrix/client/v3/pushrules/", "/_matrix/client/r0/pushrules/"].iter().any(|p| path.starts_with(p))
}

pub fn malformed_path() -> Error {
    Error::unrecognized(400, "Malformed push rule path: expected /pushrules/global/{kind}/{ruleId}")
}

/// `/notifications`, written by hand for its event shape.
pub async fn notifications(
    services: AppState,
    request: Ruma<get_notifications::v3::Request>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    let body = &request.body;
    let user = request.user()?;
    let before = body.from.as_deref().map(estuary_service::rooms::parse_token).transpose()?;
    let limit = body.limit.map_or(50, |l| u64::from(l) as usize).clamp(1, 100);
    let only_highlight = body.only.as_deref() == Some("highlight");
    let (rows, next) = services.rooms.notifications(user, before, limit, only_highlight)?;
    let mut notifications = Vec::new();
    for (stream, (room_id, event_id, _, _, actions)) in rows {
        let Ok(event_id) = ruma::EventId::parse(&event_id) else { continue };
        let Some(stored) = services.rooms.stored(&event_id)? else { continue };
        let room = ruma::RoomId::parse(&room_id).map_err(Error::internal)?;
        let read = services.ephemeral.read_position(user, &room)? >= stream;
        notifications.push(json!({
            "actions": actions,
            "ts": stored.pdu()?.origin_server_ts,
            "event": services.rooms.client_event(stored, None)?,
            "read": read,
            "room_id": room_id,
            "profile_tag": null,
        }));
    }
    let mut response = json!({"notifications": notifications});
    if let Some(next) = next {
        response["next_token"] = format!("s{next}").into();
    }
    Ok(axum::Json(response))
}

pub async fn get_pushers(
    services: AppState,
    request: Ruma<ruma::api::client::push::get_pushers::v3::Request>,
) -> ApiResult<ruma::api::client::push::get_pushers::v3::Response> {
    let pushers = services
        .push
        .pushers(request.user()?)?
        .into_iter()
        .filter_map(|p| serde_json::from_value(p).ok())
        .collect();
    Ok(ruma::api::client::push::get_pushers::v3::Response::new(pushers))
}

pub async fn set_pusher(
    services: AppState,
    request: Ruma<ruma::api::client::push::set_pusher::v3::Request>,
) -> ApiResult<ruma::api::client::push::set_pusher::v3::Response> {
    use ruma::api::client::push::set_pusher::v3::PusherAction;
    let user = request.user()?;
    match &request.body.action {
        PusherAction::Post(post) => {
            let pusher = serde_json::to_value(&post.pusher).map_err(Error::from)?;
            services.push.set_pusher(user, request.sender_device.as_deref(), pusher, post.append)?;
        }
        PusherAction::Delete(ids) => services.push.delete_pusher(user, &ids.app_id, &ids.pushkey)?,
        _ => return Err(Error::bad_json("Unknown pusher action").into()),
    }
    Ok(ruma::api::client::push::set_pusher::v3::Response::new())
}
