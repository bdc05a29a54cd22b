//! Estuary's HTTP surface: the axum router built from ruma's endpoint
//! metadata, the `Ruma<Req>` extractor that parses and authenticates, the
//! error mapping, middleware (CORS, panics, request logs), and thin handlers.

mod admin;
mod client;
mod error;
pub(crate) mod federation;
mod middleware;
mod pages;
mod router;
mod ruma_wrapper;

use std::sync::Arc;

use estuary_service::Services;

pub use error::ApiError;

/// What every handler receives: the server's services.
pub type AppState = Arc<Services>;

/// The complete HTTP application for `services`.
pub fn app(services: AppState) -> axum::Router {
    router::build(services)
}
