//! The webhooks' SQL: receivers, the events to send them, and one delivery row per (webhook,
//! event) with its attempts. Queries are bound, never formatted; the same text runs on
//! PostgreSQL and SQLite.

use anyhow::Context;
use platform::auth::Admin;
use platform::config::Secret;
use platform::db::{Database, now_millis};
use sqlx::Row;
use sqlx::any::AnyRow;

/// A registered receiver, without its secret.
#[derive(Debug, Clone)]
pub struct WebhookRow {
    /// UUIDv7.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// Event types, or `*`.
    pub events: Vec<String>,
    /// The operator's note.
    pub description: Option<String>,
    /// Unix ms.
    pub created_at: i64,
}

impl WebhookRow {
    /// Whether this webhook takes events of `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| e == "*" || e == event_type)
    }
}

/// A new receiver.
#[derive(Debug)]
pub struct NewWebhook<'a> {
    /// UUIDv7.
    pub id: &'a str,
    /// Where deliveries go.
    pub url: &'a str,
    /// Event types, or `*`.
    pub events: &'a [String],
    /// The HMAC key.
    pub secret: &'a Secret<String>,
    /// The operator's note.
    pub description: Option<&'a str>,
    /// Unix ms.
    pub created_at: i64,
}

fn webhook_row(row: &AnyRow) -> anyhow::Result<WebhookRow> {
    let events: String = row.try_get("events")?;
    Ok(WebhookRow {
        id: row.try_get("id")?,
        url: row.try_get("url")?,
        events: serde_json::from_str(&events).context("decoding a webhook's events")?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
    })
}

const WEBHOOK_COLUMNS: &str = "id, url, events, description, created_at";

/// How many webhooks exist.
pub async fn count(db: &Database) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhooks").fetch_one(db.pool()).await.context("counting webhooks")
}

/// Stores a new webhook.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db webhooks.insert", skip_all)]
pub async fn insert(db: &Database, new: &NewWebhook<'_>, by: &Admin, host: &str) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO webhooks (id, url, events, secret, description, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(new.id)
        .bind(new.url)
        .bind(serde_json::to_string(new.events)?)
        .bind(new.secret.expose())
        .bind(new.description)
        .bind(new.created_at)
        .execute(&mut *tx)
        .await
        .context("inserting webhook")?;
    // The host and events only: never the secret, nor the URL's query (it may hold a token).
    let detail = serde_json::json!({ "host": host, "events": new.events });
    platform::audit::record(&mut *tx, by, "webhooks.create", &format!("webhook:{}", new.id), &detail).await?;
    tx.commit().await.context("committing a new webhook")?;
    Ok(())
}

