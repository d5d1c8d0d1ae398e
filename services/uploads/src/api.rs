//! The uploads API: create an upload (a presigned URL), complete it, read, list and delete assets.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use platform::auth::Player;
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::http::{Json, Query};
use platform::time::rfc3339;
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::UploadsState;
use crate::kinds;
use crate::store::{self, Asset, Quota, State as AssetState};

/// The uploads routes.
pub fn routes() -> Router<UploadsState> {
    Router::new()
        .route("/v1/uploads", post(create_upload))
        .route("/v1/uploads/{asset_id}/complete", post(complete_upload))
        .route("/v1/assets", get(list_assets))
        .route("/v1/assets/{asset_id}", get(show_asset).delete(delete_asset))
}

/// Body of `POST /v1/uploads`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpload {
    /// `avatar` (PNG, JPEG, WebP; 2 MiB), `screenshot` (PNG, JPEG, WebP; 10 MiB), `replay`
    /// (octet-stream, gzip; 64 MiB) or `ugc` (JSON, zip, octet-stream, PNG, JPEG; 32 MiB).
    #[schema(pattern = "^(avatar|screenshot|replay|ugc)$")]
    pub purpose: String,
    /// MIME type of the file, one the purpose allows.
    #[schema(pattern = "^(image/png|image/jpeg|image/webp|application/octet-stream|application/gzip|application/json|application/zip)$")]
    pub content_type: String,
    /// Exact size of the file in bytes, at most the purpose's limit.
    #[schema(minimum = 1, maximum = 67_108_864)]
    pub size_bytes: u64,
}

/// Where to send the bytes.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadTarget {
    /// Always `PUT`.
    pub method: &'static str,
    /// The signed URL.
    pub url: String,
    /// Headers to send exactly as given (they are signed).
    pub headers: BTreeMap<String, String>,
}

/// Answer of `POST /v1/uploads`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadTicket {
    /// The new asset.
    pub asset_id: String,
    /// How to upload its bytes.
    pub upload: UploadTarget,
    /// RFC 3339: the URL stops working then.
    pub expires_at: String,
}

