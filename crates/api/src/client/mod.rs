//! Client-Server API handlers, one module per area of the spec. Each handler
//! takes the parsed request, calls a service and shapes the response.

mod account;
mod account_data;
mod appservice;
mod backup;
mod calls;
mod dehydrated;
mod delayed;
mod device;
pub(crate) mod directory;
mod discovery;
mod ephemeral;
mod filter;
mod keys;
pub(crate) mod media;
mod membership;
mod messages;
mod peek;
mod presence;
mod profile;
mod push;
mod register;
mod relations;
mod room;
mod search;
mod session;
mod sync;
mod to_device;

use axum::Router;
use estuary_core::Error;
use estuary_service::rate_limits::Action;
use ruma::UserId;

use crate::{AppState, router::RumaRouter};

pub use push::{is_push_rule_path, malformed_path as malformed_push_rule_path};

/// Per-user resources (filters, account data, tags) belong to their user alone.
pub(crate) fn require_self(sender: &UserId, user_id: &UserId, what: &str) -> Result<(), Error> {
    if sender != user_id {
        return Err(Error::forbidden(format!("You cannot access another user's {what}")));
    }
    Ok(())
}

/// Take one `action` of `user` from its rate limit. The users an appservice
/// registered (its bot and ghosts) are exempt when its registration says
/// `rate_limited: false`; a user who merely matches its namespace is not.
pub(crate) fn rate_limit_user(services: &AppState, action: Action, user: &UserId) -> Result<(), Error> {
    if !services.config.rc_enabled {
        return Ok(());
    }
    let exempt = || -> Result<bool, Error> {
        let unlimited =
            services.appservices.for_user(user).is_some_and(|a| a.registration.rate_limited == Some(false));
        Ok(unlimited && services.accounts.account(user)?.is_some_and(|a| a.appservice))
    };
    if exempt()? {
        return Ok(());
    }
    services.rate_limits.check_user(action, user)
}

/// Take one `action` of the client's address (requests without a user).
pub(crate) fn rate_limit_address(
    services: &AppState,
    action: Action,
    address: Option<std::net::IpAddr>,
) -> Result<(), Error> {
    match address {
        Some(address) => services.rate_limits.check(action, &address.to_string()),
        None => Ok(()),
    }
}

/// An action a suspended user may not take (joining, inviting, sending,
/// changing the profile): 403 `M_USER_SUSPENDED`.
pub(crate) fn refuse_if_suspended(services: &AppState, user: &UserId) -> Result<(), Error> {
    if services.accounts.restrictions.of(user).suspended {
        return Err(Error::matrix(
            403,
            estuary_core::error::ErrorKind::UserSuspended,
            "You cannot perform this action while suspended.",
        ));
    }
    Ok(())
}

