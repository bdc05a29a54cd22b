//! `/rooms/{roomId}/messages`.

use estuary_service::rooms::{Direction, MessagesQuery};
use ruma::api::{Direction as RumaDirection, client::message::get_message_events};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};
use axum::Json;
use serde_json::Value as JsonValue;

pub async fn messages(
    services: AppState,
    request: Ruma<get_message_events::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let body = &request.body;
    let query = MessagesQuery {
        from: body.from.clone(),
        to: body.to.clone(),
        dir: match body.dir {
            RumaDirection::Forward => Direction::Forward,
            _ => Direction::Backward,
        },
        limit: u64::from(body.limit) as usize,
        filter: body.filter.clone(),
    };
    let (user, device, room_id) = (request.user()?, request.sender_device.as_deref(), &body.room_id);
    let (backwards, limit) = (query.dir == Direction::Backward, query.limit);
    let mut page = services.rooms.messages(user, device, room_id, query.clone())?;
    // Paging back past this server's oldest event: ask the room's other
    // servers for older history, then read again.
    if backwards && page.chunk.len() < limit && services.federation.backfill_from_servers(room_id).await? > 0
    {
        page = services.rooms.messages(user, device, room_id, query)?;
    }
    // The events are moved into the answer and serialised once (ruma's
    // response type would serialise each to a `Raw` first).
    let mut response = serde_json::Map::new();
    response.insert("start".into(), page.start.into());
    if let Some(end) = page.end {
        response.insert("end".into(), end.into());
    }
    response.insert("chunk".into(), JsonValue::Array(page.chunk));
    if !page.state.is_empty() {
        response.insert("state".into(), JsonValue::Array(page.state));
    }
    Ok(Json(JsonValue::Object(response)))
}
