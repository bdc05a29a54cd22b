//! The one place where errors become HTTP responses with Matrix bodies.

use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use estuary_core::Error;
use http::StatusCode;
use ruma::api::{
    OutgoingResponseExt,
    error::{Error as MatrixError, ErrorBody, ErrorKind, StandardErrorBody},
};

/// An [`Error`] on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let rendered = match self.0 {
            Error::Matrix { status, kind, message } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                matrix_error(status, kind, message)
            }
            Error::Uiaa(info) => return uiaa_response(&info),
            Error::Internal(message) => {
                tracing::error!("internal error: {message}");
                matrix_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorKind::Unknown,
                    "Internal server error".to_owned(),
                )
            }
        };
        match rendered {
            Ok(response) => response.map(|body| axum::body::Body::from(body.freeze())).into_response(),
            Err(err) => {
                tracing::error!("cannot serialise an error response: {err}");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        }
    }
}

/// A UIA 401: ruma's body, always with `completed` (ruma leaves an empty
/// list out; the spec's examples and clients expect the key).
fn uiaa_response(info: &ruma::api::client::uiaa::UiaaInfo) -> Response {
    let mut body = serde_json::to_value(info).unwrap_or_default();
    if body.get("completed").is_none() {
        body["completed"] = serde_json::json!([]);
    }
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

fn matrix_error(
    status: StatusCode,
    kind: ErrorKind,
    message: String,
) -> Result<http::Response<BytesMut>, ruma::api::error::IntoHttpError> {
    MatrixError::new(status, ErrorBody::Standard(StandardErrorBody::new(kind, message)))
        .try_into_http_response::<BytesMut>()
}
