//! Layers around every route: CORS (with bare preflights), panic containment,
//! and one debug line per request.

use std::{panic::AssertUnwindSafe, time::Instant};

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use estuary_core::Error;
use futures::FutureExt;

use crate::error::ApiError;

pub fn wrap(router: Router) -> Router {
    router
        .layer(middleware::from_fn(catch_panics))
        .layer(middleware::from_fn(cors))
        .layer(middleware::from_fn(log_request))
}

/// The name of the endpoint that answered (ruma's name for it, or
/// Synapse's servlet name where Synapse's Grafana dashboard looks for one),
/// put on the response for the request metrics.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint(pub &'static str);

impl Endpoint {
    /// `ruma_client_api::message::send_message_event::v3::Request` is
    /// `send_message_event`: the module before the version.
    pub fn of<R>() -> Self {
        Self::named(std::any::type_name::<R>())
    }

    fn named(type_name: &'static str) -> Self {
        let path: Vec<&'static str> = type_name.split("::").collect();
        let version = path.iter().position(|segment| {
            *segment == "unstable"
                || (segment.starts_with('v') && segment[1..].chars().all(|c| c.is_ascii_digit()))
        });
        // Endpoints without versions (`get_supported_versions::Request`):
        // the module holding the request type.
        let at = version.unwrap_or(path.len().saturating_sub(1));
        let name = at.checked_sub(1).and_then(|at| path.get(at)).copied().unwrap_or("unknown");
        Self(synapse_servlet(name).unwrap_or(name))
    }
}

/// Synapse's servlet names for the endpoints its dashboard's panels name.
fn synapse_servlet(endpoint: &str) -> Option<&'static str> {
    Some(match endpoint {
        "send_message_event" => "RoomSendEventRestServlet",
        "send_state_event" => "RoomStateEventRestServlet",
        "sync_events" => "SyncRestServlet",
        "get_message_events" => "RoomMessageListRestServlet",
        "login" => "LoginRestServlet",
        "register" => "RegisterRestServlet",
        "create_room" => "RoomCreateRestServlet",
        "send_transaction_message" => "FederationSendServlet",
        _ => return None,
    })
}

const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS";
const ALLOW_HEADERS: &str = "Origin, X-Requested-With, Content-Type, Accept, Authorization";

/// Web clients on another origin need CORS headers on every response; a
/// preflight (`OPTIONS`) is answered at once, without a token.
async fn cors(request: Request, next: Next) -> Response {
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
    response
}

/// A panic in a handler becomes a 500 `M_UNKNOWN` for that request only.
async fn catch_panics(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    match AssertUnwindSafe(next.run(request)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(%path, "handler panicked: {message}");
            ApiError(Error::internal("handler panicked")).into_response()
        }
    }
}

/// One line per request at debug level (never the query string: tokens),
/// and the request metrics: a count by endpoint and the response time.
async fn log_request(request: Request<Body>, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let matched = request.extensions().get::<axum::extract::MatchedPath>().map(|m| m.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let servlet = match response.extensions().get::<Endpoint>() {
        Some(Endpoint(name)) => (*name).to_owned(),
        None => matched.unwrap_or_else(|| "unmatched".to_owned()),
    };
    // Any token is a method to HTTP: unknown ones share one label, so
    // clients cannot grow the metrics without bound.
    let method_label = match method.as_str() {
        known @ ("GET" | "PUT" | "POST" | "DELETE" | "OPTIONS" | "HEAD") => known.to_owned(),
        _ => "OTHER".to_owned(),
    };
    let labels = [("method", method_label), ("servlet", servlet)];
    metrics::counter!("synapse_http_server_requests_received_total", &labels).increment(1);
    let code = ("code", response.status().as_u16().to_string());
    let timed = [labels[0].clone(), labels[1].clone(), code];
    metrics::histogram!("synapse_http_server_response_time_seconds", &timed)
        .record(started.elapsed().as_secs_f64());
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn endpoints_are_named_by_their_module() {
        let named = |t| Endpoint::named(t).0;
        assert_eq!(
            named("ruma_client_api::message::send_message_event::v3::Request"),
            "RoomSendEventRestServlet"
        );
        assert_eq!(named("ruma_client_api::room::report_content::v3::Request"), "report_content");
        assert_eq!(
            named("ruma_client_api::discovery::get_supported_versions::Request"),
            "get_supported_versions"
        );
    }
}
