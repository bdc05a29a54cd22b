//! `/rooms/{roomId}/messages`.

use estuary_service::rooms::{Direction, MessagesQuery};
use ruma::api::{Direction as RumaDirection, client::message::get_message_events};

use super::room::raw;
use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn messages(
    services: AppState,
    request: Ruma<get_message_events::v3::Request>,
) -> ApiResult<get_message_events::v3::Response> {
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
    let mut response = get_message_events::v3::Response::new();
    response.start = page.start;
    response.end = page.end;
    response.chunk = page.chunk.iter().map(raw).collect();
    response.state = page.state.iter().map(raw).collect();
    Ok(response)
}
