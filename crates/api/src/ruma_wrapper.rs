//! `Ruma<Req>`: parse an HTTP request into ruma's request type and resolve
//! who is calling, according to the endpoint's declared authentication.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{FromRequest, RawPathParams, Request},
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use estuary_core::{Error, error::ErrorKind};
use estuary_service::appservices::Appservice;
use http::{Method, request::Parts};
use ruma::{
    OwnedDeviceId, OwnedUserId, UserId,
    api::{
        IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
        auth_scheme::{
            AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken,
            NoAuthentication,
        },
        error::{DeserializationError, FromHttpRequestError},
        path_builder::PathBuilder,
    },
};

use crate::{AppState, error::ApiError};

/// How an endpoint authenticates its caller (from ruma's metadata).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthKind {
    None,
    AccessToken,
    AccessTokenOptional,
    AppserviceToken,
    AppserviceTokenOptional,
    ServerSignatures,
}

/// Maps ruma's authentication scheme types to [`AuthKind`].
pub trait Auth {
    const KIND: AuthKind;
}
impl Auth for NoAuthentication {
    const KIND: AuthKind = AuthKind::None;
}
impl Auth for NoAccessToken {
    const KIND: AuthKind = AuthKind::None;
}
impl Auth for AccessToken {
    const KIND: AuthKind = AuthKind::AccessToken;
}
impl Auth for AccessTokenOptional {
    const KIND: AuthKind = AuthKind::AccessTokenOptional;
}
impl Auth for AppserviceToken {
    const KIND: AuthKind = AuthKind::AppserviceToken;
}
impl Auth for AppserviceTokenOptional {
    const KIND: AuthKind = AuthKind::AppserviceTokenOptional;
}
impl Auth for ruma::api::federation::authentication::ServerSignatures {
    const KIND: AuthKind = AuthKind::ServerSignatures;
}

/// A parsed, authenticated request.
pub struct Ruma<R> {
    pub body: R,
    pub sender_user: Option<OwnedUserId>,
    pub sender_device: Option<OwnedDeviceId>,
    /// The appservice that authenticated with its `as_token`, on endpoints
    /// that accept appservice tokens.
    pub appservice: Option<Arc<Appservice>>,
    /// Whether the request carried an access token at all.
    pub token_sent: bool,
    /// The raw query string, for unstable parameters ruma does not model.
    pub raw_query: Option<String>,
    /// The server that signed a Server-Server request.
    pub origin: Option<ruma::OwnedServerName>,
    /// The body as sent, for fields ruma's type drops (custom member content).
    pub raw_body: bytes::Bytes,
    /// The client's address (per-address rate limits).
    pub client_ip: Option<std::net::IpAddr>,
}

impl<R> Ruma<R> {
    /// A query parameter by name, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_param(self.raw_query.as_deref(), name)
    }

    /// The calling appservice, for requests that must come from one.
    pub fn require_appservice(&self) -> Result<&Arc<Appservice>, ApiError> {
        match (&self.appservice, self.token_sent) {
            (Some(appservice), _) => Ok(appservice),
            (None, true) => Err(Error::unknown_token(false).into()),
            (None, false) => Err(Error::missing_token().into()),
        }
    }

    /// The authenticated user; endpoints with `AccessToken` always have one.
    pub fn user(&self) -> Result<&UserId, ApiError> {
        self.sender_user.as_deref().ok_or_else(|| Error::missing_token().into())
    }

    /// The authenticated origin server; Server-Server endpoints always have one.
    pub fn origin(&self) -> Result<&ruma::ServerName, ApiError> {
        self.origin.as_deref().ok_or_else(|| Error::unauthorized("Missing X-Matrix authorization").into())
    }

    /// The device a client transaction ID is scoped to. An appservice
    /// acting without a device gets a scope of its own, so its retries are
    /// idempotent too.
    pub fn txn_device(&self) -> Option<OwnedDeviceId> {
        match (&self.sender_device, &self.appservice) {
            (Some(device), _) => Some(device.clone()),
            (None, Some(appservice)) => Some(format!("_appservice_{}", appservice.id()).into()),
            (None, None) => None,
        }
    }

    /// The `origin_server_ts` an appservice asks for with `ts` (timestamp
    /// massaging); others cannot set it.
    pub fn massaged_ts(&self) -> Result<Option<ruma::MilliSecondsSinceUnixEpoch>, ApiError> {
        if self.appservice.is_none() {
            return Ok(None);
        }
        let Some(raw) = self.query_param("ts") else { return Ok(None) };
        let ts = raw
            .parse::<u64>()
            .ok()
            .and_then(ruma::UInt::new)
            .ok_or_else(|| Error::invalid_param("ts must be a timestamp in milliseconds"))?;
        Ok(Some(ruma::MilliSecondsSinceUnixEpoch(ts)))
    }

    pub fn device(&self) -> Result<&ruma::DeviceId, ApiError> {
        self.sender_device.as_deref().ok_or_else(|| Error::missing_token().into())
    }
}