/// An asset as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetView {
    /// Asset id (UUIDv7).
    pub id: String,
    /// The uploading player.
    pub owner_id: String,
    /// What it is for.
    pub purpose: String,
    /// Declared (and, once ready, checked) type.
    pub content_type: String,
    /// Size in bytes.
    pub size_bytes: i64,
    /// `pending`, `verifying`, `ready` or `rejected`.
    pub state: AssetState,
    /// Why the check failed, for `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reject_reason: Option<String>,
    /// Where to download it, for `ready` assets (a CDN URL, or a signed URL that expires).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A page of assets, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetPage {
    /// The assets.
    pub assets: Vec<AssetView>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/assets`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `me` (the default) or your own account id.
    pub owner: Option<String>,
    /// 1-100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// The base URL of URLs Guildhall signs itself: `PUBLIC_URL`, or the host the client reached.
pub(crate) fn base_url(state: &UploadsState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return url.to_string();
    }
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    format!("http://{host}")
}

pub(crate) async fn view(state: &UploadsState, asset: Asset, base: &str) -> ApiResult<AssetView> {
    let download_url = if asset.state == AssetState::Ready {
        Some(match &state.cdn_base_url {
            Some(cdn) => format!("{cdn}/{}", state.blobs.public_key(&asset.object_key)),
            None => state.blobs.presign_get(&asset.object_key, state.limits.download_url_ttl, base).await?,
        })
    } else {
        None
    };
    Ok(AssetView {
        id: asset.id,
        owner_id: asset.owner_id,
        purpose: asset.purpose,
        content_type: asset.content_type,
        size_bytes: asset.size_bytes,
        state: asset.state,
        reject_reason: asset.reject_reason,
        download_url,
        created_at: rfc3339(asset.created_at),
        updated_at: rfc3339(asset.updated_at),
    })
}

pub(crate) fn valid_id(id: &str) -> ApiResult<()> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(ApiError::NotFound("no such asset".into()));
    }
    Ok(())
}

/// The asset `id`, which `player` must own: 404 when missing, 403 when another player's.
async fn owned(state: &UploadsState, player: &Player, id: &str) -> ApiResult<Asset> {
    valid_id(id)?;
    let asset = store::get(&state.db, id).await?.ok_or_else(|| ApiError::NotFound("no such asset".into()))?;
    if asset.owner_id != player.account_id {
        return Err(ApiError::Forbidden("this asset belongs to another player".into()));
    }
    Ok(asset)
}

/// Starts an upload: checks purpose, type, size and quota, records a pending asset and answers
/// a presigned `PUT` URL bound to the type and size.
#[utoipa::path(
    post, path = "/v1/uploads", tag = "uploads", request_body = CreateUpload,
    security(("bearer" = [])),
    responses(
        (status = 201, body = UploadTicket),
        (status = 400, description = "`invalid_request`, `unsupported_purpose`, `content_type_not_allowed`, `too_large`", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`", body = ErrorBody),
    )
)]
pub async fn create_upload(
    State(state): State<UploadsState>,
    player: Player,
    headers: HeaderMap,
    Json(body): Json<CreateUpload>,
) -> ApiResult<impl IntoResponse> {
    let purpose = kinds::purpose(body.purpose.trim()).ok_or_else(|| ApiError::Client {
        status: StatusCode::BAD_REQUEST,
        code: "unsupported_purpose",
        message: format!("purpose must be one of: {}", kinds::PURPOSES.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")),
        field: Some("purpose".into()),
    })?;
    let content_type = body.content_type.trim().to_ascii_lowercase();
    if !purpose.content_types.contains(&content_type.as_str()) {
        return Err(ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            code: "content_type_not_allowed",
            message: format!("a {} must be one of: {}", purpose.name, purpose.content_types.join(", ")),
            field: Some("content_type".into()),
        });
    }
    if body.size_bytes == 0 {
        return Err(ApiError::invalid("size_bytes", "size_bytes must be at least 1"));
    }
    if body.size_bytes > purpose.max_bytes {
        return Err(ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            code: "too_large",
            message: format!("a {} may be at most {} bytes", purpose.name, purpose.max_bytes),
            field: Some("size_bytes".into()),
        });
    }
    let size = i64::try_from(body.size_bytes).map_err(|_| ApiError::invalid("size_bytes", "size_bytes is too large"))?;
    let now = now_millis();
    let ttl = state.limits.upload_url_ttl;
    let id = uuid::Uuid::now_v7().to_string();
    let object_key = format!("{}/{id}", purpose.name);
    let asset = Asset {
        id: id.clone(),
        owner_id: player.account_id.clone(),
        purpose: purpose.name.to_owned(),
        content_type: content_type.clone(),
        size_bytes: size,
        object_key: object_key.clone(),
        state: AssetState::Pending,
        reject_reason: None,
        created_at: now,
        updated_at: now,
        upload_expires_at: now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2),
    };
    // Signed before anything is written, so that a failing signer leaves no row behind.
    let target = state.blobs.presign_put(&asset.upload_key(), &content_type, body.size_bytes, ttl, &base_url(&state, &headers)).await?;
    let quota =
        Quota { max_count: i64::from(state.limits.quota_count), max_bytes: i64::try_from(state.limits.quota_bytes).unwrap_or(i64::MAX) };
    if !store::create(&state.db, &asset, quota).await? {
        let (count, bytes) = store::usage(&state.db, &player.account_id).await?;
        return Err(ApiError::client(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!(
                "you hold {count} assets ({bytes} bytes) of at most {} ({} bytes); delete some first",
                quota.max_count, quota.max_bytes
            ),
        ));
    }
    tracing::info!(asset_id = id, purpose = purpose.name, size, "upload started");
    let ticket = UploadTicket {
        asset_id: id,
        upload: UploadTarget { method: "PUT", url: target.url, headers: target.headers },
        expires_at: rfc3339(asset.upload_expires_at),
    };
    Ok((StatusCode::CREATED, Json(ticket)))
}

