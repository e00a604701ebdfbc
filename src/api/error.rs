//! The one table from errors to HTTP: every failure leaves as
//! `{"error": {"code", "message"}}` with a status decided here, through the
//! library's [`Error`] (rejections from the log and call failures are
//! mapped to it first, so the HTTP API and `Sessions<H>` agree).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::Error;
use crate::model::{Rejection, SessionId};
use crate::peer::CallError;
use crate::raft::WriteError;

/// An error answer: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = Error)]
pub(super) struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A stable code and a message for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub(super) struct ErrorDetail {
    /// Stable, snake_case: `not_found`, `bad_json`, `no_quorum`, `unauthorized`, ...
    pub code: String,
    /// For people; may change.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let (status, code) = match &e {
            Error::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_input"),
            Error::UnknownKind(_) => (StatusCode::BAD_REQUEST, "unknown_kind"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::Exists(_) => (StatusCode::CONFLICT, "exists"),
            Error::Rejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            Error::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "state_too_large"),
            Error::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::OutcomeUnknown(_) => (StatusCode::SERVICE_UNAVAILABLE, "outcome_unknown"),
            Error::Conflict { code, .. } => (StatusCode::CONFLICT, *code),
            Error::NoSuchNode(_) => (StatusCode::NOT_FOUND, "no_such_node"),
            Error::NotAllowed(_) => (StatusCode::CONFLICT, "not_allowed"),
            // `Error` is non-exhaustive for embedders; every variant is listed above.
            #[allow(unreachable_patterns)]
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        Error::from(e).into()
    }
}

impl From<Rejection> for ApiError {
    fn from(e: Rejection) -> Self {
        Error::from(e).into()
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        Error::from(e).into()
    }
}

pub(super) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            rejection.body_text(),
        )
    } else {
        ApiError::bad_request("bad_body", rejection.body_text())
    }
}

pub(super) fn parse_json<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(body_error)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_json", format!("invalid request body: {e}")))
}

pub(super) fn session_id(text: &str) -> Result<SessionId, ApiError> {
    SessionId::new(text)
        .map_err(|e| ApiError::bad_request("invalid_id", format!("invalid session id: {e}")))
}
