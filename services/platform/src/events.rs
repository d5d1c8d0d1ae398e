//! Events between services, delivered from the transactional outbox.
//!
//! A service records an event in its `outbox` in the same transaction as the change
//! (`crate::outbox::record`). The relay here claims unsent rows with a lease (so several
//! instances can run it without delivering a row twice at once), hands each event to every
//! consumer subscribed to its type, and marks it sent only when all of them succeeded: delivery is
//! at least once. Each consumer's handled event ids are kept in `consumed_events`, so a
//! redelivered event is skipped. An event that keeps failing is retried with exponential backoff
//! and, after `MAX_ATTEMPTS`, parked as dead (`dead_at`), the in-process twin of a dead-letter
//! queue.
//!
//! This is the embedded delivery, in process; SQS delivery for separate services plugs in here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;

use crate::db::{Database, now_millis};
use crate::shutdown::Shutdown;

/// An event as consumers receive it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Outbox id (UUIDv7): the idempotency key.
    pub id: String,
    /// e.g. `account.deleted`.
    pub event_type: String,
    /// The JSON payload.
    pub payload: serde_json::Value,
}

/// What a consumer does with an event. It must be idempotent: an event may arrive again after a
/// crash between handling and recording.
pub type Handler = Arc<dyn Fn(Event) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// A consumer's interest in some event types.
#[derive(Clone)]
pub struct Subscription {
    /// The consuming service (`leaderboard`), the key of its idempotency records.
    pub consumer: &'static str,
    /// The event types it handles.
    pub event_types: &'static [&'static str],
    /// The handler.
    pub handler: Handler,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("consumer", &self.consumer).field("event_types", &self.event_types).finish()
    }
}

/// Rows claimed per round.
const BATCH: i64 = 100;
/// How long a claim keeps other relays off a row; a relay that died releases it by expiry.
const LEASE_MS: i64 = 30_000;
/// After this many failed deliveries an event is parked as dead.
pub const MAX_ATTEMPTS: i64 = 8;
/// Pause between rounds when the outbox is empty.
const IDLE: Duration = Duration::from_millis(200);

/// Delivers outbox events to in-process consumers.
#[derive(Clone, Debug)]
pub struct Relay {
    db: Database,
    subscriptions: Arc<Vec<Subscription>>,
}

impl Relay {
    /// A relay over `db` delivering to `subscriptions`.
    pub fn new(db: Database, subscriptions: Vec<Subscription>) -> Self {
        Self { db, subscriptions: Arc::new(subscriptions) }
    }

    /// Delivers until shutdown, then finishes the round in hand.
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            let delivered = match self.deliver_round().await {
                Ok(n) => n,
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "event relay round failed");
                    0
                }
            };
            if delivered == 0 {
                tokio::select! {
                    () = shutdown.stopped() => return,
                    () = tokio::time::sleep(IDLE) => {}
                }
            } else if shutdown.is_stopped() {
                return;
            }
        }
    }

    /// Claims a batch of due events and delivers them. Returns how many were claimed.
    pub async fn deliver_round(&self) -> anyhow::Result<usize> {
        let now = now_millis();
        let rows = sqlx::query(
            "UPDATE outbox SET claimed_until = $1 WHERE id IN (\
               SELECT id FROM outbox WHERE sent_at IS NULL AND dead_at IS NULL \
               AND (next_attempt_at IS NULL OR next_attempt_at <= $2) AND (claimed_until IS NULL OR claimed_until <= $2) \
               ORDER BY created_at, id LIMIT $3) \
             AND (claimed_until IS NULL OR claimed_until <= $2) \
             RETURNING id, event_type, payload, attempts",
        )
        .bind(now + LEASE_MS)
        .bind(now)
        .bind(BATCH)
        .fetch_all(self.db.pool())
        .await
        .context("claiming outbox events")?;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let payload: String = row.try_get("payload")?;
            let event = Event {
                id: row.try_get("id")?,
                event_type: row.try_get("event_type")?,
                payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
            };
            events.push((event, row.try_get::<i64, _>("attempts")?));
        }
        // Outbox order: ids are UUIDv7, so they sort by creation time.
        events.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        for (event, attempts) in &events {
            self.deliver(event, *attempts).await?;
        }
        Ok(events.len())
    }

    async fn deliver(&self, event: &Event, attempts: i64) -> anyhow::Result<()> {
        let mut failure = None;
        for subscription in self.subscriptions.iter().filter(|s| s.event_types.contains(&event.event_type.as_str())) {
            if let Err(err) = self.consume(subscription, event).await {
                tracing::warn!(
                    consumer = subscription.consumer,
                    event_id = event.id,
                    event_type = event.event_type,
                    error = format!("{err:#}"),
                    "event handler failed"
                );
                failure = Some(format!("{}: {err:#}", subscription.consumer));
            }
        }
        let now = now_millis();
        match failure {
            None => {
                sqlx::query("UPDATE outbox SET sent_at = $2, claimed_until = NULL WHERE id = $1")
                    .bind(&event.id)
                    .bind(now)
                    .execute(self.db.pool())
                    .await
                    .context("marking event sent")?;
            }
            Some(error) => {
                let attempts = attempts + 1;
                let dead = attempts >= MAX_ATTEMPTS;
                // 1 s, 2 s, 4 s, ... capped at five minutes.
                let backoff = 1000i64.saturating_mul(1 << attempts.min(20)).min(300_000);
                sqlx::query(
                    "UPDATE outbox SET attempts = $2, next_attempt_at = $3, last_error = $4, dead_at = $5, claimed_until = NULL WHERE id = $1",
                )
                .bind(&event.id)
                .bind(attempts)
                .bind(now + backoff)
                .bind(&error)
                .bind(dead.then_some(now))
                .execute(self.db.pool())
                .await
                .context("recording a failed delivery")?;
                if dead {
                    tracing::error!(
                        event_id = event.id,
                        event_type = event.event_type,
                        attempts,
                        "event parked as dead after repeated failures"
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs one consumer's handler unless it already handled this event, then records it.
    async fn consume(&self, subscription: &Subscription, event: &Event) -> anyhow::Result<()> {
        let seen: Option<i64> = sqlx::query_scalar("SELECT 1 FROM consumed_events WHERE consumer = $1 AND event_id = $2")
            .bind(subscription.consumer)
            .bind(&event.id)
            .fetch_optional(self.db.pool())
            .await
            .context("checking consumed events")?;
        if seen.is_some() {
            tracing::debug!(consumer = subscription.consumer, event_id = event.id, "event already handled; skipped");
            return Ok(());
        }
        (subscription.handler)(event.clone()).await?;
        sqlx::query("INSERT INTO consumed_events (consumer, event_id, consumed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(subscription.consumer)
            .bind(&event.id)
            .bind(now_millis())
            .execute(self.db.pool())
            .await
            .context("recording a consumed event")?;
        Ok(())
    }
}

/// Builds a `Handler` from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |event| Box::pin(f(event)))
}
