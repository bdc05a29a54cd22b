//! `/user/{userId}/filter`.

use ruma::api::client::filter::{create_filter, get_filter};

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

pub async fn create(
    services: AppState,
    request: Ruma<create_filter::v3::Request>,
) -> ApiResult<create_filter::v3::Response> {
    super::require_self(request.user()?, &request.body.user_id, "filters")?;
    let filter_id = services.filters.create(&request.body.user_id, request.body.filter.clone())?;
    Ok(create_filter::v3::Response::new(filter_id))
}

pub async fn get(
    services: AppState,
    request: Ruma<get_filter::v3::Request>,
) -> ApiResult<get_filter::v3::Response> {
    super::require_self(request.user()?, &request.body.user_id, "filters")?;
    let filter = services.filters.get(&request.body.user_id, &request.body.filter_id)?;
    Ok(get_filter::v3::Response::new(filter))
}
