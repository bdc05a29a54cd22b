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
    let page =
        services.rooms.messages(request.user()?, request.sender_device.as_deref(), &body.room_id, query)?;
    let mut response = get_message_events::v3::Response::new();
    response.start = page.start;
    response.end = page.end;
    response.chunk = page.chunk.iter().map(raw).collect();
    response.state = page.state.iter().map(raw).collect();
    Ok(response)
}
