//! `POST /search` and `POST /user_directory/search`.

use axum::Json;
use estuary_core::Error;
use estuary_service::search::SearchRequest;
use ruma::api::client::{
    search::search_events::{
        self,
        v3::{GroupingKey, OrderBy},
    },
    user_directory::search_users,
};
use serde_json::{Value as JsonValue, json};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn search(
    services: AppState,
    request: Ruma<search_events::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let user = request.user()?;
    let Some(criteria) = &request.body.search_categories.room_events else {
        // Only room events can be searched; other categories find nothing.
        return Ok(Json(json!({"search_categories": {}})));
    };
    let context = &criteria.event_context;
    let grouped_by =
        |key: GroupingKey| criteria.groupings.group_by.iter().any(|g| g.key.as_ref() == Some(&key));
    let search_request = SearchRequest {
        term: criteria.search_term.clone(),
        keys: criteria.keys.iter().flatten().map(|k| k.as_str().to_owned()).collect(),
        filter: criteria.filter.clone(),
        order_by_rank: !matches!(criteria.order_by, Some(OrderBy::Recent)),
        next_batch: request.body.next_batch.clone(),
        event_context: Some((
            u64::from(context.before_limit) as usize,
            u64::from(context.after_limit) as usize,
            context.include_profile,
        )),
        include_state: criteria.include_state.unwrap_or(false),
        group_by_room: grouped_by(GroupingKey::RoomId),
        group_by_sender: grouped_by(GroupingKey::Sender),
    };
    if search_request.term.len() > 1000 {
        return Err(Error::invalid_param("search_term is too long").into());
    }
    Ok(Json(services.search.search(user, &search_request)?))
}

pub async fn user_directory(
    services: AppState,
    request: Ruma<search_users::v3::Request>,
) -> ApiResult<Json<JsonValue>> {
    let limit = (u64::from(request.body.limit) as usize).clamp(1, 100);
    Ok(Json(services.user_directory.search(request.user()?, &request.body.search_term, limit)?))
}
