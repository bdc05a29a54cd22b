//! Server admin endpoints: Synapse's admin API at its paths
//! (`/_synapse/admin`), so existing admin tools work, and Estuary's own
//! (`/_estuary/admin`). Every endpoint answers server admins only, and every
//! change an admin makes is logged at info with the admin and the target.

mod devices;
mod estuary;
mod extract;
mod listing;
mod media;
mod notices;
mod register;
mod registration_tokens;
mod reports;
mod rooms;
mod users;

use axum::{
    Router,
    routing::{delete, get, post, put},
};

use crate::AppState;

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    room_routes(user_routes(router))
        .route("/_synapse/admin/v1/media/{server_name}/{media_id}", delete(media::delete_media))
        .route("/_synapse/admin/v1/media/delete", post(media::delete_older))
        .route("/_synapse/admin/v1/media/{server_name}/delete", post(media::delete_older))
        .route("/_synapse/admin/v1/media/quarantine/{server_name}/{media_id}", post(media::quarantine))
        .route("/_synapse/admin/v1/media/unquarantine/{server_name}/{media_id}", post(media::unquarantine))
        .route("/_synapse/admin/v1/media/protect/{media_id}", post(media::protect))
        .route("/_synapse/admin/v1/media/unprotect/{media_id}", post(media::protect))
        .route("/_synapse/admin/v1/room/{room_id}/media", get(media::room_media))
        .route("/_synapse/admin/v1/room/{room_id}/media/quarantine", post(media::quarantine_room))
        .route("/_synapse/admin/v1/quarantine_media/{room_id}", post(media::quarantine_room))
        .route("/_synapse/admin/v1/user/{user_id}/media/quarantine", post(media::quarantine_user))
        .route(
            "/_synapse/admin/v1/users/{user_id}/media",
            get(media::user_media).delete(media::delete_user_media),
        )
        .route("/_synapse/admin/v1/statistics/users/media", get(media::statistics))
        .route("/_synapse/admin/v1/purge_media_cache", post(media::purge_media_cache))
        .route("/_synapse/admin/v1/registration_tokens", get(registration_tokens::list))
        .route("/_synapse/admin/v1/registration_tokens/new", post(registration_tokens::create))
        .route(
            "/_synapse/admin/v1/registration_tokens/{token}",
            get(registration_tokens::get)
                .put(registration_tokens::update)
                .delete(registration_tokens::delete),
        )
        .route("/_synapse/admin/v1/register", get(register::nonce).post(register::register))
        .route("/_synapse/admin/v1/send_server_notice", post(notices::send))
        .route("/_synapse/admin/v1/send_server_notice/{txn_id}", put(notices::send_with_txn))
        .route("/_synapse/admin/v1/event_reports", get(reports::list))
        .route("/_synapse/admin/v1/event_reports/{report_id}", get(reports::get).delete(reports::delete))
        .route("/_estuary/admin/v1/consistency", get(estuary::consistency))
        .route(
            "/_estuary/admin/v1/appservices",
            get(estuary::list_appservices).post(estuary::register_appservice),
        )
        .route("/_estuary/admin/v1/appservices/{id}", delete(estuary::remove_appservice))
}

fn user_routes(router: Router<AppState>) -> Router<AppState> {
    const V1: &str = "/_synapse/admin/v1";
    const V2: &str = "/_synapse/admin/v2";
    router
        .route(&format!("{V2}/users"), get(users::list_v2))
        .route("/_synapse/admin/v3/users", get(users::list_v3))
        .route(&format!("{V2}/users/{{user_id}}"), get(users::get).put(users::put))
        .route(&format!("{V1}/deactivate/{{user_id}}"), post(users::deactivate))
        .route(&format!("{V1}/reset_password/{{user_id}}"), post(users::reset_password))
        .route(&format!("{V1}/whois/{{user_id}}"), get(users::whois))
        .route(&format!("{V1}/suspend/{{user_id}}"), put(users::suspend))
        .route(&format!("{V1}/users/{{user_id}}/login"), post(users::login_as))
        .route(&format!("{V1}/users/{{user_id}}/admin"), get(users::get_admin).put(users::set_admin))
        .route(
            &format!("{V1}/users/{{user_id}}/shadow_ban"),
            post(users::shadow_ban).delete(users::shadow_ban),
        )
        .route(&format!("{V1}/users/{{user_id}}/joined_rooms"), get(users::joined_rooms))
        .route(&format!("{V1}/users/{{user_id}}/memberships"), get(users::memberships))
        .route(&format!("{V1}/users/{{user_id}}/pushers"), get(users::pushers))
        .route(
            &format!("{V1}/users/{{user_id}}/override_ratelimit"),
            get(users::get_rate_limit_override)
                .post(users::set_rate_limit_override)
                .delete(users::delete_rate_limit_override),
        )
        .route(&format!("{V2}/users/{{user_id}}/devices"), get(devices::list).post(devices::create))
        .route(
            &format!("{V2}/users/{{user_id}}/devices/{{device_id}}"),
            get(devices::get).put(devices::update).delete(devices::delete),
        )
        .route(&format!("{V2}/users/{{user_id}}/delete_devices"), post(devices::delete_many))
}

fn room_routes(router: Router<AppState>) -> Router<AppState> {
    const V1: &str = "/_synapse/admin/v1";
    const V2: &str = "/_synapse/admin/v2";
    router
        .route(&format!("{V1}/rooms"), get(rooms::list))
        .route(&format!("{V1}/rooms/{{room_id}}"), get(rooms::get).delete(rooms::delete_now))
        .route(&format!("{V2}/rooms/{{room_id}}"), delete(rooms::delete))
        .route(&format!("{V2}/rooms/{{room_id}}/delete_status"), get(rooms::delete_status_of_room))
        .route(&format!("{V2}/rooms/delete_status/{{delete_id}}"), get(rooms::delete_status))
        .route(&format!("{V1}/rooms/{{room_id}}/members"), get(rooms::members))
        .route(&format!("{V1}/rooms/{{room_id}}/state"), get(rooms::state))
        .route(&format!("{V1}/rooms/{{room_id}}/messages"), get(rooms::messages))
        .route(&format!("{V1}/rooms/{{room_id}}/forward_extremities"), get(rooms::forward_extremities))
        .route(&format!("{V1}/rooms/{{room_id}}/block"), get(rooms::get_block).put(rooms::set_block))
        .route(&format!("{V1}/rooms/{{room_id}}/make_room_admin"), post(rooms::make_room_admin))
        .route(&format!("{V1}/join/{{room}}"), post(rooms::join))
        .route(&format!("{V1}/purge_history/{{room_id}}"), post(rooms::purge_history))
        .route(&format!("{V1}/purge_history/{{room_id}}/{{event_id}}"), post(rooms::purge_history))
        .route(&format!("{V1}/purge_history_status/{{purge_id}}"), get(rooms::purge_history_status))
}
