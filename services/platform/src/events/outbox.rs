//! The transactional outbox: a service records an event in the same transaction as the change
//! it describes, so that the event exists exactly when the change does; the relay delivers it.

use anyhow::Context;
use sqlx::{Any, Executor};

use super::EventType;
use crate::db::now_millis;

/// An event's outbox row, made but not yet written: for a store that writes it inside a
/// statement of its own (one round trip for a change and its event: a CTE on PostgreSQL), with
/// the columns `record` writes.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The row's id (UUIDv7), which is the message id consumers deduplicate by.
    pub id: String,
    /// `EventType::NAME`.
    pub event_type: &'static str,
    /// The event as JSON.
    pub payload: String,
    /// The trace the change happens in (`trace_context`), when traced.
    pub trace_context: Option<String>,
}

impl Entry {
    /// The outbox row of `event`, in the trace of the caller.
    pub fn of<E: EventType>(event: &E) -> anyhow::Result<Self> {
        let payload = serde_json::to_string(event).with_context(|| format!("serialising {}", E::NAME))?;
        // The trace this change happens in, so the consumers' work joins it.
        let trace = crate::telemetry::current_trace_headers();
        let trace_context = (!trace.is_empty()).then(|| serde_json::to_string(&trace).unwrap_or_default());
        Ok(Entry { id: uuid::Uuid::now_v7().to_string(), event_type: E::NAME, payload, trace_context })
    }
}

/// Records `event` for delivery, inside the caller's transaction. Returns its id.
pub async fn record<'e, E: EventType>(conn: impl Executor<'e, Database = Any>, event: &E) -> anyhow::Result<String> {
    let entry = Entry::of(event)?;
    sqlx::query("INSERT INTO outbox (id, event_type, payload, trace_context, created_at, sent_at) VALUES ($1, $2, $3, $4, $5, NULL)")
        .bind(&entry.id)
        .bind(entry.event_type)
        .bind(entry.payload)
        .bind(entry.trace_context)
        .bind(now_millis())
        .execute(conn)
        .await
        .with_context(|| format!("recording {} in the outbox", E::NAME))?;
    Ok(entry.id)
}