/// What a shadow-banned user sends looks accepted and reaches no one: an
/// event ID that names nothing.
pub(crate) fn shadow_banned_event_id(services: &AppState, user: &UserId) -> Option<String> {
    services
        .accounts
        .restrictions
        .of(user)
        .shadow_banned
        .then(|| format!("${}", estuary_service::accounts::tokens::random_token(43)))
}

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        // Discovery
        .ruma(discovery::versions)
        .ruma_custom(discovery::capabilities)
        .ruma(discovery::well_known_client)
        .ruma(discovery::well_known_server)
        .ruma_custom(appservice::protocols)
        .ruma_custom(appservice::protocol)
        .ruma(appservice::locations)
        .ruma(appservice::users)
        .ruma(appservice::locations_for_alias)
        .ruma(appservice::users_for_user_id)
        .ruma(appservice::ping)
        .ruma_custom(calls::turn_server)
        .ruma(calls::transports)
        // Registration
        .ruma_custom(register::register)
        .ruma(register::available)
        .ruma(register::token_validity)
        // Sessions
        .ruma(session::login_types)
        .ruma(session::login)
        .ruma(session::get_login_token)
        .ruma(session::refresh)
        .ruma(session::logout)
        .ruma(session::logout_all)
        // Account
        .ruma(account::whoami)
        .ruma(account::request_openid_token)
        .ruma(account::whois)
        .ruma(account::is_locked)
        .ruma(account::lock)
        .ruma(account::is_suspended)
        .ruma(account::suspend)
        .ruma(account::change_password)
        .ruma(account::deactivate)
        // Devices
        .ruma(device::list)
        .ruma(device::get)
        .ruma_custom(device::update)
        .ruma(device::delete)
        .ruma(device::delete_many)
        // Profile
        .ruma(profile::get_profile)
        .ruma(profile::get_field)
        .ruma(profile::set_field)
        .ruma(profile::delete_field)
        // Filters
        .ruma(filter::create)
        .ruma(filter::get)
        // Account data
        .ruma(account_data::set_global)
        .ruma(account_data::get_global)
        .ruma(account_data::set_room)
        .ruma(account_data::get_room)
        // Sync
        .ruma_custom(sync::sync)
        .ruma_custom(sync::sliding_sync)
        .ruma(to_device::send)
        // End-to-end encryption keys
        .ruma_custom(keys::upload)
        .ruma_custom(keys::query)
        .ruma_custom(keys::claim)
        .ruma(keys::changes)
        .ruma(keys::upload_signing_keys)
        .ruma_custom(dehydrated::put)
        .ruma_custom(dehydrated::get)
        .ruma_custom(dehydrated::delete)
        .ruma_custom(dehydrated::events)
        .ruma_custom(keys::upload_signatures)
        // Key backup
        .ruma_custom(backup::create)
        .ruma_custom(backup::latest)
        .ruma_custom(backup::info)
        .ruma_custom(backup::update)
        .ruma_custom(backup::delete_version)
        .ruma_custom(backup::put_all)
        .ruma_custom(backup::put_room)
        .ruma_custom(backup::put_session)
        .ruma_custom(backup::get_all)
        .ruma_custom(backup::get_room)
        .ruma_custom(backup::get_session)
        .ruma_custom(backup::delete_all)
        .ruma_custom(backup::delete_room)
        .ruma_custom(backup::delete_session)
        // Ephemeral data and tags
        .ruma_raw::<ruma::api::client::typing::create_typing_event::v3::Request, _, _>(ephemeral::typing)
        .ruma(ephemeral::receipt)
        .ruma(ephemeral::read_markers)
        .ruma(ephemeral::get)
        .ruma(ephemeral::put)
        .ruma(ephemeral::delete)
        // Presence
        .ruma(presence::set)
        .ruma_custom(presence::get)
        // Push rules and notifications
        .ruma(push::all)
        .ruma(push::global)
        .ruma(push::get)
        .ruma(push::set)
        .ruma(push::delete)
        .ruma(push::get_enabled)
        .ruma(push::set_enabled)
        .ruma(push::get_actions)
        .ruma(push::set_actions)
        .route("/_matrix/client/v3/pushrules/global/{kind}/", axum::routing::get(push::kind))
        .route("/_matrix/client/r0/pushrules/global/{kind}/", axum::routing::get(push::kind))
        .ruma_custom(push::notifications)
        .ruma(push::get_pushers)
        .ruma(push::set_pusher)
        // Rooms
        .ruma(room::create)
        .ruma_raw::<ruma::api::client::media::create_content::v3::Request, _, _>(media::upload)
        .ruma_raw::<ruma::api::client::media::create_content_async::v3::Request, _, _>(media::upload_pending)
        .ruma_custom(media::create)
        .ruma_custom(media::config)
        .ruma_custom(media::legacy::config)
        .ruma_custom(media::download)
        .ruma_custom(media::download_as)
        .ruma_custom(media::thumbnail)
        .ruma_custom(media::preview_url)
        .ruma_custom(media::legacy::preview_url)
        .ruma_custom(media::legacy::download)
        .ruma_custom(media::legacy::download_as)
        .ruma_custom(media::legacy::thumbnail)
        .ruma_custom(search::search)
        .ruma_custom(search::user_directory)
        .ruma_custom(room::send_message)
        .ruma_custom(room::send_state)
        .ruma_custom(delayed::list)
        .ruma_custom(delayed::get)
        .ruma_custom(delayed::update_with_body)
        .ruma_custom(delayed::update_in_path)
        .ruma(room::get_state_event)
        .ruma(room::get_state)
        .ruma(room::get_event)
        .ruma_custom(peek::initial_sync)
        .ruma_raw::<ruma::api::client::peeking::listen_to_new_events::v3::Request, _, _>(peek::events)
        // An appservice's network directory (the spec's PUT; DELETE as Synapse serves it).
        .route(
            "/_matrix/client/v3/directory/list/appservice/{network_id}/{room_id}",
            axum::routing::put(directory::set_network_visibility).delete(directory::set_network_visibility),
        )
        .route(
            "/_matrix/client/r0/directory/list/appservice/{network_id}/{room_id}",
            axum::routing::put(directory::set_network_visibility).delete(directory::set_network_visibility),
        )
        // Legacy endpoints without a ruma type: the global initialSync, and
        // sending or redacting without a transaction ID.
        .route(
            "/_matrix/client/v3/rooms/{room_id}/redact/{event_id}",
            axum::routing::post(room::redact_without_txn),
        )
        .route(
            "/_matrix/client/r0/rooms/{room_id}/redact/{event_id}",
            axum::routing::post(room::redact_without_txn),
        )
        .route(
            "/_matrix/client/v3/rooms/{room_id}/send/{event_type}",
            axum::routing::post(room::send_message_without_txn),
        )
        .route(
            "/_matrix/client/r0/rooms/{room_id}/send/{event_type}",
            axum::routing::post(room::send_message_without_txn),
        )
        .route("/_matrix/client/v3/initialSync", axum::routing::get(peek::global_initial_sync))
        .route("/_matrix/client/v3/peek/{room}", axum::routing::post(peek::peek_by_device))
        .route(
            "/_matrix/client/unstable/org.matrix.msc2753/peek/{room}",
            axum::routing::post(peek::peek_by_device),
        )
        .route("/_matrix/client/v3/unpeek/{room}", axum::routing::post(peek::unpeek))
        .route("/_matrix/client/unstable/org.matrix.msc2753/unpeek/{room}", axum::routing::post(peek::unpeek))
        .route("/_matrix/client/r0/initialSync", axum::routing::get(peek::global_initial_sync))
        .ruma(room::redact)
        .ruma_raw::<ruma::api::client::room::upgrade_room::v3::Request, _, _>(room::upgrade)
        .ruma(room::hierarchy)
        .ruma_custom(messages::messages)
        .ruma(relations::all)
        .ruma(relations::by_rel_type)
        .ruma(relations::by_rel_and_event_type)
        .ruma(relations::threads)
        .ruma(relations::context)
        .ruma(relations::timestamp_to_event)
        .ruma(relations::report_event)
        .ruma(relations::report_a_room)
        .ruma(relations::report_a_user)
        // Membership
        .ruma(membership::join_by_id)
        .ruma(membership::join_by_id_or_alias)
        .ruma(membership::invite)
        .ruma(membership::leave)
        .ruma(membership::kick)
        .ruma(membership::ban)
        .ruma(membership::unban)
        .ruma(membership::forget)
        .ruma(membership::knock)
        .ruma(membership::joined)
        .ruma(membership::members)
        .ruma_custom(membership::joined_members)
        // Aliases and the room directory
        .ruma(directory::create)
        .ruma(directory::get)
        .ruma(directory::delete)
        .ruma(directory::room_aliases)
        .ruma(directory::public_rooms)
        .ruma(directory::public_rooms_filtered)
        .ruma(directory::get_visibility)
        .ruma(directory::set_visibility)
}
