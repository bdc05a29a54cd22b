//! Non-Matrix pages: the human page at `/`, fallbacks for unknown routes.

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
