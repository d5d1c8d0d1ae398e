//! A consumer's interest in one event type, and running its handler once per event.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use tracing::Instrument;

use super::{Event, EventType};
use crate::db::{Database, now_millis};

/// What a consumer does with an event, its payload not yet read.
type Handler = Arc<dyn Fn(Event) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// A consumer's interest in one event type.
#[derive(Clone)]
pub struct Subscription {
    /// The consuming service (`leaderboard`), the key of its idempotency records.
    pub consumer: &'static str,
    /// The `EventType::NAME` it handles.
    pub event_type: &'static str,
    handler: Handler,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("consumer", &self.consumer).field("event_type", &self.event_type).finish()
    }
}

impl Subscription {
    /// `consumer` handles every `E` with `handle`. The handler must be idempotent: an event may
    /// arrive again after a crash between handling and recording, or after a failed attempt
    /// that did part of the work.
    pub fn on<E, F, Fut>(consumer: &'static str, handle: F) -> Self
    where
        E: EventType,
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Self::on_with_id(consumer, move |_, payload: E| handle(payload))
    }

    /// Like `on`, with the event's id (its outbox id, the same on every delivery) passed to
    /// `handle` with the payload: for a handler that stores something per event and keys it by
    /// the id, so that two copies handled at once (two instances) still store it once.
    pub fn on_with_id<E, F, Fut>(consumer: &'static str, handle: F) -> Self
    where
        E: EventType,
        F: Fn(String, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = Arc::new(handle);
        let handler: Handler = Arc::new(move |event: Event| {
            let handle = handle.clone();
            Box::pin(async move {
                let payload = serde_json::from_value::<E>(event.payload)
                    .with_context(|| format!("{} {} has an unreadable payload", E::NAME, event.id))?;
                handle(event.id, payload).await
            })
        });
        Subscription { consumer, event_type: E::NAME, handler }
    }

    /// Whether this subscription handles `event`.
    pub fn handles(&self, event: &Event) -> bool {
        self.event_type == event.event_type
    }
}

/// Runs one consumer's handler on `event` unless it already handled it, then records that it
/// did, inside a span joined to the producer's trace.
pub async fn handle_once(db: &Database, subscription: &Subscription, event: &Event) -> anyhow::Result<()> {
    let span = tracing::info_span!(
        "event.consume",
        otel.name = format!("{} consume {}", subscription.consumer, event.event_type),
        consumer = subscription.consumer,
        event_id = event.id,
        event_type = event.event_type,
    );
    crate::telemetry::set_parent(&span, &event.trace);
    async {
        let seen: Option<i64> = sqlx::query_scalar("SELECT 1 FROM consumed_events WHERE consumer = $1 AND event_id = $2")
            .bind(subscription.consumer)
            .bind(&event.id)
            .fetch_optional(db.pool())
            .await
            .context("checking consumed events")?;
        if seen.is_some() {
            tracing::info!("event already handled; skipped");
            return Ok(());
        }
        (subscription.handler)(event.clone()).await?;
        sqlx::query("INSERT INTO consumed_events (consumer, event_id, consumed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(subscription.consumer)
            .bind(&event.id)
            .bind(now_millis())
            .execute(db.pool())
            .await
            .context("recording a consumed event")?;
        Ok(())
    }
    .instrument(span)
    .await
}
