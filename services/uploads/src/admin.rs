//! Operators' asset routes: any player's assets (the uploads service's part of the account view,
//! and the moderation list), and taking an asset down. Both require the key's `uploads` scope; a
//! takedown leaves an audit entry.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use platform::auth::{Admin, Scope};
use platform::error::ErrorBody;
use platform::http::{Json, Query};
use platform::{ApiError, ApiResult};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::UploadsState;
use crate::api::{AssetPage, base_url, valid_id, view};
use crate::store::{self, Filter, State as AssetState};

/// The operators' asset routes.
pub fn routes() -> Router<UploadsState> {
    Router::new().route("/v1/admin/assets", get(list_assets)).route("/v1/admin/assets/{asset_id}", delete(take_down))
}

/// Query of `GET /v1/admin/assets`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AdminListQuery {
    /// Only this player's assets (account id).
    #[param(max_length = 64)]
    pub owner_id: Option<String>,
    /// Only assets in this state.
    pub state: Option<AssetState>,
    /// 1-100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// Any player's assets, or everyone's, newest first, in any state, with a download URL for ready
/// ones (to look at them before a takedown). With `owner_id`, the uploads service's part of the
/// account view (`GET /v1/admin/accounts/{id}`).
#[utoipa::path(get, path = "/v1/admin/assets", tag = "uploads", params(AdminListQuery), security(("bearer" = [])),
    responses((status = 200, body = AssetPage), (status = 400, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `uploads`", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_assets(
    State(state): State<UploadsState>,
    admin: Admin,
    headers: HeaderMap,
    Query(query): Query<AdminListQuery>,
) -> ApiResult<Json<AssetPage>> {
    admin.require(Scope::Uploads)?;
    let limit = platform::admin::page_limit(query.limit)?;
    let before = query.cursor.as_deref().map(platform::admin::uuid_cursor).transpose()?;
    if query.owner_id.as_ref().is_some_and(|o| o.is_empty() || o.len() > 64) {
        return Err(ApiError::invalid("owner_id", "owner_id must be an account id"));
    }
    let filter = Filter { owner: query.owner_id.as_deref(), state: query.state };
    let mut rows = store::list(&state.db, filter, before, limit + 1).await?;
    let next_cursor = platform::admin::next_cursor(&mut rows, limit, |a| a.id.clone());
    let base = base_url(&state, &headers);
    let mut assets = Vec::with_capacity(rows.len());
    for asset in rows {
        assets.push(view(&state, asset, &base).await?);
    }
    Ok(Json(AssetPage { assets, next_cursor }))
}

/// Why an asset is taken down.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TakeDownQuery {
    /// For the audit log, 500 characters at most.
    #[param(max_length = 500)]
    pub reason: Option<String>,
}

/// Takes an asset down: its bytes are deleted (the published object and the upload), then its
/// record, and its room in the owner's quota comes back. Guildhall's own URLs fail at once; on S3
/// the CDN's copies expire within five minutes (published objects carry `max-age=300`), so no
/// invalidation is needed.
#[utoipa::path(delete, path = "/v1/admin/assets/{asset_id}", tag = "uploads", params(("asset_id" = String, Path, description = "Asset id"), TakeDownQuery),
    security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, description = "`insufficient_scope`: the key lacks `uploads`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(asset_id))]
pub async fn take_down(
    State(state): State<UploadsState>,
    admin: Admin,
    Path(asset_id): Path<String>,
    Query(query): Query<TakeDownQuery>,
) -> ApiResult<StatusCode> {
    admin.require(Scope::Uploads)?;
    if query.reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::invalid("reason", "reason must be at most 500 characters"));
    }
    valid_id(&asset_id)?;
    let not_found = || ApiError::NotFound("no such asset".into());
    let asset = store::get(&state.db, &asset_id).await?.ok_or_else(not_found)?;
    let detail = serde_json::json!({
        "owner_id": asset.owner_id,
        "purpose": asset.purpose,
        "content_type": asset.content_type,
        "size_bytes": asset.size_bytes,
        "state": asset.state,
        "object_key": asset.object_key,
        "reason": query.reason,
    });
    if !crate::verify::take_down(&state, &asset, &admin, &detail).await? {
        return Err(not_found());
    }
    tracing::info!(owner_id = asset.owner_id, by = admin.key_id(), "asset taken down");
    Ok(StatusCode::NO_CONTENT)
}