impl<R> FromRequest<AppState> for Ruma<R>
where
    R: IncomingRequest + Send,
    R::Authentication: Auth,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let mut path_args = path_args(&mut parts, state).await?;
        // Routes for an empty trailing parameter (the state key) omit it.
        let expected = R::PATH_BUILDER.all_paths().next().map_or(0, |p| p.matches('{').count());
        path_args.resize(expected.max(path_args.len()), String::new());
        let access_token = access_token(&parts);
        let client_ip = client_ip(&parts, &state.config);
        let caller =
            authenticate(state, <R::Authentication as Auth>::KIND, access_token.as_deref(), &parts.uri)?;
        let mut bytes = read_body(body, &parts, state.config.max_request_size).await?;
        if <R::Authentication as Auth>::KIND != AuthKind::ServerSignatures {
            bytes = with_password_identifier(bytes);
        }
        let path_refs: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let raw_query = parts.uri.query().map(str::to_owned);
        let http_request = http::Request::from_parts(parts, bytes.as_ref());
        let origin = match <R::Authentication as Auth>::KIND {
            AuthKind::ServerSignatures => Some(state.federation.authenticate(&http_request).await?),
            _ => None,
        };
        let body = parse_contained(http_request, &path_refs)?;
        Ok(Self {
            raw_body: bytes.clone(),
            body,
            sender_user: caller.user,
            sender_device: caller.device,
            appservice: caller.appservice,
            token_sent: access_token.is_some(),
            raw_query,
            origin,
            client_ip,
        })
    }
}

/// A Server-Server request whose body ruma's type cannot hold (the v1
/// invite, a PDU of any shape): the authenticated origin and the body as
/// sent.
pub struct SignedRequest {
    pub origin: ruma::OwnedServerName,
    pub body: bytes::Bytes,
}

impl FromRequest<AppState> for SignedRequest {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        let body = read_body(body, &parts, state.config.max_request_size).await?;
        let http_request = http::Request::from_parts(parts, body.as_ref());
        let origin = state.federation.authenticate(&http_request).await?;
        Ok(Self { origin, body })
    }
}

async fn path_args(parts: &mut Parts, state: &AppState) -> Result<Vec<String>, ApiError> {
    use axum::extract::FromRequestParts;
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| Error::invalid_param(format!("Invalid path parameter: {e}")))?;
    Ok(params.iter().map(|(_, value)| value.to_owned()).collect())
}

/// A query string's parameter by name, decoded.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(key, _)| key == name).map(|(_, v)| v.into_owned())
}

