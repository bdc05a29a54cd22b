//! What Estuary asks an appservice, as ruma's Application Service API
//! requests with the `hs_token`: transactions (sent by the outgoing queue),
//! ping, user and alias queries, third-party lookups.
//!
//! Appservices are configured by the admin and usually run beside the
//! server, so loopback and private addresses are allowed here (unlike
//! federation).

use std::time::Duration;

use estuary_core::{Error, Result, error::ErrorKind};
use ruma::api::{
    IncomingResponseExt, OutgoingRequest, OutgoingRequestExt, appservice::HomeserverToken,
    path_builder::PathBuilder,
};

use super::Appservice;
use crate::federation::client::{AnswerError, error_chain, parse_answer, read_answer, with_trusted_roots};

/// Appservice answers are small JSON (transactions answer `{}`).
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// A transaction or query the appservice has not answered in this long failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request to an appservice failed.
#[derive(Debug)]
pub enum AppserviceError {
    /// The registration has no URL: it only talks to us.
    NoUrl,
    Timeout,
    Unreachable(String),
    Status {
        status: u16,
        body: String,
    },
    Invalid(String),
}

impl std::fmt::Display for AppserviceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoUrl => write!(f, "the registration has no url"),
            Self::Timeout => write!(f, "no answer within {} s", REQUEST_TIMEOUT.as_secs()),
            Self::Unreachable(reason) => write!(f, "unreachable: {reason}"),
            Self::Status { status, body } => write!(f, "answered {status}: {body}"),
            Self::Invalid(reason) => write!(f, "invalid answer: {reason}"),
        }
    }
}

impl AppserviceError {
    /// The error `POST /appservice/{id}/ping` reports (spec v1.7).
    pub fn into_ping_error(self) -> Error {
        use ruma::api::error::BadStatusErrorData;
        match self {
            Self::NoUrl => Error::matrix(400, ErrorKind::UrlNotSet, "The appservice has no URL to ping"),
            Self::Timeout => {
                Error::matrix(504, ErrorKind::ConnectionTimeout, "The appservice did not answer")
            }
            Self::Unreachable(reason) => Error::matrix(502, ErrorKind::ConnectionFailed, reason),
            Self::Status { status, body } => {
                let mut data = BadStatusErrorData::new();
                data.status = http::StatusCode::from_u16(status).ok();
                data.body = Some(body);
                Error::matrix(502, ErrorKind::BadStatus(data), format!("Ping returned status {status}"))
            }
            Self::Invalid(reason) => {
                Error::matrix(502, ErrorKind::BadStatus(BadStatusErrorData::new()), reason)
            }
        }
    }
}

/// One HTTP client for every appservice (connections are reused).
pub struct AppserviceClient {
    http: reqwest::Client,
}

impl AppserviceClient {
    pub fn new(config: &estuary_core::Config) -> Result<Self> {
        let builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("Estuary/", env!("CARGO_PKG_VERSION")));
        let http = with_trusted_roots(builder, config)?.build().map_err(Error::internal)?;
        Ok(Self { http })
    }

    /// Send `request` to the appservice with its `hs_token`.
    pub async fn send<R>(
        &self,
        appservice: &Appservice,
        request: R,
    ) -> std::result::Result<R::IncomingResponse, AppserviceError>
    where
        R: OutgoingRequest<Authentication = HomeserverToken>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        let answer = self.answer(appservice, request).await?;
        parse_answer::<R::IncomingResponse>(&answer).map_err(AppserviceError::Invalid)
    }

    /// Send `request` and read the answer as plain JSON, for answers that
    /// are passed on as the bridge wrote them (third-party protocols, whose
    /// bridges leave out fields ruma's type requires).
    pub async fn send_for_json<R>(
        &self,
        appservice: &Appservice,
        request: R,
    ) -> std::result::Result<serde_json::Value, AppserviceError>
    where
        R: OutgoingRequest<Authentication = HomeserverToken>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        let answer = self.answer(appservice, request).await?;
        serde_json::from_slice(answer.body()).map_err(|e| AppserviceError::Invalid(e.to_string()))
    }

    /// The 2xx answer to `request`.
    async fn answer<R>(
        &self,
        appservice: &Appservice,
        request: R,
    ) -> std::result::Result<http::Response<Vec<u8>>, AppserviceError>
    where
        R: OutgoingRequest<Authentication = HomeserverToken>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        let base_url = appservice.registration.url.as_deref().ok_or(AppserviceError::NoUrl)?;
        let http_request = request
            .try_into_http_request::<Vec<u8>>(base_url, &appservice.registration.hs_token, ())
            .map_err(|e| AppserviceError::Invalid(format!("cannot build the request: {e}")))?;
        let request = reqwest::Request::try_from(http_request)
            .map_err(|e| AppserviceError::Invalid(format!("cannot build the request: {e}")))?;
        let response = self.http.execute(request).await.map_err(|e| {
            if e.is_timeout() {
                AppserviceError::Timeout
            } else {
                AppserviceError::Unreachable(error_chain(&e))
            }
        })?;
        read_answer(response, MAX_ANSWER_BYTES).await.map_err(|e| match e {
            AnswerError::Body(reason) => AppserviceError::Unreachable(reason),
            AnswerError::Status { status, body } => AppserviceError::Status { status, body },
        })
    }
}

/// Send and log a failure naming the appservice; `None` when it failed.
pub(crate) async fn ask<R>(
    client: &AppserviceClient,
    appservice: &Appservice,
    request: R,
) -> Option<R::IncomingResponse>
where
    R: OutgoingRequest<Authentication = HomeserverToken>,
    for<'a> R::PathBuilder: PathBuilder<Input<'a> = ()>,
    R::IncomingResponse: IncomingResponseExt,
{
    match client.send(appservice, request).await {
        Ok(response) => Some(response),
        Err(AppserviceError::Status { status: 404, .. }) => None,
        Err(err) => {
            tracing::warn!(appservice = appservice.id(), "appservice request failed: {err}");
            None
        }
    }
}
