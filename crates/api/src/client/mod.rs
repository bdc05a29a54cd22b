//! Client-Server API handlers, one module per area of the spec. Each handler
//! takes the parsed request, calls a service and shapes the response.

mod account;
mod account_data;
mod device;
mod discovery;
mod filter;
mod profile;
mod register;
mod session;

use axum::Router;

use crate::{AppState, router::RumaRouter};

pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        // Discovery
        .ruma(discovery::versions)
        .ruma_custom(discovery::capabilities)
        .ruma(discovery::well_known_client)
        .ruma(discovery::well_known_server)
        // Registration
        .ruma(register::register)
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
        .ruma(account::change_password)
        .ruma(account::deactivate)
        // Devices
        .ruma(device::list)
        .ruma(device::get)
        .ruma(device::update)
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
}