/// Declares the upload finished: the asset becomes `verifying` and its check is queued.
#[utoipa::path(
    post, path = "/v1/uploads/{asset_id}/complete", tag = "uploads",
    params(("asset_id" = String, Path, description = "Asset id")),
    security(("bearer" = [])),
    responses(
        (status = 202, body = AssetView),
        (status = 403, description = "another player's asset", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`already_completed`", body = ErrorBody),
    )
)]
pub async fn complete_upload(
    State(state): State<UploadsState>,
    player: Player,
    headers: HeaderMap,
    Path(asset_id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let mut asset = owned(&state, &player, &asset_id).await?;
    if asset.state != AssetState::Pending || !store::complete(&state.db, &mut asset).await? {
        return Err(ApiError::Conflict { code: "already_completed", message: "this upload was completed already".into() });
    }
    Ok((StatusCode::ACCEPTED, Json(view(&state, asset, &base_url(&state, &headers)).await?)))
}

/// An asset: its metadata and state, and a download URL once ready. Anyone signed in may read a
/// ready asset (avatars are public); assets still in flight are their owner's only.
#[utoipa::path(
    get, path = "/v1/assets/{asset_id}", tag = "uploads",
    params(("asset_id" = String, Path, description = "Asset id")),
    security(("bearer" = [])),
    responses((status = 200, body = AssetView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn show_asset(
    State(state): State<UploadsState>,
    player: Player,
    headers: HeaderMap,
    Path(asset_id): Path<String>,
) -> ApiResult<Json<AssetView>> {
    valid_id(&asset_id)?;
    // Metadata tolerates lag: the reader's, unless the player wrote lately (their own upload
    // just completed then comes from the writer: `platform::replica`).
    let reads = state.db.reads_for(Some(&player.account_id)).await?;
    let asset = store::get_on(&*reads, &asset_id).await?.ok_or_else(|| ApiError::NotFound("no such asset".into()))?;
    if asset.owner_id != player.account_id && asset.state != AssetState::Ready {
        return Err(ApiError::Forbidden("this asset belongs to another player".into()));
    }
    Ok(Json(view(&state, asset, &base_url(&state, &headers)).await?))
}

/// Your assets, newest first.
#[utoipa::path(
    get, path = "/v1/assets", tag = "uploads", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = AssetPage), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody))
)]
pub async fn list_assets(
    State(state): State<UploadsState>,
    player: Player,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<AssetPage>> {
    match query.owner.as_deref() {
        None | Some("me") => {}
        Some(owner) if owner == player.account_id => {}
        Some(_) => return Err(ApiError::Forbidden("you can list only your own assets (owner=me)".into())),
    }
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    if let Some(cursor) = &query.cursor
        && uuid::Uuid::try_parse(cursor).is_err()
    {
        return Err(ApiError::invalid("cursor", "cursor is not one this API gave"));
    }
    let filter = store::Filter { owner: Some(&player.account_id), state: None };
    let mut rows = store::list(&state.db, filter, query.cursor.as_deref(), limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more { rows.last().map(|a| a.id.clone()) } else { None };
    let base = base_url(&state, &headers);
    let mut assets = Vec::with_capacity(rows.len());
    for asset in rows {
        assets.push(view(&state, asset, &base).await?);
    }
    Ok(Json(AssetPage { assets, next_cursor }))
}

/// Deletes your asset: its bytes, then its record; its room in your quota comes back.
#[utoipa::path(
    delete, path = "/v1/assets/{asset_id}", tag = "uploads",
    params(("asset_id" = String, Path, description = "Asset id")),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub async fn delete_asset(State(state): State<UploadsState>, player: Player, Path(asset_id): Path<String>) -> ApiResult<StatusCode> {
    let asset = owned(&state, &player, &asset_id).await?;
    if !crate::verify::remove(&state, &asset).await? {
        return Err(ApiError::NotFound("no such asset".into()));
    }
    tracing::info!(asset_id, "asset deleted");
    Ok(StatusCode::NO_CONTENT)
}
