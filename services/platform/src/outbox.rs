//! The transactional outbox: a service records an event in the same transaction as the change
//! it describes; a relay delivers recorded events to the other services (the events issue).

use anyhow::Context;
use sqlx::{Any, Executor};

use crate::db::now_millis;

/// Records `event_type` with `payload` for delivery, inside the caller's transaction.
pub async fn record<'e>(conn: impl Executor<'e, Database = Any>, event_type: &str, payload: &serde_json::Value) -> anyhow::Result<String> {
    let id = uuid::Uuid::now_v7().to_string();
    // The trace this change happens in, so the consumers' work joins it.
    let trace = crate::telemetry::current_trace_headers();
    let trace = (!trace.is_empty()).then(|| serde_json::to_string(&trace).unwrap_or_default());
    sqlx::query("INSERT INTO outbox (id, event_type, payload, trace_context, created_at, sent_at) VALUES ($1, $2, $3, $4, $5, NULL)")
        .bind(&id)
        .bind(event_type)
        .bind(payload.to_string())
        .bind(trace)
        .bind(now_millis())
        .execute(conn)
        .await
        .with_context(|| format!("recording {event_type} in the outbox"))?;
    Ok(id)
}
