//! `/relations`, `/threads`, `/context`, `/timestamp_to_event` and reports.

use estuary_service::rooms::{Direction, RelationsPage, RelationsQuery};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, RoomId, UInt, UserId,
    api::{
        Direction as RumaDirection,
        client::{
            context::get_context,
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            reporting::report_user,
            room::{get_event_by_timestamp, report_content, report_room},
            threads::get_threads,
        },
    },
};

use super::room::raw;
use estuary_service::rate_limits::Action;

use crate::{AppState, error::ApiResult, ruma_wrapper::Ruma};

fn direction(dir: RumaDirection) -> Direction {
    match dir {
        RumaDirection::Forward => Direction::Forward,
        _ => Direction::Backward,
    }
}

/// The fields the three `/relations` endpoints share.
struct RelationsArgs<'a> {
    room_id: &'a RoomId,
    event_id: &'a EventId,
    from: Option<&'a str>,
    to: Option<&'a str>,
    limit: Option<UInt>,
    dir: RumaDirection,
    recurse: bool,
}

fn relations_page(
    services: &AppState,
    user: &UserId,
    args: RelationsArgs<'_>,
    rel_type: Option<&str>,
    event_type: Option<&str>,
) -> ApiResult<RelationsPage> {
    let query = RelationsQuery {
        rel_type,
        event_type,
        from: args.from,
        to: args.to,
        limit: args.limit.map_or(50, |l| u64::from(l) as usize),
        dir: direction(args.dir),
        recurse: args.recurse,
    };
    Ok(services.rooms.relations(user, args.room_id, args.event_id, query)?)
}

macro_rules! relations_response {
    ($module:ident, $page:expr) => {{
        let page = $page;
        let mut response = $module::v1::Response::new(page.chunk.iter().map(raw).collect());
        response.next_batch = page.next_batch;
        response.recursion_depth = page.recursion_depth.and_then(|d| UInt::new(d as u64));
        Ok(response)
    }};
}

macro_rules! relations_args {
    ($body:expr) => {
        RelationsArgs {
            room_id: &$body.room_id,
            event_id: &$body.event_id,
            from: $body.from.as_deref(),
            to: $body.to.as_deref(),
            limit: $body.limit,
            dir: $body.dir,
            recurse: $body.recurse,
        }
    };
}

pub async fn all(
    services: AppState,
    request: Ruma<get_relating_events::v1::Request>,
) -> ApiResult<get_relating_events::v1::Response> {
    let body = &request.body;
    relations_response!(
        get_relating_events,
        relations_page(&services, request.user()?, relations_args!(body), None, None)?
    )
}

pub async fn by_rel_type(
    services: AppState,
    request: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> ApiResult<get_relating_events_with_rel_type::v1::Response> {
    let body = &request.body;
    let rel_type = body.rel_type.to_string();
    let page = relations_page(&services, request.user()?, relations_args!(body), Some(&rel_type), None)?;
    relations_response!(get_relating_events_with_rel_type, page)
}

pub async fn by_rel_and_event_type(
    services: AppState,
    request: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> ApiResult<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let body = &request.body;
    let (rel_type, event_type) = (body.rel_type.to_string(), body.event_type.to_string());
    let page = relations_page(
        &services,
        request.user()?,
        relations_args!(body),
        Some(&rel_type),
        Some(&event_type),
    )?;
    relations_response!(get_relating_events_with_rel_type_and_event_type, page)
}

pub async fn threads(
    services: AppState,
    request: Ruma<get_threads::v1::Request>,
) -> ApiResult<get_threads::v1::Response> {
    use get_threads::v1::IncludeThreads;
    let body = &request.body;
    let participated = body.include == IncludeThreads::Participated;
    let limit = body.limit.map_or(50, |l| u64::from(l) as usize);
    let (chunk, next) =
        services.rooms.threads(request.user()?, &body.room_id, participated, body.from.as_deref(), limit)?;
    let mut response = get_threads::v1::Response::new(chunk.iter().map(raw).collect());
    response.next_batch = next;
    Ok(response)
}

pub async fn context(
    services: AppState,
    request: Ruma<get_context::v3::Request>,
) -> ApiResult<get_context::v3::Response> {
    let body = &request.body;
    let context = services.rooms.context(
        request.user()?,
        request.sender_device.as_deref(),
        &body.room_id,
        &body.event_id,
        u64::from(body.limit) as usize,
        body.filter.clone(),
    )?;
    let mut response = get_context::v3::Response::new();
    response.start = context.start;
    response.end = context.end;
    response.events_before = context.events_before.iter().map(raw).collect();
    response.event = Some(raw(&context.event));
    response.events_after = context.events_after.iter().map(raw).collect();
    response.state = context.state.iter().map(raw).collect();
    Ok(response)
}

pub async fn timestamp_to_event(
    services: AppState,
    request: Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<get_event_by_timestamp::v1::Response> {
    let body = &request.body;
    let ts = u64::from(body.ts.0);
    let (event_id, found_ts) =
        services.rooms.event_at_timestamp(request.user()?, &body.room_id, ts, direction(body.dir))?;
    let ts = MilliSecondsSinceUnixEpoch(UInt::new(found_ts).unwrap_or_default());
    Ok(get_event_by_timestamp::v1::Response::new(event_id, ts))
}

pub async fn report_event(
    services: AppState,
    request: Ruma<report_content::v3::Request>,
) -> ApiResult<report_content::v3::Response> {
    let body = &request.body;
    super::rate_limit_user(&services, Action::Message, request.user()?)?;
    services.rooms.report(request.user()?, &body.room_id, Some(&body.event_id), body.reason.clone())?;
    Ok(report_content::v3::Response::new())
}

pub async fn report_a_room(
    services: AppState,
    request: Ruma<report_room::v3::Request>,
) -> ApiResult<report_room::v3::Response> {
    let body = &request.body;
    super::rate_limit_user(&services, Action::Message, request.user()?)?;
    services.rooms.report(request.user()?, &body.room_id, None, Some(body.reason.clone()))?;
    Ok(report_room::v3::Response::new())
}

/// `POST /users/{userId}/report`. A local user must exist (404 otherwise);
/// another server's users are taken as named, since this server cannot tell.
pub async fn report_a_user(
    services: AppState,
    request: Ruma<report_user::v3::Request>,
) -> ApiResult<report_user::v3::Response> {
    let body = &request.body;
    super::rate_limit_user(&services, Action::Message, request.user()?)?;
    if services.accounts.is_local(&body.user_id) && !services.accounts.exists(&body.user_id)? {
        return Err(estuary_core::Error::not_found("The user was not found").into());
    }
    services.rooms.report_user(request.user()?, &body.user_id, body.reason.clone())?;
    Ok(report_user::v3::Response::new())
}
