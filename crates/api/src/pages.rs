//! Non-Matrix pages: the human page at `/`, the health check and server
//! version that load balancers and admin tools ask, fallbacks for unknown
//! routes.

use axum::{
    extract::State,
    http::Uri,
    response::{Html, IntoResponse},
};
use estuary_core::Error;

use crate::{AppState, error::ApiError};

pub async fn root(State(services): State<AppState>) -> impl IntoResponse {
    let server_name = html_escape(services.config.server_name.as_str());
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Estuary</title></head>\
         <body><h1>Estuary is running</h1><p>Estuary {version}, a Matrix homeserver, \
         serving <code>{server_name}</code>.</p><p>Connect with any Matrix client.</p>\
         </body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
    ))
}

/// `GET /health`: `200 OK` while the database is open and takes writes,
/// else `503` (the admin's log has the cause).
pub async fn health(State(services): State<AppState>) -> impl IntoResponse {
    match tokio::task::spawn_blocking(move || services.check_health()).await {
        Ok(Ok(())) => (axum::http::StatusCode::OK, "OK"),
        Ok(Err(err)) => {
            tracing::error!("health check: the database refused a write: {err}");
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
        Err(err) => {
            tracing::error!("health check failed: {err}");
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "health check failed")
        }
    }
}

/// `GET /_synapse/admin/v1/server_version` (no authentication), as admin
/// tools ask it.
pub async fn server_version() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"server_version": concat!("Estuary ", env!("CARGO_PKG_VERSION"))}))
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

pub async fn not_found(uri: Uri) -> ApiError {
    if crate::client::is_push_rule_path(uri.path()) {
        return crate::client::malformed_push_rule_path().into();
    }
    Error::unrecognized(404, "Unrecognized request").into()
}

pub async fn method_not_allowed(uri: Uri) -> ApiError {
    if crate::client::is_push_rule_path(uri.path()) {
        return crate::client::malformed_push_rule_path().into();
    }
    Error::unrecognized(405, "Method not allowed for this endpoint").into()
}
