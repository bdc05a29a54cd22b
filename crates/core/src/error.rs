//! The one error type of Estuary. Every failure a client can cause carries its
//! Matrix `errcode` (a ruma [`ErrorKind`]) and HTTP status; the API crate maps
//! it to the wire in one place.

use std::fmt;

use ruma::api::client::uiaa::UiaaInfo;
pub use ruma::api::error::ErrorKind;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// A Matrix error the client should see: status, errcode and message.
    Matrix { status: u16, kind: ErrorKind, message: String },
    /// User-Interactive Authentication must continue (HTTP 401 with the flows).
    Uiaa(Box<UiaaInfo>),
    /// A server-side failure (storage, bug); the client sees 500 `M_UNKNOWN`.
    Internal(String),
}

impl Error {
    pub fn matrix(status: u16, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Matrix { status, kind, message: message.into() }
    }
    pub fn internal(context: impl fmt::Display) -> Self {
        Self::Internal(context.to_string())
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::matrix(403, ErrorKind::Forbidden, message)
    }
    /// 401 `M_UNAUTHORIZED`: a federation request without a valid signature.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::matrix(401, ErrorKind::Unauthorized, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::matrix(404, ErrorKind::NotFound, message)
    }
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::matrix(400, ErrorKind::BadJson, message)
    }
    pub fn not_json(message: impl Into<String>) -> Self {
        Self::matrix(400, ErrorKind::NotJson, message)
    }
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::matrix(400, ErrorKind::InvalidParam, message)
    }
    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::matrix(400, ErrorKind::MissingParam, message)
    }
    pub fn unrecognized(status: u16, message: impl Into<String>) -> Self {
        Self::matrix(status, ErrorKind::Unrecognized, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::matrix(413, ErrorKind::TooLarge, message)
    }
    pub fn missing_token() -> Self {
        Self::matrix(401, ErrorKind::MissingToken, "Missing access token")
    }
    pub fn unknown_token(soft_logout: bool) -> Self {
        use ruma::api::error::UnknownTokenErrorData;
        let mut data = UnknownTokenErrorData::new();
        data.soft_logout = soft_logout;
        Self::matrix(401, ErrorKind::UnknownToken(data), "Unknown or expired access token")
    }

    /// The errcode string, for logs and tests.
    pub fn errcode(&self) -> String {
        match self {
            Self::Matrix { kind, .. } => kind.errcode().to_string(),
            Self::Uiaa(_) => "UIAA".to_owned(),
            Self::Internal(_) => "M_UNKNOWN".to_owned(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Matrix { status, kind, message } => {
                write!(f, "{status} {}: {message}", kind.errcode())
            }
            Self::Uiaa(_) => write!(f, "user-interactive authentication required"),
            Self::Internal(message) => write!(f, "internal error: {message}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::internal(format!("JSON serialisation: {err}"))
    }
}
