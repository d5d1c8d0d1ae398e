//! Guildhall uploads: players upload straight to blob storage through a presigned URL (S3, or
//! Guildhall's own signed URL on embedded defaults), then call completion; the check (exists,
//! size, content sniffed against the declared type) runs asynchronously through the event queue
//! and makes the asset `ready` or `rejected`.

pub mod admin;
pub mod api;
pub mod kinds;
pub mod local;
pub mod store;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::{AdminKey, Authenticator};
use platform::blobs::Blobs;
use platform::config::UploadLimits;
use platform::db::Database;
use platform::events::{AccountDeleted, Subscription, UploadCompleted};
use platform::shutdown::Shutdown;
use utoipa::OpenApi;

/// Everything the uploads handlers and workers need. Cheap to clone.
#[derive(Clone)]
pub struct UploadsState {
    /// Asset metadata and usage.
    pub db: Database,
    /// The bytes.
    pub blobs: Blobs,
    /// Verifies player tokens.
    pub auth: Authenticator,
    /// The server keys (the admin routes).
    pub admin_key: AdminKey,
    /// Quotas and URL lifetimes.
    pub limits: UploadLimits,
    /// `PUBLIC_URL`, for URLs Guildhall signs itself.
    pub public_url: Option<Arc<str>>,
    /// `CDN_BASE_URL`, for downloads of ready assets.
    pub cdn_base_url: Option<Arc<str>>,
}

impl FromRef<UploadsState> for Authenticator {
    fn from_ref(state: &UploadsState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<UploadsState> for AdminKey {
    fn from_ref(state: &UploadsState) -> Self {
        state.admin_key.clone()
    }
}

/// What uploads consumes: its own `upload.completed` (the check) and `account.deleted` (erasing
/// that player's files).
pub fn subscriptions(state: UploadsState) -> Vec<Subscription> {
    let checker = state.clone();
    vec![
        Subscription::on("uploads", move |event: UploadCompleted| {
            let state = checker.clone();
            async move { verify::check(&state, &event.asset_id).await }
        }),
        Subscription::on("uploads", move |event: AccountDeleted| {
            let state = state.clone();
            async move {
                let erased = verify::erase_owner(&state, &event.account_id).await?;
                tracing::info!(account_id = event.account_id, assets = erased, "erased a deleted player's assets");
                Ok(())
            }
        }),
    ]
}

/// How long after its upload URL ran out a never-completed asset is purged.
const PENDING_GRACE: Duration = Duration::from_secs(3600);
/// How long a rejected asset stays visible (with its reason) before it is purged.
const KEEP_REJECTED: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long an asset may stay verifying before the workers run its check themselves: the event
/// normally does it within seconds, and retries it for hours (platform::events).
const CHECK_OVERDUE: Duration = Duration::from_secs(10 * 60);
/// How long an overdue check may keep failing (other than for an outage) before the asset is
/// rejected as `check_failed` and its quota given back.
const RELEASE_UNCHECKED: Duration = Duration::from_secs(24 * 3600);

/// Background work, every minute until shutdown: runs overdue checks, and purges abandoned and
/// long-rejected assets.
pub async fn run_workers(state: UploadsState, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.stopped() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        match verify::check_overdue(&state, CHECK_OVERDUE, RELEASE_UNCHECKED).await {
            Ok(done) if done == verify::Overdue::default() => {}
            Ok(done) => {
                tracing::info!(checked = done.checked, released = done.released, failing = done.failing, "ran overdue upload checks")
            }
            Err(err) => tracing::warn!(error = format!("{err:#}"), "running overdue upload checks failed"),
        }
        match verify::purge_stale(&state, PENDING_GRACE, KEEP_REJECTED).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(assets = n, "purged abandoned or rejected assets"),
            Err(err) => tracing::warn!(error = format!("{err:#}"), "purging assets failed"),
        }
    }
}

/// The uploads router (with the local blob routes on embedded storage).
pub fn router(state: UploadsState) -> Router {
    let mut router = api::routes().merge(admin::routes());
    if matches!(state.blobs, Blobs::Local(_)) {
        router = router.merge(local::routes());
    }
    router.with_state(state)
}

/// The OpenAPI description of the uploads API.
#[derive(OpenApi)]
#[openapi(
    paths(
        api::create_upload, api::complete_upload, api::show_asset, api::list_assets, api::delete_asset, admin::list_assets, admin::take_down
    ),
    components(schemas(
        api::CreateUpload, api::UploadTicket, api::UploadTarget, api::AssetView, api::AssetPage, store::State,
        platform::error::ErrorBody
    )),
    tags((name = "uploads", description = "Player and game assets"))
)]
pub struct ApiDoc;
