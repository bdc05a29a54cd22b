//! Typing, receipts, read markers and room tags.

use estuary_core::Error;
use ruma::{
    RoomId, UserId,
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
        tag::{create_tag, delete_tag, get_tags},
    },
    events::tag::Tags,
};
use serde_json::{Value as JsonValue, json};

use std::time::Duration;

use crate::{
    AppState,
    error::ApiResult,
    ruma_wrapper::{AuthedUser, Ruma},
};

/// `PUT /rooms/{roomId}/typing/{userId}`. Parsed here rather than by ruma,
/// whose type requires `timeout` with `typing: true`; the spec does not
/// (30 s when absent, as Synapse does).
pub async fn typing(
    axum::extract::State(services): axum::extract::State<AppState>,
    AuthedUser(user): AuthedUser,
    axum::extract::Path((room_id, user_id)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<JsonValue>> {
    let room_id = RoomId::parse(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    if user.as_str() != user_id {
        return Err(Error::forbidden("You can only set your own typing state").into());
    }
    let body: JsonValue =
        serde_json::from_slice(&body).map_err(|e| Error::not_json(format!("Invalid JSON: {e}")))?;
    let typing = body["typing"].as_bool().ok_or_else(|| Error::bad_json("`typing` must be true or false"))?;
    let timeout = match &body["timeout"] {
        JsonValue::Null => DEFAULT_TYPING_TIMEOUT,
        value => Duration::from_millis(
            value.as_u64().ok_or_else(|| Error::bad_json("`timeout` must be a number"))?,
        ),
    };
    services.ephemeral.set_typing(&room_id, &user, typing.then_some(timeout))?;
    Ok(axum::Json(json!({})))
}

/// How long a `typing: true` without `timeout` lasts.
const DEFAULT_TYPING_TIMEOUT: Duration = Duration::from_secs(30);

fn set_fully_read(
    services: &AppState,
    user: &UserId,
    room_id: &RoomId,
    event_id: &ruma::EventId,
) -> Result<(), Error> {
    match services.rooms.stored(event_id)? {
        Some(stored) if stored.room_id == room_id => {}
        _ => return Err(Error::not_found("Event not found in this room")),
    }
    let content = serde_json::value::to_raw_value(&json!({"event_id": event_id}))?;
    services.account_data.set_internal(user, Some(room_id), "m.fully_read", content)
}

pub async fn receipt(
    services: AppState,
    request: Ruma<create_receipt::v3::Request>,
) -> ApiResult<create_receipt::v3::Response> {
    let body = &request.body;
    let user = request.user()?;
    match &body.receipt_type {
        ReceiptType::FullyRead => set_fully_read(&services, user, &body.room_id, &body.event_id)?,
        kind @ (ReceiptType::Read | ReceiptType::ReadPrivate) => set_read_receipt(
            &services,
            user,
            &body.room_id,
            kind.as_str(),
            &body.event_id,
            body.thread.as_str(),
        )?,
        other => return Err(Error::invalid_param(format!("Unknown receipt type {other}")).into()),
    }
    Ok(create_receipt::v3::Response::new())
}

/// A read receipt; when it clears the room's notifications, the user's
/// push gateways get the new badge count.
fn set_read_receipt(
    services: &AppState,
    user: &UserId,
    room_id: &RoomId,
    kind: &str,
    event_id: &ruma::EventId,
    thread: Option<&str>,
) -> Result<(), Error> {
    // Receipts are frequent: the unread checks are only for users with pushers.
    let pushes = !services.push.pushers(user)?.is_empty();
    let had_unread = pushes && services.rooms.has_unread(user, room_id)?;
    services.ephemeral.set_receipt(room_id, user, kind, event_id, thread)?;
    if had_unread && !services.rooms.has_unread(user, room_id)? {
        services.rooms.push_badge(user)?;
    }
    Ok(())
}

pub async fn read_markers(
    services: AppState,
    request: Ruma<set_read_marker::v3::Request>,
) -> ApiResult<set_read_marker::v3::Response> {
    let body = &request.body;
    let user = request.user()?;
    if let Some(event_id) = &body.fully_read {
        set_fully_read(&services, user, &body.room_id, event_id)?;
    }
    if let Some(event_id) = &body.read_receipt {
        set_read_receipt(&services, user, &body.room_id, "m.read", event_id, None)?;
    }
    if let Some(event_id) = &body.private_read_receipt {
        set_read_receipt(&services, user, &body.room_id, "m.read.private", event_id, None)?;
    }
    Ok(set_read_marker::v3::Response::new())
}

/// Tags live in the room account data `m.tag`.
fn load_tags(services: &AppState, user: &UserId, room_id: &RoomId) -> Result<JsonValue, Error> {
    match services.account_data.get(user, Some(room_id), "m.tag") {
        Ok(raw) => Ok(serde_json::from_str::<JsonValue>(raw.get())?["tags"].clone()),
        Err(Error::Matrix { status: 404, .. }) => Ok(json!({})),
        Err(err) => Err(err),
    }
}

fn store_tags(services: &AppState, user: &UserId, room_id: &RoomId, tags: JsonValue) -> Result<(), Error> {
    let content = serde_json::value::to_raw_value(&json!({"tags": tags}))?;
    services.account_data.set(user, Some(room_id), "m.tag", content)
}

pub async fn get(
    services: AppState,
    request: Ruma<get_tags::v3::Request>,
) -> ApiResult<get_tags::v3::Response> {
    let body = &request.body;
    super::require_self(request.user()?, &body.user_id, "tags")?;
    let tags = load_tags(&services, &body.user_id, &body.room_id)?;
    let tags: Tags = serde_json::from_value(tags).unwrap_or_default();
    Ok(get_tags::v3::Response::new(tags))
}

pub async fn put(
    services: AppState,
    request: Ruma<create_tag::v3::Request>,
) -> ApiResult<create_tag::v3::Response> {
    let body = &request.body;
    super::require_self(request.user()?, &body.user_id, "tags")?;
    let mut tags = load_tags(&services, &body.user_id, &body.room_id)?;
    if !tags.is_object() {
        tags = json!({});
    }
    tags[&body.tag] = serde_json::to_value(&body.tag_info).map_err(Error::from)?;
    store_tags(&services, &body.user_id, &body.room_id, tags)?;
    Ok(create_tag::v3::Response::new())
}

pub async fn delete(
    services: AppState,
    request: Ruma<delete_tag::v3::Request>,
) -> ApiResult<delete_tag::v3::Response> {
    let body = &request.body;
    super::require_self(request.user()?, &body.user_id, "tags")?;
    let mut tags = load_tags(&services, &body.user_id, &body.room_id)?;
    if let Some(map) = tags.as_object_mut() {
        map.remove(&body.tag);
    }
    store_tags(&services, &body.user_id, &body.room_id, tags)?;
    Ok(delete_tag::v3::Response::new())
}
