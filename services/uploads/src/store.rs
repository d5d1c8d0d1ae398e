//! Asset rows and per-player usage. Usage changes in the same transaction as the asset it counts,
//! with a conditional update, so concurrent uploads cannot overrun a quota.

use anyhow::Context;
use platform::db::{Database, now_millis};
use platform::events::{UploadCompleted, UploadReady, UploadRejected};
use sqlx::Row;
use sqlx::any::AnyRow;

/// Where an asset is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created; waiting for the bytes and the completion call.
    Pending,
    /// Completion called; the check is queued.
    Verifying,
    /// Checked and downloadable.
    Ready,
    /// Failed the check; the stored bytes were deleted.
    Rejected,
}

impl State {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Verifying => "verifying",
            State::Ready => "ready",
            State::Rejected => "rejected",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "pending" => State::Pending,
            "verifying" => State::Verifying,
            "ready" => State::Ready,
            "rejected" => State::Rejected,
            other => anyhow::bail!("unknown asset state {other:?}"),
        })
    }
}

/// An asset row.
#[derive(Debug, Clone)]
pub struct Asset {
    pub id: String,
    pub owner_id: String,
    pub purpose: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub object_key: String,
    pub state: State,
    pub reject_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub upload_expires_at: i64,
}

/// Where uploads land: the prefix of every key an upload URL is signed for. Nothing under it is
/// served (the CDN's bucket policy denies it) and the bucket's lifecycle removes what is left
/// there after a day.
pub const UPLOAD_PREFIX: &str = "incoming/";

impl Asset {
    /// The key its upload URL writes (`incoming/avatar/<id>`); `object_key` is where the checked
    /// bytes are published (`avatar/<id>`), a key no upload URL is signed for.
    pub fn upload_key(&self) -> String {
        upload_key(&self.object_key)
    }
}

/// The upload key of the asset published at `object_key`.
pub fn upload_key(object_key: &str) -> String {
    format!("{UPLOAD_PREFIX}{object_key}")
}

const COLUMNS: &str =
    "id, owner_id, purpose, content_type, size_bytes, object_key, state, reject_reason, created_at, updated_at, upload_expires_at";

fn asset(row: &AnyRow) -> anyhow::Result<Asset> {
    Ok(Asset {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        purpose: row.try_get("purpose")?,
        content_type: row.try_get("content_type")?,
        size_bytes: row.try_get("size_bytes")?,
        object_key: row.try_get("object_key")?,
        state: State::parse(&row.try_get::<String, _>("state")?)?,
        reject_reason: row.try_get("reject_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        upload_expires_at: row.try_get("upload_expires_at")?,
    })
}

/// Limits a new asset must fit in.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub max_count: i64,
    pub max_bytes: i64,
}

/// Records a pending asset and counts it against its owner's quota. `Ok(false)` when the quota
/// has no room (nothing written).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.create", skip_all)]
pub async fn create(db: &Database, asset: &Asset, quota: Quota) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO asset_usage (owner_id, asset_count, total_bytes) VALUES ($1, 0, 0) ON CONFLICT (owner_id) DO NOTHING")
        .bind(&asset.owner_id)
        .execute(&mut *tx)
        .await
        .context("creating usage")?;
    let room = sqlx::query(
        "UPDATE asset_usage SET asset_count = asset_count + 1, total_bytes = total_bytes + $2 \
         WHERE owner_id = $1 AND asset_count + 1 <= $3 AND total_bytes + $2 <= $4",
    )
    .bind(&asset.owner_id)
    .bind(asset.size_bytes)
    .bind(quota.max_count)
    .bind(quota.max_bytes)
    .execute(&mut *tx)
    .await
    .context("counting usage")?;
    if room.rows_affected() == 0 {
        tx.rollback().await.ok();
        return Ok(false);
    }
    sqlx::query(&format!("INSERT INTO assets ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"))
        .bind(&asset.id)
        .bind(&asset.owner_id)
        .bind(&asset.purpose)
        .bind(&asset.content_type)
        .bind(asset.size_bytes)
        .bind(&asset.object_key)
        .bind(asset.state.as_str())
        .bind(&asset.reject_reason)
        .bind(asset.created_at)
        .bind(asset.updated_at)
        .bind(asset.upload_expires_at)
        .execute(&mut *tx)
        .await
        .context("inserting asset")?;
    tx.commit().await.context("committing asset")?;
    Ok(true)
}

/// The asset `id`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.get", skip_all)]
pub async fn get(db: &Database, id: &str) -> anyhow::Result<Option<Asset>> {
    get_on(db.pool(), id).await
}