/// The webhook `id`.
pub async fn get(db: &Database, id: &str) -> anyhow::Result<Option<WebhookRow>> {
    let row = sqlx::query(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1"))
        .bind(id)
        .fetch_optional(db.pool())
        .await
        .context("loading webhook")?;
    row.as_ref().map(webhook_row).transpose()
}

/// Up to `limit` webhooks, newest first, after (older than) `before`.
pub async fn list(db: &Database, before: Option<&str>, limit: i64) -> anyhow::Result<Vec<WebhookRow>> {
    let rows = sqlx::query(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE ($1 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"))
        .bind(before)
        .bind(limit)
        .fetch_all(db.pool())
        .await
        .context("listing webhooks")?;
    rows.iter().map(webhook_row).collect()
}

/// Every webhook taking `event_type` (there are at most `crate::api::MAX_WEBHOOKS`).
pub async fn subscribed(db: &Database, event_type: &str) -> anyhow::Result<Vec<WebhookRow>> {
    let rows = sqlx::query(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks")).fetch_all(db.pool()).await.context("loading webhooks")?;
    let all = rows.iter().map(webhook_row).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(all.into_iter().filter(|w| w.wants(event_type)).collect())
}

/// Deletes the webhook `id` and its deliveries. False when there was none.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db webhooks.delete", skip_all)]
pub async fn delete(db: &Database, id: &str, by: &Admin) -> anyhow::Result<bool> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1").bind(id).execute(&mut *tx).await.context("deleting deliveries")?;
    let done = sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(id).execute(&mut *tx).await.context("deleting webhook")?;
    if done.rows_affected() == 1 {
        platform::audit::record(&mut *tx, by, "webhooks.delete", &format!("webhook:{id}"), &serde_json::json!({})).await?;
    }
    tx.commit().await.context("committing webhook deletion")?;
    Ok(done.rows_affected() == 1)
}

/// Records `event` for each of `webhooks`: its body once, and a due delivery per webhook. An
/// event handled again (at least once delivery) adds nothing.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db webhooks.enqueue", skip_all)]
pub async fn enqueue(db: &Database, event_id: &str, event_type: &str, body: &str, webhooks: &[WebhookRow]) -> anyhow::Result<()> {
    let now = now_millis();
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO webhook_events (id, event_type, body, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING")
        .bind(event_id)
        .bind(event_type)
        .bind(body)
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("recording a webhook event")?;
    for webhook in webhooks {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, state, attempts, next_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5, $5) ON CONFLICT (webhook_id, event_id) DO NOTHING",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&webhook.id)
        .bind(event_id)
        .bind(event_type)
        .bind(now)
        .execute(&mut *tx)
        .await
        .context("recording a delivery")?;
    }
    tx.commit().await.context("committing deliveries")?;
    Ok(())
}

/// A delivery claimed for an attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The delivery.
    pub id: String,
    /// Its webhook.
    pub webhook_id: String,
    /// Its event.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Failed attempts so far.
    pub attempts: i64,
}

/// `$from`, `$from + 1` ... for `count` values.
fn placeholders(from: usize, count: usize) -> String {
    (from..from + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// Claims up to `limit` due deliveries until `lease_until` (other workers leave them alone
/// until then), oldest due first, at most `per_webhook` of any one webhook and none of `busy`
/// (webhooks whose receivers already have all the attempts they may have in flight here), so
/// that one slow receiver's backlog cannot take the whole batch.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db webhooks.claim", skip_all)]
pub async fn claim(db: &Database, lease_until: i64, limit: i64, per_webhook: i64, busy: &[String]) -> anyhow::Result<Vec<Claimed>> {
    let now = now_millis();
    let exclude = if busy.is_empty() { String::new() } else { format!("AND webhook_id NOT IN ({})", placeholders(5, busy.len())) };
    let sql = format!(
        "UPDATE webhook_deliveries SET claimed_until = $1 WHERE id IN (\
           SELECT id FROM (\
             SELECT id, next_at, ROW_NUMBER() OVER (PARTITION BY webhook_id ORDER BY next_at, id) AS n FROM webhook_deliveries \
             WHERE state = 'pending' AND next_at <= $2 AND (claimed_until IS NULL OR claimed_until <= $2) {exclude}\
           ) due WHERE n <= $3 ORDER BY next_at, id LIMIT $4) \
         AND state = 'pending' AND (claimed_until IS NULL OR claimed_until <= $2) \
         RETURNING id, webhook_id, event_id, event_type, attempts"
    );
    let mut query = sqlx::query(&sql).bind(lease_until).bind(now).bind(per_webhook).bind(limit);
    for webhook in busy {
        query = query.bind(webhook);
    }
    let rows = query.fetch_all(db.pool()).await.context("claiming deliveries")?;
    rows.iter()
        .map(|row| {
            Ok(Claimed {
                id: row.try_get("id")?,
                webhook_id: row.try_get("webhook_id")?,
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                attempts: row.try_get("attempts")?,
            })
        })
        .collect()
}

/// Gives a claimed delivery back untried, due at once.
pub async fn release(db: &Database, id: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE webhook_deliveries SET claimed_until = NULL WHERE id = $1")
        .bind(id)
        .execute(db.pool())
        .await
        .context("releasing a delivery")?;
    Ok(())
}

/// What an attempt sends, and where.
#[derive(Debug)]
pub struct Target {
    /// The webhook's URL.
    pub url: String,
    /// The webhook's HMAC key.
    pub secret: Secret<String>,
    /// The event's body.
    pub body: String,
}

/// The URL, secret and body of delivery `claimed`; `None` when its webhook was deleted meanwhile.
pub async fn target(db: &Database, claimed: &Claimed) -> anyhow::Result<Option<Target>> {
    let row = sqlx::query("SELECT w.url, w.secret, e.body FROM webhooks w, webhook_events e WHERE w.id = $1 AND e.id = $2")
        .bind(&claimed.webhook_id)
        .bind(&claimed.event_id)
        .fetch_optional(db.pool())
        .await
        .context("loading a delivery's target")?;
    row.map(|row| {
        Ok(Target { url: row.try_get("url")?, secret: Secret::new(row.try_get::<String, _>("secret")?), body: row.try_get("body")? })
    })
    .transpose()
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The receiver answered 2xx.
    Delivered {
        /// Its status.
        status: u16,
    },
    /// It did not: a status other than 2xx, or no answer.
    Failed {
        /// The status, when there was an answer.
        status: Option<u16>,
        /// What went wrong, for the operator (never the secret, nor the URL's query).
        error: String,
        /// When to try again; `None` parks the delivery as failed.
        retry_at: Option<i64>,
    },
}

/// Records the attempt on `claimed` and its outcome, ending the claim.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db webhooks.record", skip_all)]
pub async fn record(db: &Database, claimed: &Claimed, outcome: &Outcome) -> anyhow::Result<()> {
    let now = now_millis();
    let attempts = claimed.attempts + 1;
    let query = match outcome {
        Outcome::Delivered { status } => sqlx::query(
            "UPDATE webhook_deliveries SET state = 'delivered', attempts = $2, last_status = $3, last_error = NULL, \
             claimed_until = NULL, delivered_at = $4, updated_at = $4 WHERE id = $1 AND state = 'pending'",
        )
        .bind(&claimed.id)
        .bind(attempts)
        .bind(i64::from(*status))
        .bind(now),
        Outcome::Failed { status, error, retry_at } => sqlx::query(
            "UPDATE webhook_deliveries SET state = $2, attempts = $3, last_status = $4, last_error = $5, next_at = $6, \
             claimed_until = NULL, updated_at = $7 WHERE id = $1 AND state = 'pending'",
        )
        .bind(&claimed.id)
        .bind(if retry_at.is_some() { "pending" } else { "failed" })
        .bind(attempts)
        .bind(status.map(i64::from))
        .bind(error)
        .bind(retry_at.unwrap_or(now))
        .bind(now),
    };
    query.execute(db.pool()).await.context("recording a delivery attempt")?;
    Ok(())
}

/// A delivery as the admin API shows it.
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    /// UUIDv7.
    pub id: String,
    /// The event.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    /// Attempts made.
    pub attempts: i64,
    /// Unix ms of the next attempt (pending).
    pub next_at: i64,
    /// The last answer's status.
    pub last_status: Option<i64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub delivered_at: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "id, event_id, event_type, state, attempts, next_at, last_status, last_error, created_at, delivered_at";

fn delivery_row(row: &AnyRow) -> Result<DeliveryRow, sqlx::Error> {
    Ok(DeliveryRow {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        next_at: row.try_get("next_at")?,
        last_status: row.try_get("last_status")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        delivered_at: row.try_get("delivered_at")?,
    })
}

/// Up to `limit` of `webhook`'s deliveries (in `state`, or all), newest first, older than
/// `before`.
pub async fn deliveries(
    db: &Database,
    webhook: &str,
    state: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<DeliveryRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND ($2 IS NULL OR state = $2) \
         AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
    ))
    .bind(webhook)
    .bind(state)
    .bind(before)
    .bind(limit)
    .fetch_all(db.pool())
    .await
    .context("listing deliveries")?;
    rows.iter().map(|r| delivery_row(r).context("decoding a delivery")).collect()
}

/// Makes `webhook`'s delivery `id` due again at once with a fresh count of attempts, unless it
/// is pending already. `Ok(None)` when there is no such delivery; `Err` of the row when pending.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db webhooks.redeliver", skip_all)]
pub async fn redeliver(db: &Database, webhook: &str, id: &str) -> anyhow::Result<Option<Result<DeliveryRow, DeliveryRow>>> {
    let now = now_millis();
    let row = sqlx::query(&format!(
        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = $3, claimed_until = NULL, updated_at = $3 \
         WHERE webhook_id = $1 AND id = $2 AND state <> 'pending' RETURNING {DELIVERY_COLUMNS}"
    ))
    .bind(webhook)
    .bind(id)
    .bind(now)
    .fetch_optional(db.pool())
    .await
    .context("redelivering")?;
    if let Some(row) = row {
        return Ok(Some(Ok(delivery_row(&row)?)));
    }
    let existing = sqlx::query(&format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2"))
        .bind(webhook)
        .bind(id)
        .fetch_optional(db.pool())
        .await
        .context("loading a delivery")?;
    Ok(existing.map(|row| delivery_row(&row).map(Err)).transpose()?)
}

/// Deletes deliveries done before `delivered_before` or parked before `failed_before`, then the
/// bodies of events no delivery needs any more. Returns how many deliveries.
pub async fn purge(db: &Database, delivered_before: i64, failed_before: i64) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM webhook_deliveries WHERE (state = 'delivered' AND updated_at < $1) OR (state = 'failed' AND updated_at < $2)",
    )
    .bind(delivered_before)
    .bind(failed_before)
    .execute(db.pool())
    .await
    .context("purging deliveries")?;
    sqlx::query(
        "DELETE FROM webhook_events WHERE created_at < $1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
    )
    .bind(delivered_before.min(failed_before))
    .execute(db.pool())
    .await
    .context("purging webhook events")?;
    Ok(done.rows_affected())
}
