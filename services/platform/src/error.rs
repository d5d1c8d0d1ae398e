//! The one error type every handler returns, rendered as
//! `{"error": {"code": "stable_snake_case", "message": "...", "field": "..."}}`.
//!
//! Client errors carry a stable machine-readable code; internal errors are logged with their
//! whole context chain and answered with an opaque 500, so no detail of the backend leaks. An
//! internal error caused by a dependency that is down (the database or Redis refusing, resetting
//! or timing out, see `unavailable_dependency`) is answered 503 `unavailable` instead, with a
//! generic message and `Retry-After: 1`, and logged as a warning: this one classification serves
//! every handler, the WebSocket frames and the workers, so no call site maps those errors itself.

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
    /// 503 `unavailable` with a message written for the client (never internal error text): the
    /// service cannot answer now, e.g. while a leaderboard index is rebuilt.
    #[error("{0}")]
    Unavailable(String),
    /// 503 `read_only_region` with `Retry-After`: this region's database is a replica (a warm
    /// secondary region before its promotion) or the region is fenced (`REGION_ROLE=standby`),
    /// so it serves reads and refuses writes (`crate::region`).
    #[error("this region is read-only until it is promoted; retry shortly")]
    ReadOnlyRegion,
    /// 500 `internal`: logged with context, answered opaquely; 503 `unavailable` when its cause
    /// chain shows a dependency that is down (`unavailable_dependency`).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A backend whose outage an error shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// PostgreSQL (or SQLite).
    Database,
    /// Redis.
    Cache,
    /// S3 (or the local files).
    Storage,
}

/// An error that means `Dependency` did not answer (refused, timed out, or answered that it is
/// unavailable), for clients whose errors `unavailable_dependency` cannot classify by type: the
/// AWS SDK's are generic over each operation.
#[derive(Debug)]
pub struct Unreachable {
    /// Which one.
    pub dependency: Dependency,
    /// What failed, for the logs.
    pub detail: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} unreachable: {}", self.dependency.name(), self.detail)
    }
}

impl std::error::Error for Unreachable {}

impl Dependency {
    /// `database` or `cache`, as logs and readiness name it.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::Database => "database",
            Dependency::Cache => "cache",
            Dependency::Storage => "storage",
        }
    }

    /// What a client is told: which dependency, never why.
    fn public_message(self) -> &'static str {
        match self {
            Dependency::Database => "the database is unavailable; retry shortly",
            Dependency::Cache => "the cache is unavailable; retry shortly",
            Dependency::Storage => "the file storage is unavailable; retry shortly",
        }
    }
}

/// The dependency whose outage caused `err`, if its cause chain holds an error that means "down"
/// rather than "wrong": connection refused, reset or timed out, a pool that could not connect,
/// PostgreSQL starting up or shutting down, Redis not answering (`crate::db::is_unavailable`,
/// `crate::cache::is_unavailable`), S3 not answering (`Unreachable`, from `crate::blobs`).
pub fn unavailable_dependency(err: &anyhow::Error) -> Option<Dependency> {
    err.chain().find_map(|cause| {
        if let Some(err) = cause.downcast_ref::<sqlx::Error>() {
            return crate::db::is_unavailable(err).then_some(Dependency::Database);
        }
        if let Some(err) = cause.downcast_ref::<redis::RedisError>() {
            return crate::cache::is_unavailable(err).then_some(Dependency::Cache);
        }
        cause.downcast_ref::<Unreachable>().map(|u| u.dependency)
    })
}

