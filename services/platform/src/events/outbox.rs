//! The transactional outbox: a service records an event in the same transaction as the change
//! it describes, so that the event exists exactly when the change does; the relay delivers it.

use anyhow::Context;
use sqlx::{Any, Executor};

use super::EventType;
use crate::db::now_millis;

/// Records `event` for delivery, inside the caller's transaction. Returns its id.
pub async fn record<'e, E: EventType>(conn: impl Executor<'e, Database = Any>, event: &E) -> anyhow::Result<String> {
    let id = uuid::Uuid::now_v7().to_string();
    let payload = serde_json::to_string(event).with_context(|| format!("serialising {}", E::NAME))?;
    // The trace this change happens in, so the consumers' work joins it.
    let trace = crate::telemetry::current_trace_headers();
    let trace = (!trace.is_empty()).then(|| serde_json::to_string(&trace).unwrap_or_default());
    sqlx::query("INSERT INTO outbox (id, event_type, payload, trace_context, created_at, sent_at) VALUES ($1, $2, $3, $4, $5, NULL)")
        .bind(&id)
        .bind(E::NAME)
        .bind(payload)
        .bind(trace)
        .bind(now_millis())
        .execute(conn)
        .await
        .with_context(|| format!("recording {} in the outbox", E::NAME))?;
    Ok(id)
}
