//! The audit log: one entry per admin action, saying which key did what to what, with its
//! parameters, when, and in which request.
//!
//! A handler writes the entry with [`record`] in the same transaction as the change it describes,
//! so that an entry exists exactly when the change does (as the outbox does for events); an action
//! without a transaction of its own (a file deleted from S3, say) records it once the action is
//! done. Entries are read with `GET /v1/admin/audit` (scope `audit`), newest first, filtered by
//! key, action or target.

use anyhow::Context;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sqlx::{Any, Executor, Row};
use utoipa::{IntoParams, ToSchema};

use crate::admin::{Admin, AdminState, Scope};
use crate::db::now_millis;
use crate::error::{ApiError, ErrorBody};
use crate::http::{Json, Query};

/// Records that `admin` did `action` (`area.verb`, e.g. `accounts.ban`) to `target` (`kind:id`,
/// e.g. `account:<id>`), with `detail` (a JSON object: the parameters and what changed), inside
/// the caller's transaction (or on the pool, for an action that has none).
pub async fn record<'e>(
    conn: impl Executor<'e, Database = Any>,
    admin: &Admin,
    action: &str,
    target: &str,
    detail: &impl Serialize,
) -> anyhow::Result<()> {
    let detail = serde_json::to_string(detail).with_context(|| format!("serialising the detail of {action}"))?;
    sqlx::query(
        "INSERT INTO admin_audit (id, at, key_id, key_name, action, target, detail, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(now_millis())
    .bind(admin.key_id())
    .bind(admin.key_name())
    .bind(action)
    .bind(target)
    .bind(detail)
    .bind(admin.request_id())
    .execute(conn)
    .await
    .with_context(|| format!("recording {action} in the audit log"))?;
    Ok(())
}

/// An entry of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Entry id (UUIDv7, time-ordered).
    pub id: String,
    /// RFC 3339.
    pub at: String,
    /// The key that acted: `bootstrap` or a named key's id.
    pub key_id: String,
    /// That key's name when it acted.
    pub key_name: String,
    /// What it did, e.g. `accounts.ban`, `leaderboards.record_delete`, `keys.revoke`.
    pub action: String,
    /// What it acted on, e.g. `account:<id>`, `leaderboard:<id>`, `asset:<id>`, `key:<id>`.
    pub target: String,
    /// The action's parameters and what it changed.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// The request's `x-request-id`, to find it in the logs.
    pub request_id: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntry>,
    /// Pass as `cursor` for older entries; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/admin/audit`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this key's actions: `bootstrap` or a key id.
    #[param(max_length = 64)]
    pub key: Option<String>,
    /// Only this action, e.g. `accounts.ban`.
    #[param(max_length = 64)]
    pub action: Option<String>,
    /// Only actions on this target, e.g. `account:<id>`.
    #[param(max_length = 200)]
    pub target: Option<String>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// A filter's value: at most `max` characters.
fn filter<'q>(field: &str, value: Option<&'q str>, max: usize) -> Result<Option<&'q str>, ApiError> {
    match value {
        Some(v) if v.chars().count() > max => Err(ApiError::invalid(field, format!("{field} must be at most {max} characters"))),
        other => Ok(other),
    }
}

/// The audit log, newest first, filtered by key, action and target (each exact).
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("bearer" = [])), params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 403, description = "`insufficient_scope`: the key lacks `audit`", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list(State(state): State<AdminState>, admin: Admin, Query(query): Query<AuditQuery>) -> Result<Json<AuditPage>, ApiError> {
    admin.require(Scope::Audit)?;
    let limit = crate::admin::page_limit(query.limit)?;
    let before = query.cursor.as_deref().map(crate::admin::uuid_cursor).transpose()?;
    let filters = [
        ("key_id", filter("key", query.key.as_deref(), 64)?),
        ("action", filter("action", query.action.as_deref(), 64)?),
        ("target", filter("target", query.target.as_deref(), 200)?),
    ];
    // Fixed column names only; every value is bound.
    let mut sql = String::from("SELECT id, at, key_id, key_name, action, target, detail, request_id FROM admin_audit WHERE id < $1");
    let mut values = vec![before.unwrap_or("z")];
    for (column, value) in filters {
        if let Some(value) = value {
            values.push(value);
            sql.push_str(&format!(" AND {column} = ${}", values.len()));
        }
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", values.len() + 1));
    let mut select = sqlx::query(&sql);
    for value in values {
        select = select.bind(value);
    }
    let rows = select.bind(limit + 1).fetch_all(state.db.pool()).await.context("reading the audit log")?;
    let mut entries = rows
        .iter()
        .map(|row| {
            let detail: String = row.try_get("detail")?;
            Ok(AuditEntry {
                id: row.try_get("id")?,
                at: crate::time::rfc3339(row.try_get("at")?),
                key_id: row.try_get("key_id")?,
                key_name: row.try_get("key_name")?,
                action: row.try_get("action")?,
                target: row.try_get("target")?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                request_id: row.try_get("request_id")?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let next_cursor = crate::admin::next_cursor(&mut entries, limit, |e| e.id.clone());
    Ok(Json(AuditPage { entries, next_cursor }))
}
