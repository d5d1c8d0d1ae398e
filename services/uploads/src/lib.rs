//! Guildhall uploads: players upload straight to blob storage through a presigned URL (S3, or
//! Guildhall's own signed URL on embedded defaults), then call completion; the check (exists,
//! size, content sniffed against the declared type) runs asynchronously through the event queue
//! and makes the asset `ready` or `rejected`.

pub mod api;
pub mod kinds;
pub mod local;
pub mod store;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::Authenticator;
use platform::blobs::Blobs;
use platform::config::UploadLimits;
use platform::db::Database;
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

/// What uploads consumes: its own `upload.completed` (the check) and `account.deleted` (erasing
/// that player's files).
pub fn subscriptions(state: UploadsState) -> Vec<platform::events::Subscription> {
    let checker = state.clone();
    let check = platform::events::handler(move |event| {
        let state = checker.clone();
        async move {
            let id = event.payload["asset_id"].as_str().ok_or_else(|| anyhow::anyhow!("upload.completed without asset_id"))?;
            verify::check(&state, id).await
        }
    });
    let erase = platform::events::handler(move |event| {
        let state = state.clone();
        async move {
            let account_id = event.payload["account_id"].as_str().ok_or_else(|| anyhow::anyhow!("account.deleted without account_id"))?;
            let erased = verify::erase_owner(&state, account_id).await?;
            tracing::info!(account_id, assets = erased, "erased a deleted player's assets");
            Ok(())
        }
    });
    vec![
        platform::events::Subscription { consumer: "uploads", event_types: &["upload.completed"], handler: check },
        platform::events::Subscription { consumer: "uploads", event_types: &["account.deleted"], handler: erase },
    ]
}

/// How long after its upload URL ran out a never-completed asset is purged.
const PENDING_GRACE: Duration = Duration::from_secs(3600);
/// How long a rejected asset stays visible (with its reason) before it is purged.
const KEEP_REJECTED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Background work: purges abandoned and long-rejected assets every minute until shutdown.
pub async fn run_workers(state: UploadsState, shutdown: Shutdown) {
    loop {
        tokio::select! {
            () = shutdown.stopped() => return,
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
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
    let mut router = api::routes();
    if matches!(state.blobs, Blobs::Local(_)) {
        router = router.merge(local::routes());
    }
    router.with_state(state)
}

/// The OpenAPI description of the uploads API.
#[derive(OpenApi)]
#[openapi(
    paths(api::create_upload, api::complete_upload, api::show_asset, api::list_assets, api::delete_asset),
    components(schemas(
        api::CreateUpload, api::UploadTicket, api::UploadTarget, api::AssetView, api::AssetPage, store::State,
        platform::error::ErrorBody
    )),
    tags((name = "uploads", description = "Player and game assets"))
)]
pub struct ApiDoc;
