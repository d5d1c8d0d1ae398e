//! The operators' side of Guildhall that belongs to no one service: server keys with scopes
//! (`keys`: the `Admin` extractor every admin route takes, and `/v1/admin/keys`) and the audit
//! log's list (`/v1/admin/audit`; entries are written by `crate::audit::record` in each action's
//! transaction).
//!
//! Both tables are the platform's, like the outbox: every service reads `admin_keys` (to know a
//! key) and writes `admin_audit` (in its own transactions). Their routes are served by the process
//! that serves accounts; the ALB sends `/v1/admin/keys*` and `/v1/admin/audit*` there.

pub mod keys;
pub mod stats;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{delete, get, post};
use utoipa::OpenApi;

pub use keys::{Admin, AdminKey, Scope, Scopes};

use crate::db::Database;
use crate::error::ApiError;

/// What the key and audit routes need. Cheap to clone.
#[derive(Clone)]
pub struct AdminState {
    /// Keys and the audit log.
    pub db: Database,
    /// The server keys (revocations make it forget what it remembered).
    pub keys: AdminKey,
    /// Where every process publishes its live figures (`stats`).
    pub cache: crate::cache::Cache,
}

impl FromRef<AdminState> for AdminKey {
    fn from_ref(state: &AdminState) -> Self {
        state.keys.clone()
    }
}

/// `/v1/admin/keys` and `/v1/admin/audit`.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/admin/keys", post(keys::create_key).get(keys::list))
        .route("/v1/admin/keys/me", get(keys::me))
        .route("/v1/admin/keys/{id}", delete(keys::revoke))
        .route("/v1/admin/audit", get(crate::audit::list))
        .route("/v1/admin/stats", get(stats::stats))
        .with_state(state)
}

/// The OpenAPI description of the key and audit routes.
#[derive(OpenApi)]
#[openapi(
    paths(keys::create_key, keys::list, keys::me, keys::revoke, crate::audit::list, stats::stats),
    components(schemas(
        keys::Scope, keys::CreateKey, keys::KeyView, keys::KeyIdentity, stats::Stats, keys::CreatedKey, keys::KeyPage, crate::audit::AuditEntry, crate::audit::AuditPage,
        crate::error::ErrorBody
    )),
    tags((name = "admin", description = "Server keys and the audit log (operators)"))
)]
pub struct ApiDoc;

/// A list's `limit`: 1 to 100, default 50.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit.unwrap_or(50) {
        n @ 1..=100 => Ok(n),
        _ => Err(ApiError::invalid("limit", "limit must be between 1 and 100")),
    }
}

/// A cursor that is a row's UUID (lists ordered by id), checked.
pub fn uuid_cursor(cursor: &str) -> Result<&str, ApiError> {
    uuid::Uuid::try_parse(cursor).map(|_| cursor).map_err(|_| ApiError::invalid("cursor", "cursor must be a next_cursor of this list"))
}

/// Trims `rows`, read with `limit + 1`, to `limit`, and answers the cursor of the next page: the
/// last row's, when there was one more.
pub fn next_cursor<T>(rows: &mut Vec<T>, limit: i64, cursor_of: impl Fn(&T) -> String) -> Option<String> {
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    if more { rows.last().map(cursor_of) } else { None }
}
