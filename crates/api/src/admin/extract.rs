//! Extractors of the admin API: the caller must be a server admin, and a bad
//! body or query gets a Matrix error (axum's own rejections are plain text).

use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use estuary_core::Error;
use http::request::Parts;
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, de::DeserializeOwned};

use crate::{AppState, error::ApiError, ruma_wrapper::AuthedUser};

/// Admin request bodies are small: a user, a token, a room deletion.
const ADMIN_BODY_LIMIT: usize = 1024 * 1024;

/// A server admin calling (401 without a token, 403 for anyone else).
pub struct ServerAdmin(pub OwnedUserId);

impl FromRequestParts<AppState> for ServerAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let AuthedUser(user) = AuthedUser::from_request_parts(parts, state).await?;
        match state.accounts.account(&user)? {
            Some(account) if account.admin => Ok(Self(user)),
            _ => Err(Error::forbidden("You are not a server admin").into()),
        }
    }
}

/// A JSON body: 400 `M_NOT_JSON` when it is not JSON, `M_BAD_JSON` when it
/// does not have the endpoint's shape. An empty body reads as `{}`.
pub struct AdminBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for AdminBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(request.into_body(), ADMIN_BODY_LIMIT)
            .await
            .map_err(|_| Error::too_large("The request body is too large"))?;
        let bytes: &[u8] = if bytes.is_empty() { b"{}" } else { &bytes };
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::not_json(format!("The request body is not JSON: {e}")))?;
        let parsed = serde_json::from_value(value)
            .map_err(|e| Error::bad_json(format!("Invalid request body: {e}")))?;
        Ok(Self(parsed))
    }
}

/// Query parameters: 400 `M_INVALID_PARAM` when they do not parse.
pub struct AdminQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for AdminQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Query(query) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| Error::invalid_param(format!("Invalid query parameter: {}", e.body_text())))?;
        Ok(Self(query))
    }
}

/// A user ID from a path: 400 `M_INVALID_PARAM` when it is not one.
pub fn user_id(raw: &str) -> Result<OwnedUserId, Error> {
    UserId::parse(raw).map_err(|e| Error::invalid_param(format!("Invalid user ID {raw:?}: {e}")))
}

/// A local user ID from a path: 400 for another server's user (admins
/// manage this server's accounts only), 404 when no such account exists.
pub fn local_user(state: &AppState, raw: &str) -> Result<OwnedUserId, Error> {
    let user = user_id(raw)?;
    if !state.accounts.is_local(&user) {
        return Err(Error::invalid_param("Can only look up local users"));
    }
    if !state.accounts.exists(&user)? {
        return Err(Error::not_found("User not found"));
    }
    Ok(user)
}

/// Synapse's `dir` parameter: `f` (forwards) or `b` (backwards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub enum Dir {
    #[default]
    #[serde(rename = "f")]
    Forwards,
    #[serde(rename = "b")]
    Backwards,
}

/// A field that may be absent (leave as is) or null (clear).
pub fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Synapse's page size when `limit` is not given.
pub fn default_limit() -> usize {
    100
}