/// The token from `Authorization: Bearer …`, or the deprecated `access_token` query parameter.
pub(crate) fn access_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    let query = parts.uri.query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "access_token").then(|| percent_decode(value))
    })
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some((hex(bytes[i + 1])?, hex(bytes[i + 2])?)))
            .flatten();
        match (escaped, bytes[i]) {
            (Some((high, low)), _) => {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who is calling.
#[derive(Default)]
struct Caller {
    user: Option<OwnedUserId>,
    device: Option<OwnedDeviceId>,
    appservice: Option<Arc<Appservice>>,
}

/// The client's address: the last `X-Forwarded-For` entry behind a proxy
/// (`x_forwarded`: the one the proxy added; earlier ones are the client's
/// word), else the connection's peer.
pub fn client_ip(parts: &Parts, config: &estuary_core::Config) -> Option<std::net::IpAddr> {
    if config.x_forwarded {
        let forwarded = parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok());
        if let Some(ip) = forwarded.and_then(|v| v.rsplit(',').next()).and_then(|v| v.trim().parse().ok()) {
            return Some(ip);
        }
    }
    let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
    peer.map(|info| info.0.ip())
}

/// A locked account gets 401 `M_USER_LOCKED` (with `soft_logout`) on
/// everything but logging out, as the spec says: its sessions are kept.
fn refuse_if_locked(state: &AppState, user: &UserId, path: &str) -> Result<(), ApiError> {
    if state.accounts.restrictions.of(user).locked
        && !path.ends_with("/logout")
        && !path.ends_with("/logout/all")
    {
        return Err(Error::matrix(401, ErrorKind::UserLocked, "This account has been locked").into());
    }
    Ok(())
}

fn authenticate(
    state: &AppState,
    kind: AuthKind,
    token: Option<&str>,
    uri: &http::Uri,
) -> Result<Caller, ApiError> {
    let (path, query) = (uri.path(), uri.query());
    match (kind, token) {
        (AuthKind::None, _) | (AuthKind::AccessTokenOptional | AuthKind::AppserviceTokenOptional, None) => {
            Ok(Caller::default())
        }
        (AuthKind::AccessToken | AuthKind::AppserviceToken, None) => Err(Error::missing_token().into()),
        (AuthKind::AccessToken | AuthKind::AccessTokenOptional, Some(token)) => {
            if let Some(appservice) = state.appservices.by_token(token) {
                return masquerade(state, appservice, query);
            }
            let session = state.accounts.authenticate(token)?;
            refuse_if_locked(state, &session.user_id, path)?;
            Ok(Caller { user: Some(session.user_id), device: Some(session.device_id), appservice: None })
        }
        (AuthKind::AppserviceToken, Some(token)) => {
            let Some(appservice) = state.appservices.by_token(token) else {
                // A user's valid token on an appservice-only endpoint (ping).
                return Err(match state.accounts.authenticate(token) {
                    Ok(_) => Error::forbidden("This endpoint is for application services only"),
                    Err(_) => Error::unknown_token(false),
                }
                .into());
            };
            state.outgoing.destination_is_up(&appservice.destination());
            Ok(Caller { appservice: Some(appservice), ..Caller::default() })
        }
        // `/login` and `/register` only look for an appservice; clients such
        // as matrix-nio send their current user token along, which is ignored.
        (AuthKind::AppserviceTokenOptional, Some(token)) => {
            Ok(Caller { appservice: state.appservices.by_token(token), ..Caller::default() })
        }
        // Checked once the body is read (the signature covers it).
        (AuthKind::ServerSignatures, _) => Ok(Caller::default()),
    }
}

/// An appservice acting as one of its users: `user_id` (its bot when
/// absent) and optionally `device_id`, from the query string.
fn masquerade(
    state: &AppState,
    appservice: Arc<Appservice>,
    query: Option<&str>,
) -> Result<Caller, ApiError> {
    // It is calling us, so it is up: deliver what waits for it now.
    state.outgoing.destination_is_up(&appservice.destination());
    let param = |name: &str| query_param(query, name);
    let user = match param("user_id") {
        Some(raw) => UserId::parse(raw).map_err(|_| Error::invalid_param("Invalid user_id"))?,
        None => appservice.bot.clone(),
    };
    if user.server_name() != state.config.server_name || !appservice.is_user_in_namespace(&user) {
        let message = format!("The application service may not act as {user}: not in its namespace");
        return Err(Error::matrix(403, ErrorKind::Exclusive, message).into());
    }
    if !state.accounts.exists(&user)? {
        return Err(Error::forbidden(format!("The application service has not registered {user}")).into());
    }
    let device = match param("device_id").or_else(|| param("org.matrix.msc3202.device_id")) {
        Some(raw) => {
            let device = OwnedDeviceId::from(raw);
            if state.accounts.device(&user, &device)?.is_none() {
                return Err(
                    Error::matrix(400, ErrorKind::UnknownDevice, "Unknown device for this user").into()
                );
            }
            Some(device)
        }
        None => None,
    };
    Ok(Caller { user: Some(user), device, appservice: Some(appservice) })
}

async fn read_body(body: Body, parts: &Parts, limit: u64) -> Result<bytes::Bytes, ApiError> {
    let too_large = || Error::too_large(format!("Request body is larger than {limit} bytes"));
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(too_large().into());
    }
    let bytes = axum::body::to_bytes(body, limit as usize).await.map_err(|_| too_large())?;
    if bytes.is_empty() && matches!(parts.method, Method::POST | Method::PUT) && looks_like_json_body(parts) {
        // Some clients (matrix-nio's join, among others) send no body where
        // every field is optional; read it as the empty object, as Synapse does.
        return Ok(bytes::Bytes::from_static(b"{}"));
    }
    if !bytes.is_empty() && parts.method != Method::GET && looks_like_json_body(parts) {
        // serde skips string contents it ignores, so check UTF-8 explicitly.
        std::str::from_utf8(&bytes).map_err(|_| Error::not_json("Request body is not valid UTF-8"))?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(|e| Error::not_json(format!("Request body is not valid JSON: {e}")))?;
    }
    Ok(bytes)
}

