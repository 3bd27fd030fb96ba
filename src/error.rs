//! The one error type handlers return: a Matrix error `{errcode, error}` with
//! its HTTP status. Internal failures are logged and shown as `M_UNKNOWN`.

use std::borrow::Cow;

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use http::StatusCode;
use serde_json::{Map, Value, json};

#[derive(Debug)]
pub struct Error {
    pub status: StatusCode,
    pub errcode: Cow<'static, str>,
    pub message: String,
    /// Extra top-level fields, e.g. `retry_after_ms` or a UIA flow description.
    pub extra: Map<String, Value>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(status: StatusCode, errcode: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { status, errcode: errcode.into(), message: message.into(), extra: Map::new() }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_FORBIDDEN", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
    }

    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_JSON", message)
    }

    pub fn not_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_NOT_JSON", message)
    }

    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", message)
    }

    pub fn missing_param(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_MISSING_PARAM", message)
    }

    pub fn missing_token() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN", "This endpoint needs an access token; log in first.")
    }

    pub fn unknown_token() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "The access token is not known; log in again.")
            .with("soft_logout", Value::Bool(false))
    }

    pub fn user_deactivated() -> Self {
        Self::new(StatusCode::FORBIDDEN, "M_USER_DEACTIVATED", "This account has been deactivated.")
    }

    pub fn unrecognized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "This endpoint does not accept that HTTP method.")
    }

    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", "Too many requests; wait and try again.")
            .with("retry_after_ms", json!(retry_after_ms))
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", message)
    }

    pub fn user_in_use() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_USER_IN_USE", "That user ID is already taken.")
    }

    pub fn invalid_username(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_INVALID_USERNAME", message)
    }

    pub fn unsupported_room_version(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION", message)
    }

    pub fn room_in_use(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_ROOM_IN_USE", message)
    }

    pub fn bad_alias(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_ALIAS", message)
    }

    pub fn bad_state(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "M_BAD_STATE", message)
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {err}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Internal server error; the server log has details.")
    }

    /// A 401 answer that describes the user-interactive auth flows still open.
    pub fn uiaa(info: Value) -> Self {
        let mut err = Self::new(StatusCode::UNAUTHORIZED, "", "");
        if let Value::Object(map) = info {
            err.extra = map;
        }
        err
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.errcode, self.message)
    }
}

impl From<crate::storage::StorageError> for Error {
    fn from(err: crate::storage::StorageError) -> Self {
        Self::internal(err)
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::internal(format!("json: {err}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        if !self.errcode.is_empty() {
            body.insert("errcode".to_owned(), Value::String(self.errcode.into_owned()));
            body.insert("error".to_owned(), Value::String(self.message));
        }
        (self.status, Json(Value::Object(body))).into_response()
    }
}