/// The asset `id`, read on `db` (the reader's pool, for metadata that tolerates lag).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.get", skip_all)]
pub async fn get_on<'e>(db: impl sqlx::Executor<'e, Database = sqlx::Any>, id: &str) -> anyhow::Result<Option<Asset>> {
    let row =
        sqlx::query(&format!("SELECT {COLUMNS} FROM assets WHERE id = $1")).bind(id).fetch_optional(db).await.context("reading asset")?;
    row.as_ref().map(asset).transpose()
}

/// The asset stored under `object_key`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.by_object_key", skip_all)]
pub async fn by_object_key(db: &Database, key: &str) -> anyhow::Result<Option<Asset>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM assets WHERE object_key = $1"))
        .bind(key)
        .fetch_optional(db.pool())
        .await
        .context("reading asset")?;
    row.as_ref().map(asset).transpose()
}

/// Which assets a list shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    /// Only this player's.
    pub owner: Option<&'a str>,
    /// Only those in this state.
    pub state: Option<State>,
}

/// Up to `limit` assets that `filter` lets through, newest first, older than the asset `before`
/// when given.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.list", skip_all)]
pub async fn list(db: &Database, filter: Filter<'_>, before: Option<&str>, limit: i64) -> anyhow::Result<Vec<Asset>> {
    // Fixed fragments only; every value is bound. UUIDv7 text sorts by time; 'z' after every id.
    let mut sql = format!("SELECT {COLUMNS} FROM assets WHERE id < $1");
    let mut values = vec![before.unwrap_or("z")];
    for (column, value) in [("owner_id", filter.owner), ("state", filter.state.map(State::as_str))] {
        if let Some(value) = value {
            values.push(value);
            sql.push_str(&format!(" AND {column} = ${}", values.len()));
        }
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", values.len() + 1));
    let mut query = sqlx::query(&sql);
    for value in values {
        query = query.bind(value);
    }
    let rows = query.bind(limit).fetch_all(db.pool()).await.context("listing assets")?;
    rows.iter().map(asset).collect()
}

/// Moves `asset` from pending to verifying and records `upload.completed` for the check, in one
/// transaction, updating `asset` to match. False when it was not pending (nothing written).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.complete", skip_all)]
pub async fn complete(db: &Database, asset: &mut Asset) -> anyhow::Result<bool> {
    let now = now_millis();
    let mut tx = db.begin().await?;
    let moved = sqlx::query("UPDATE assets SET state = 'verifying', updated_at = $2 WHERE id = $1 AND state = 'pending'")
        .bind(&asset.id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("completing asset")?;
    if moved.rows_affected() == 0 {
        tx.rollback().await.ok();
        return Ok(false);
    }
    platform::events::record(&mut *tx, &UploadCompleted { asset_id: asset.id.clone() }).await?;
    tx.commit().await.context("committing completion")?;
    asset.state = State::Verifying;
    asset.updated_at = now;
    Ok(true)
}

/// Marks a verifying asset ready and records `upload.ready`, in one transaction. False when it
/// was not verifying.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.mark_ready", skip_all)]
pub async fn mark_ready(db: &Database, asset: &Asset) -> anyhow::Result<bool> {
    let now = now_millis();
    let mut tx = db.begin().await?;
    let done = sqlx::query("UPDATE assets SET state = 'ready', updated_at = $2 WHERE id = $1 AND state = 'verifying'")
        .bind(&asset.id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("marking asset ready")?;
    if done.rows_affected() == 0 {
        tx.rollback().await.ok();
        return Ok(false);
    }
    let event = UploadReady {
        asset_id: asset.id.clone(),
        owner_id: asset.owner_id.clone(),
        purpose: asset.purpose.clone(),
        content_type: asset.content_type.clone(),
        size_bytes: asset.size_bytes,
        ready_at: platform::time::rfc3339(now),
    };
    platform::events::record(&mut *tx, &event).await?;
    tx.commit().await.context("committing readiness")?;
    Ok(true)
}

/// Marks a verifying asset rejected for `reason`, gives its room in the quota back and records
/// `upload.rejected`, in one transaction. False when it was not verifying.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.mark_rejected", skip_all)]
pub async fn mark_rejected(db: &Database, asset: &Asset, reason: &str) -> anyhow::Result<bool> {
    let now = now_millis();
    let mut tx = db.begin().await?;
    let done =
        sqlx::query("UPDATE assets SET state = 'rejected', reject_reason = $2, updated_at = $3 WHERE id = $1 AND state = 'verifying'")
            .bind(&asset.id)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await
            .context("rejecting asset")?;
    if done.rows_affected() == 0 {
        tx.rollback().await.ok();
        return Ok(false);
    }
    release(&mut tx, &asset.owner_id, asset.size_bytes).await?;
    let event = UploadRejected {
        asset_id: asset.id.clone(),
        owner_id: asset.owner_id.clone(),
        purpose: asset.purpose.clone(),
        reason: reason.to_owned(),
        rejected_at: platform::time::rfc3339(now),
    };
    platform::events::record(&mut *tx, &event).await?;
    tx.commit().await.context("committing rejection")?;
    Ok(true)
}

/// Deletes the asset row and gives its room back (a rejected asset gave it back already).
/// False when it was gone.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.delete", skip_all)]
pub async fn delete(db: &Database, asset: &Asset) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    if !delete_in(&mut tx, asset).await? {
        tx.rollback().await.ok();
        return Ok(false);
    }
    tx.commit().await.context("committing deletion")?;
    Ok(true)
}

/// `delete`, inside the caller's transaction (which an operator's takedown shares with its audit
/// entry).
pub async fn delete_in(tx: &mut platform::db::Tx, asset: &Asset) -> anyhow::Result<bool> {
    let state: Option<String> = sqlx::query_scalar("DELETE FROM assets WHERE id = $1 RETURNING state")
        .bind(&asset.id)
        .fetch_optional(&mut **tx)
        .await
        .context("deleting asset")?;
    let Some(state) = state else { return Ok(false) };
    if state != State::Rejected.as_str() {
        release(tx, &asset.owner_id, asset.size_bytes).await?;
    }
    Ok(true)
}

async fn release(tx: &mut platform::db::Tx, owner: &str, size: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE asset_usage SET asset_count = asset_count - 1, total_bytes = total_bytes - $2 WHERE owner_id = $1")
        .bind(owner)
        .bind(size)
        .execute(&mut **tx)
        .await
        .context("releasing usage")?;
    Ok(())
}

/// Pending assets whose upload URL ran out more than `grace_ms` ago, and rejected ones last
/// touched more than `keep_rejected_ms` ago: the purge deletes them.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.stale", skip_all)]
pub async fn stale(db: &Database, grace_ms: i64, keep_rejected_ms: i64, limit: i64) -> anyhow::Result<Vec<Asset>> {
    let now = now_millis();
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM assets WHERE (state = 'pending' AND upload_expires_at < $1) OR (state = 'rejected' AND updated_at < $2) LIMIT $3"
    ))
    .bind(now - grace_ms)
    .bind(now - keep_rejected_ms)
    .bind(limit)
    .fetch_all(db.pool())
    .await
    .context("finding stale assets")?;
    rows.iter().map(asset).collect()
}