/// A UIA password stage naming the user the pre-r0.4 way (`"user": "…"`,
/// which clients and SyTest still send, and Synapse accepts) gets the
/// `identifier` ruma's type requires; any other body is left as sent.
fn with_password_identifier(bytes: bytes::Bytes) -> bytes::Bytes {
    if !bytes.windows(16).any(|w| w == b"m.login.password") {
        return bytes;
    }
    let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return bytes };
    let Some(auth) = body.get_mut("auth").filter(|a| a.is_object()) else { return bytes };
    if auth["type"] != "m.login.password" || !auth["identifier"].is_null() || !auth["user"].is_string() {
        return bytes;
    }
    auth["identifier"] = serde_json::json!({"type": "m.id.user", "user": auth["user"]});
    serde_json::to_vec(&body).map(bytes::Bytes::from).unwrap_or(bytes)
}

/// Client API bodies are JSON unless the client declares another type (media uploads).
fn looks_like_json_body(parts: &Parts) -> bool {
    match parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ct) => {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/json")
                || ct.starts_with("text/plain")
                || ct.starts_with("application/x-www-form-urlencoded")
        }
    }
}

/// Let ruma parse the request, containing a panic in its deserialisers
/// (e.g. `/login` without `type` indexes a missing key): bad input is the
/// client's mistake, so it gets 400 `M_BAD_JSON`, not a 500.
fn parse_contained<R: IncomingRequest>(
    request: http::Request<&[u8]>,
    path_args: &[&str],
) -> Result<R, ApiError> {
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        R::try_from_http_request(request, path_args)
    }));
    match parsed {
        Ok(result) => result.map_err(parse_error),
        Err(_) => {
            tracing::debug!(endpoint = std::any::type_name::<R>(), "request parser panicked on bad input");
            Err(Error::bad_json("Invalid request body").into())
        }
    }
}

fn parse_error(err: FromHttpRequestError) -> ApiError {
    match err {
        FromHttpRequestError::MethodMismatch { .. } => {
            Error::unrecognized(405, "Method not allowed for this endpoint")
        }
        FromHttpRequestError::Deserialization(err) => match err {
            DeserializationError::Json(e) => Error::bad_json(format!("Invalid request body: {e}")),
            DeserializationError::Query(e) => {
                let text = e.to_string();
                if text.contains("missing field") {
                    Error::missing_param(format!("Missing query parameter: {text}"))
                } else {
                    Error::invalid_param(format!("Invalid query parameter: {text}"))
                }
            }
            DeserializationError::Ident(e) => Error::invalid_param(format!("Invalid identifier: {e}")),
            other => Error::bad_json(format!("Invalid request: {other}")),
        },
        other => Error::bad_json(format!("Invalid request: {other}")),
    }
    .into()
}

/// A ruma response on its way out.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(response) => response.map(|body| Body::from(body.freeze())).into_response(),
            Err(err) => ApiError(Error::internal(format!("serialising response: {err}"))).into_response(),
        }
    }
}

/// The user behind an access token, for plain handlers that stream their
/// bodies instead of going through [`Ruma`] (media uploads).
pub struct AuthedUser(pub OwnedUserId);

impl axum::extract::FromRequestParts<AppState> for AuthedUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = access_token(parts);
        let caller = authenticate(state, AuthKind::AccessToken, token.as_deref(), &parts.uri)?;
        caller.user.map(Self).ok_or_else(|| Error::missing_token().into())
    }
}

/// The user and device behind an access token, for plain handlers.
pub struct AuthedDevice(pub OwnedUserId, pub OwnedDeviceId);

impl axum::extract::FromRequestParts<AppState> for AuthedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = access_token(parts);
        let caller = authenticate(state, AuthKind::AccessToken, token.as_deref(), &parts.uri)?;
        match (caller.user, caller.device) {
            (Some(user), Some(device)) => Ok(Self(user, device)),
            _ => Err(Error::missing_token().into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, with_password_identifier};

    #[test]
    fn a_legacy_password_stage_gets_an_identifier() {
        let legacy = br#"{"auth":{"type":"m.login.password","user":"@a:hs","password":"p"},"k":1}"#;
        let body: serde_json::Value =
            serde_json::from_slice(&with_password_identifier(bytes::Bytes::from_static(legacy))).unwrap();
        assert_eq!(body["auth"]["identifier"], serde_json::json!({"type": "m.id.user", "user": "@a:hs"}));
        assert_eq!(body["k"], 1);
        for unchanged in [
            &br#"{"auth":{"type":"m.login.password","identifier":{"type":"m.id.user","user":"a"},"user":"b"}}"#[..],
            br#"["m.login.password"]"#,
            br#"{"auth":"m.login.password"}"#,
        ] {
            assert_eq!(&with_password_identifier(bytes::Bytes::copy_from_slice(unchanged))[..], unchanged);
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb"), "a/b");
        assert_eq!(percent_decode("abc"), "abc");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%4"), "end%4");
    }
}
