//! The router: every Matrix endpoint is registered from ruma's metadata (its
//! method and every historical path), so no path is written by hand.

use std::future::Future;

use axum::{
    Router,
    extract::State,
    response::IntoResponse,
    routing::{MethodFilter, get, on},
};
use ruma::api::{IncomingRequest, path_builder::PathBuilder};

use crate::{
    AppState, admin, client,
    error::ApiResult,
    federation, middleware, pages,
    ruma_wrapper::{Auth, Ruma, RumaResponse},
};

pub fn build(services: AppState) -> Router {
    let router = admin::routes(federation::routes(client::routes(Router::new())))
        // The deprecated form naming a key ID: the same answer, all keys.
        .route("/_matrix/key/v2/server/{key_id}", get(federation::server_keys_by_id))
        .route("/_matrix/key/v2/query/{server_name}/{key_id}", get(federation::remote_server_keys_by_id))
        .route("/", get(pages::root))
        .route("/health", get(pages::health))
        .route("/_synapse/admin/v1/server_version", get(pages::server_version))
        .fallback(pages::not_found)
        .method_not_allowed_fallback(pages::method_not_allowed)
        .with_state(services);
    middleware::wrap(router)
}

/// Registration of handlers by ruma request type.
pub trait RumaRouter {
    /// A handler returning the endpoint's ruma response type.
    fn ruma<R, H, F>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: Auth,
        R::OutgoingResponse: Send + 'static,
        H: Fn(AppState, Ruma<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ApiResult<R::OutgoingResponse>> + Send + 'static;

    /// A handler shaping its own response (where ruma's serialisation
    /// differs from what clients expect).
    fn ruma_custom<R, H, F, T>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: Auth,
        H: Fn(AppState, Ruma<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ApiResult<T>> + Send + 'static,
        T: IntoResponse + 'static;

    /// A plain axum handler on every path of ruma endpoint `R`, for
    /// endpoints whose bodies are streamed rather than parsed (uploads).
    fn ruma_raw<R, H, T>(self, handler: H) -> Self
    where
        R: IncomingRequest,
        H: axum::handler::Handler<T, AppState>,
        T: 'static;
}

impl RumaRouter for Router<AppState> {
    fn ruma<R, H, F>(self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: Auth,
        R::OutgoingResponse: Send + 'static,
        H: Fn(AppState, Ruma<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ApiResult<R::OutgoingResponse>> + Send + 'static,
    {
        self.ruma_custom(move |state, request: Ruma<R>| {
            let response = handler(state, request);
            async move { response.await.map(RumaResponse) }
        })
    }

    fn ruma_custom<R, H, F, T>(mut self, handler: H) -> Self
    where
        R: IncomingRequest + Send + 'static,
        R::Authentication: Auth,
        H: Fn(AppState, Ruma<R>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = ApiResult<T>> + Send + 'static,
        T: IntoResponse + 'static,
    {
        let method = MethodFilter::try_from(R::METHOD).expect("ruma endpoints use standard methods");
        let endpoint = middleware::Endpoint::of::<R>();
        for path in R::PATH_BUILDER.all_paths().flat_map(with_empty_state_key) {
            let handler = handler.clone();
            self = self.route(
                &path,
                on(method, move |State(state): State<AppState>, request: Ruma<R>| async move {
                    let mut response = handler(state, request).await.into_response();
                    response.extensions_mut().insert(endpoint);
                    response
                }),
            );
        }
        self
    }

    fn ruma_raw<R, H, T>(mut self, handler: H) -> Self
    where
        R: IncomingRequest,
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        let method = MethodFilter::try_from(R::METHOD).expect("ruma endpoints use standard methods");
        for path in R::PATH_BUILDER.all_paths() {
            self = self.route(path, on(method, handler.clone()));
        }
        self
    }
}

/// A path ending in `/{state_key}` also serves the empty state key, which
/// clients send as `…/state/m.room.name` or `…/state/m.room.name/`.
fn with_empty_state_key(path: &'static str) -> Vec<String> {
    match path.strip_suffix("/{state_key}") {
        Some(base) => vec![path.to_owned(), base.to_owned(), format!("{base}/")],
        None => vec![path.to_owned()],
    }
}