/// Assets still verifying, moved there more than `older_than_ms` ago, oldest first: their check
/// is overdue (its event failed, or died).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.overdue", skip_all)]
pub async fn overdue(db: &Database, older_than_ms: i64, limit: i64) -> anyhow::Result<Vec<Asset>> {
    let rows =
        sqlx::query(&format!("SELECT {COLUMNS} FROM assets WHERE state = 'verifying' AND updated_at < $1 ORDER BY updated_at LIMIT $2"))
            .bind(now_millis() - older_than_ms)
            .bind(limit)
            .fetch_all(db.pool())
            .await
            .context("finding overdue checks")?;
    rows.iter().map(asset).collect()
}

/// Every asset of `owner` (for erasure), a page at a time.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.of_owner", skip_all)]
pub async fn of_owner(db: &Database, owner: &str, limit: i64) -> anyhow::Result<Vec<Asset>> {
    list(db, Filter { owner: Some(owner), state: None }, None, limit).await
}

/// Forgets `owner`'s usage row (after erasure).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.forget_usage", skip_all)]
pub async fn forget_usage(db: &Database, owner: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM asset_usage WHERE owner_id = $1").bind(owner).execute(db.pool()).await.context("forgetting usage")?;
    Ok(())
}

/// `owner`'s current usage: (assets, bytes).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db uploads.usage", skip_all)]
pub async fn usage(db: &Database, owner: &str) -> anyhow::Result<(i64, i64)> {
    let row: Option<(i64, i64)> = sqlx::query_as("SELECT asset_count, total_bytes FROM asset_usage WHERE owner_id = $1")
        .bind(owner)
        .fetch_optional(db.pool())
        .await
        .context("reading usage")?;
    Ok(row.unwrap_or((0, 0)))
}