/// True when `err`'s cause chain holds PostgreSQL's refusal of a write on a read-only
/// connection (SQLSTATE 25006: a hot standby, or `default_transaction_read_only`).
pub fn refused_as_read_only(err: &anyhow::Error) -> bool {
    err.chain().any(
        |cause| matches!(cause.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::Database(db)) if db.code().as_deref() == Some("25006")),
    )
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

    /// The dependency that is down, when that is why this internal error happened.
    pub fn unavailable_dependency(&self) -> Option<Dependency> {
        match self {
            ApiError::Internal(err) => unavailable_dependency(err),
            _ => None,
        }
    }

    /// True when this error is, or was caused by, a write refused because the region is
    /// read-only: `ReadOnlyRegion`, or the database's own refusal (SQLSTATE 25006
    /// `read_only_sql_transaction`) of a write that reached a replica.
    pub fn is_read_only_region(&self) -> bool {
        match self {
            ApiError::ReadOnlyRegion => true,
            ApiError::Internal(err) => refused_as_read_only(err),
            _ => false,
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        if self.is_read_only_region() {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        if self.unavailable_dependency().is_some() {
            return StatusCode::SERVICE_UNAVAILABLE;
        }
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
            ApiError::Unavailable(_) | ApiError::ReadOnlyRegion => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        if self.is_read_only_region() {
            return "read_only_region";
        }
        if self.unavailable_dependency().is_some() {
            return "unavailable";
        }
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
            ApiError::ReadOnlyRegion => "read_only_region",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The message the client gets: the client error's own, or a generic one for internal
    /// errors, which never carry their detail out.
    pub fn public_message(&self) -> String {
        if self.is_read_only_region() {
            return ApiError::ReadOnlyRegion.to_string();
        }
        match self {
            ApiError::Internal(err) => match unavailable_dependency(err) {
                Some(dependency) => dependency.public_message().to_owned(),
                None => "internal error".to_owned(),
            },
            other => other.to_string(),
        }
    }

    /// Logs what the client is not told: an internal error's whole context chain (as an error,
    /// or as a warning when a dependency is down, which is no bug of ours), and 503s' reasons.
    pub fn log(&self) {
        if self.is_read_only_region() {
            // Expected in a secondary region: no bug, and the gate's answers would flood the log.
            tracing::debug!(error = format!("{self:#}"), "write refused: region is read-only");
            return;
        }
        match self {
            ApiError::Internal(err) => match unavailable_dependency(err) {
                // `{:#}` prints the whole context chain: "inserting account: pool timed out".
                Some(dependency) => tracing::warn!(dependency = dependency.name(), error = format!("{err:#}"), "dependency unavailable"),
                None => tracing::error!(error = format!("{err:#}"), "internal error"),
            },
            ApiError::Unavailable(reason) => tracing::warn!(reason, "unavailable"),
            _ => {}
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
        self.log();
        let status = self.status();
        let message = self.public_message();
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
        } else if self.is_read_only_region() {
            let seconds = crate::region::RETRY_AFTER.as_secs().to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        } else if self.unavailable_dependency().is_some() {
            // The dependency is probed again within a second (crate::db, crate::cache).
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// A database error is an internal one like any other: `status` and `code` classify it from the
/// cause chain, as they do an `anyhow::Error` holding it (a pool timeout or a database that is
/// down: 503 `unavailable`; SQLSTATE 25006 on a replica: 503 `read_only_region`), so `?` on a
/// sqlx call answers the same as `.map_err(anyhow::Error::from)?` did.
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::Internal(err.into())
    }
}

/// Unique-constraint violations become 409s through this one helper (STYLE.md 7): a write whose
/// error says it broke the unique index or constraint `name` answers `conflict()` instead; any
/// other error converts as `?` would.
pub trait OnUnique<T> {
    /// `name` is matched as `crate::db::unique_violation` reports it: PostgreSQL names the
    /// constraint (`accounts_email_key`), SQLite the columns (`accounts.email`), so pass a part
    /// both contain (`email`).
    fn on_unique(self, name: &str, conflict: impl FnOnce() -> ApiError) -> ApiResult<T>;
}

impl<T, E: Into<ApiError>> OnUnique<T> for Result<T, E> {
    fn on_unique(self, name: &str, conflict: impl FnOnce() -> ApiError) -> ApiResult<T> {
        self.map_err(|err| match err.into() {
            ApiError::Internal(err) if crate::db::unique_violation(&err).is_some_and(|broken| broken.contains(name)) => conflict(),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    async fn body(err: ApiError) -> (StatusCode, Option<HeaderValue>, serde_json::Value) {
        let response = err.into_response();
        let status = response.status();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        (status, retry_after, serde_json::from_slice(&bytes).expect("JSON"))
    }

    fn internal(cause: impl std::error::Error + Send + Sync + 'static) -> ApiError {
        ApiError::Internal(anyhow::Error::new(cause).context("loading the account").context("handling a request"))
    }

    #[tokio::test]
    async fn a_dependency_outage_deep_in_the_chain_is_a_generic_503() {
        let outages: Vec<(ApiError, &str)> = vec![
            (internal(sqlx::Error::Io(io::Error::new(io::ErrorKind::ConnectionReset, "Connection reset by peer"))), "database"),
            (internal(sqlx::Error::PoolTimedOut), "database"),
            (internal(sqlx::Error::PoolClosed), "database"),
            (internal(redis::RedisError::from(io::Error::new(io::ErrorKind::TimedOut, "Redis did not answer in time"))), "cache"),
            (internal(redis::RedisError::from(io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused"))), "cache"),
        ];
        for (err, dependency) in outages {
            assert_eq!(err.unavailable_dependency().map(Dependency::name), Some(dependency), "{err:?}");
            let (status, retry_after, body) = body(err).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(retry_after.as_ref().and_then(|v| v.to_str().ok()), Some("1"));
            assert_eq!(body["error"]["code"], "unavailable");
            let message = body["error"]["message"].as_str().expect("message");
            assert_eq!(message, format!("the {dependency} is unavailable; retry shortly"));
        }
    }

    #[tokio::test]
    async fn other_internal_errors_stay_opaque_500s() {
        for err in [
            internal(sqlx::Error::RowNotFound),
            internal(sqlx::Error::ColumnNotFound("email".into())),
            internal(redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "wrong type"))),
            ApiError::Internal(anyhow::anyhow!("a bug")),
        ] {
            assert_eq!(err.unavailable_dependency(), None, "{err:?}");
            let (status, retry_after, body) = body(err).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert!(retry_after.is_none());
            assert_eq!(body["error"]["code"], "internal");
            assert_eq!(body["error"]["message"], "internal error");
        }
    }

    #[test]
    fn client_errors_keep_their_own_message() {
        let err = ApiError::invalid("score", "score must be at most 10");
        assert_eq!(
            (err.status(), err.code(), err.public_message().as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request", "score must be at most 10")
        );
        let err = ApiError::Unavailable("the leaderboard index is being rebuilt; retry shortly".into());
        assert_eq!((err.status(), err.code()), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"));
    }
}
