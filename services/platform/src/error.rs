//! The one error type every handler returns, rendered as
//! `{"error": {"code": "stable_snake_case", "message": "...", "field": "..."}}`.
//!
//! Client errors carry a stable machine-readable code; internal errors are logged with their
//! whole context chain and answered with an opaque 500, so no detail of the backend leaks.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_request`: malformed or out-of-range input, naming the field at fault.
    #[error("{message}")]
    InvalidRequest {
        /// The JSON field or parameter at fault, when there is one.
        field: Option<String>,
        /// What is wrong with it.
        message: String,
    },
    /// 401 with a code such as `invalid_credentials`, `invalid_token`, `token_reused`.
    #[error("{message}")]
    Unauthenticated {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// 403 `forbidden`: authenticated, but not allowed to touch this resource.
    #[error("{0}")]
    Forbidden(String),
    /// 404 `not_found`.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 with a code such as `username_taken`.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// 413 `payload_too_large`.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// 415 `unsupported_media_type`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429 `rate_limited`, with a `Retry-After` header.
    #[error("too many requests; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// How long until the limit lets the client through again.
        retry_after: Duration,
    },
    /// Any other client error with its own status and stable code, e.g. 400 `content_type_not_allowed`,
    /// 429 `quota_exceeded`, 403 `signature_invalid`.
    #[error("{message}")]
    Client {
        /// A 4xx status.
        status: StatusCode,
        /// Stable code.
        code: &'static str,
        /// Explanation.
        message: String,
        /// The request field at fault, when there is one.
        field: Option<String>,
    },
    /// 503 `unavailable`: a dependency is down or the process is draining.
    #[error("{0}")]
    Unavailable(String),
    /// 500 `internal`: logged with context, answered opaquely.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// 400 for `field` with `message`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest { field: Some(field.into()), message: message.into() }
    }

    /// A client error with `status` and `code`, naming no field.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client { status, code, message: message.into(), field: None }
    }

    /// 401 `invalid_token` with `message`.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        ApiError::Unauthenticated { code: "invalid_token", message: message.into() }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Client { status, .. } => *status,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthenticated { code, .. } | ApiError::Conflict { code, .. } | ApiError::Client { code, .. } => code,
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// Code, message and, for validation errors, the field at fault.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `invalid_request`, `username_taken`, `rate_limited`.
    pub code: String,
    /// Human-readable explanation; may change between releases.
    pub message: String,
    /// The request field at fault, for `invalid_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(err) => {
                // `{:#}` prints the whole context chain: "inserting account: pool timed out".
                tracing::error!(error = format!("{err:#}"), "internal error");
                "internal error".to_owned()
            }
            ApiError::Unavailable(reason) => {
                tracing::warn!(reason, "unavailable");
                self.to_string()
            }
            other => other.to_string(),
        };
        let field = match &self {
            ApiError::InvalidRequest { field, .. } | ApiError::Client { field, .. } => field.clone(),
            _ => None,
        };
        let body = ErrorBody { error: ErrorDetail { code: self.code().to_owned(), message, field } };
        let mut response = (status, Json(body)).into_response();
        if let ApiError::RateLimited { retry_after } = self {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
