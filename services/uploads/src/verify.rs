//! The asynchronous side of uploads: checking a completed upload, erasing a deleted player's
//! assets, and purging abandoned ones; and an operator's takedown, which deletes as they do. Each is idempotent, since events arrive at least once.

use std::time::Duration;

use anyhow::Context;
use platform::auth::Admin;

use crate::UploadsState;
use crate::kinds::{SNIFF_BYTES, sniff_matches};
use crate::store::{self, Asset, State};

/// Checks the uploaded object of a verifying asset: it exists, has the declared size, and its
/// first bytes match the declared type. When all hold, the bytes are published at the asset's
/// `object_key`, where no upload URL can write, and the asset is ready; otherwise it is
/// rejected, with the object deleted.
pub async fn check(state: &UploadsState, asset_id: &str) -> anyhow::Result<()> {
    let Some(asset) = store::get(&state.db, asset_id).await? else {
        tracing::info!(asset_id, "completed asset is gone; nothing to check");
        return Ok(());
    };
    if asset.state != State::Verifying {
        tracing::info!(asset_id, state = asset.state.as_str(), "asset already checked");
        return Ok(());
    }
    // An earlier attempt may have published the bytes (and moved them, on local files) and
    // failed before marking the asset ready: check what was published then.
    let upload = asset.upload_key();
    let source = match state.blobs.head(&upload).await? {
        Some(info) => Some((upload.as_str(), info)),
        None => state.blobs.head(&asset.object_key).await?.map(|info| (asset.object_key.as_str(), info)),
    };
    let verdict = match source {
        None => Err("object_missing: nothing was uploaded"),
        Some((_, info)) if i64::try_from(info.size).ok() != Some(asset.size_bytes) => {
            Err("size_mismatch: the stored size differs from the declared size")
        }
        Some((key, _)) => {
            let head = state.blobs.read_prefix(key, SNIFF_BYTES).await?;
            if sniff_matches(&asset.content_type, &head) { Ok(key) } else { Err("content_mismatch: the file is not of its declared type") }
        }
    };
    match verdict {
        Ok(key) => {
            if key == upload {
                state.blobs.publish(&upload, &asset.object_key, &asset.content_type).await?;
            }
            store::mark_ready(&state.db, &asset).await?;
            tracing::info!(asset_id, purpose = asset.purpose, size = asset.size_bytes, "asset ready");
        }
        Err(reason) => {
            // The bytes go first: a rejected asset never keeps what failed the check.
            delete_bytes(state, &asset).await?;
            store::mark_rejected(&state.db, &asset, reason).await?;
            tracing::info!(asset_id, reason, "asset rejected");
        }
    }
    Ok(())
}

/// Deletes every copy of `asset`'s bytes: the upload and the published object.
async fn delete_bytes(state: &UploadsState, asset: &Asset) -> anyhow::Result<()> {
    state.blobs.delete(&asset.upload_key()).await?;
    state.blobs.delete(&asset.object_key).await
}

/// What `check_overdue` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Overdue {
    /// Checked now (ready or rejected).
    pub checked: usize,
    /// Given up on: rejected as `check_failed`, their room in the quota given back.
    pub released: usize,
    /// Still failing; tried again next round.
    pub failing: usize,
}

/// Runs the check of assets verifying for longer than `after`, whose `upload.completed` failed
/// or died: the check is idempotent, so running it beside a late event is harmless. One still
/// failing after `release_after` for a reason other than an outage is rejected as `check_failed`
/// (its bytes deleted), so that it does not hold the player's quota for good.
pub async fn check_overdue(state: &UploadsState, after: Duration, release_after: Duration) -> anyhow::Result<Overdue> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let mut done = Overdue::default();
    for asset in store::overdue(&state.db, ms(after), 100).await? {
        let Err(err) = check(state, &asset.id).await else {
            done.checked += 1;
            continue;
        };
        let outage = platform::error::unavailable_dependency(&err).is_some();
        if outage || platform::db::now_millis() - asset.updated_at < ms(release_after) {
            tracing::warn!(asset_id = asset.id, error = format!("{err:#}"), "overdue upload check failed");
            done.failing += 1;
            continue;
        }
        tracing::error!(asset_id = asset.id, error = format!("{err:#}"), "upload check keeps failing; asset rejected as check_failed");
        delete_bytes(state, &asset).await?;
        if store::mark_rejected(&state.db, &asset, "check_failed: the upload could not be checked").await? {
            done.released += 1;
        }
    }
    Ok(done)
}

/// Deletes `asset`'s bytes, then its row. False when the row was already gone.
pub async fn remove(state: &UploadsState, asset: &Asset) -> anyhow::Result<bool> {
    delete_bytes(state, asset).await?;
    store::delete(&state.db, asset).await
}

/// An operator's takedown of `asset`: its bytes (both keys), then its row with the audit entry
/// in one transaction. False when the row was already gone (its bytes are gone too then).
pub async fn take_down(state: &UploadsState, asset: &Asset, admin: &Admin, detail: &serde_json::Value) -> anyhow::Result<bool> {
    delete_bytes(state, asset).await?;
    let mut tx = state.db.begin().await?;
    if !store::delete_in(&mut tx, asset).await? {
        tx.rollback().await.ok();
        return Ok(false);
    }
    platform::audit::record(&mut *tx, admin, "uploads.take_down", &format!("asset:{}", asset.id), detail).await?;
    tx.commit().await.context("committing a takedown")?;
    Ok(true)
}

/// Deletes every asset of `owner` and their usage. Returns how many.
pub async fn erase_owner(state: &UploadsState, owner: &str) -> anyhow::Result<usize> {
    let mut erased = 0;
    loop {
        let page = store::of_owner(&state.db, owner, 100).await?;
        if page.is_empty() {
            break;
        }
        for asset in &page {
            remove(state, asset).await?;
            erased += 1;
        }
    }
    store::forget_usage(&state.db, owner).await?;
    Ok(erased)
}

/// Deletes pending assets abandoned for `grace` past their URL's expiry and rejected ones older
/// than `keep_rejected`. Returns how many.
pub async fn purge_stale(state: &UploadsState, grace: Duration, keep_rejected: Duration) -> anyhow::Result<usize> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let mut purged = 0;
    for asset in store::stale(&state.db, ms(grace), ms(keep_rejected), 500).await? {
        if remove(state, &asset).await? {
            purged += 1;
        }
    }
    Ok(purged)
}
