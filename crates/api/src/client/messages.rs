//! `/rooms/{roomId}/messages`.

use estuary_service::rooms::{ClientEvent, Direction, MessagesQuery};
use ruma::api::{Direction as RumaDirection, client::message::get_message_events};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};
use axum::Json;
use serde::Serialize;

pub async fn messages(
    services: AppState,
    request: Ruma<get_message_events::v3::Request>,
) -> ApiResult<Json<MessagesResponse>> {
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
    // The events are moved into the answer and written once, from their
    // stored text (ruma's response type would serialise each to a `Raw` first).
    Ok(Json(MessagesResponse { start: page.start, end: page.end, chunk: page.chunk, state: page.state }))
}

#[derive(Serialize)]
pub struct MessagesResponse {
    start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<String>,
    chunk: Vec<ClientEvent>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    state: Vec<ClientEvent>,
}
