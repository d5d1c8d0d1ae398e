//! The relay: claims due outbox rows with a lease, hands each event to its consumers (in
//! process, or to their SQS queues), and marks it sent when all of them took it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use tracing::Instrument;

use super::{Event, EventMetrics, Queues, Subscription, consumers_of, handle_once};
use crate::db::{Database, now_millis};
use crate::shutdown::Shutdown;

/// Rows claimed per round.
const BATCH: i64 = 100;
/// How long a claim keeps other relays off a row; a relay that died releases it by expiry.
const LEASE_MS: i64 = 30_000;
/// After this many failed deliveries an event handled in process is parked as dead; one sent to
/// SQS is not (see `Relay::record_failure`). With the backoff below, about 2.8 hours of failures.
pub const MAX_ATTEMPTS: i64 = 20;
/// The longest wait between two attempts to hand an event to in-process handlers.
const MAX_BACKOFF_MS: i64 = 15 * 60 * 1000;
/// From this many failed sends on, an event that SQS has not taken is logged as an error (about
/// two minutes of failures at the SQS backoff).
const SQS_STUCK_AFTER: i64 = 8;
/// The longest wait between two attempts to send an event to SQS: when the queue comes back, the
/// backlog goes out within this long.
const SQS_MAX_BACKOFF_MS: i64 = 30_000;
/// Pause between rounds when the outbox is empty.
const IDLE: Duration = Duration::from_millis(200);
/// The longest extra pause after failed rounds (0.4 s, 0.8 s, ... doubling up to this).
const MAX_FAILURE_PAUSE: Duration = Duration::from_secs(5);
/// How long sent outbox rows and handled-event records are kept (SQS keeps a message at most
/// 14 days, so an older duplicate cannot arrive).
const RETENTION_MS: i64 = 15 * 24 * 3600 * 1000;
/// How often the relay deletes rows past `RETENTION_MS`.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Where the relay hands events.
#[derive(Clone, Debug)]
enum Transport {
    InProcess(Arc<Vec<Subscription>>),
    Sqs(Queues),
}

/// Delivers outbox events to consumers, in process or through SQS.
#[derive(Clone, Debug)]
pub struct Relay {
    db: Database,
    transport: Transport,
    metrics: EventMetrics,
}

impl Relay {
    /// A relay over `db` delivering in process to `subscriptions`.
    pub fn new(db: Database, subscriptions: Vec<Subscription>) -> Self {
        Self { db, transport: Transport::InProcess(Arc::new(subscriptions)), metrics: EventMetrics::default() }
    }

    /// A relay over `db` sending to the consumers' SQS queues.
    pub fn sqs(db: Database, queues: Queues) -> Self {
        Self { db, transport: Transport::Sqs(queues), metrics: EventMetrics::default() }
    }

    /// Counts deliveries (and, in process, each consumer's handling) into `metrics`.
    pub fn with_metrics(mut self, metrics: EventMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Delivers until shutdown, then finishes the round in hand.
    pub async fn run(self, shutdown: Shutdown) {
        // The first round of housekeeping runs at start, so that dead events are reported by
        // every process that starts, not an hour later.
        let mut last_purge: Option<tokio::time::Instant> = None;
        let mut failures = 0u32;
        loop {
            let delivered = match self.deliver_round().await {
                Ok(n) => {
                    failures = 0;
                    n
                }
                Err(err) => {
                    // While the database is down a round fails at once (crate::db): wait longer
                    // after each failure, so that an outage is neither a busy loop nor a flood
                    // of warnings.
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = format!("{err:#}"), failures, "event relay round failed");
                    let pause = (IDLE * 2u32.saturating_pow(failures.min(5))).min(MAX_FAILURE_PAUSE);
                    tokio::select! {
                        () = shutdown.stopped() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    0
                }
            };
            if last_purge.is_none_or(|at| at.elapsed() >= PURGE_EVERY) {
                last_purge = Some(tokio::time::Instant::now());
                if let Err(err) = self.purge().await {
                    tracing::warn!(error = format!("{err:#}"), "purging old events failed");
                }
                match super::dead::count(&self.db).await {
                    Ok(0) => {}
                    Ok(dead) => tracing::error!(dead, "events are parked as dead; list them with guildhall events dead"),
                    Err(err) => tracing::warn!(error = format!("{err:#}"), "counting dead events failed"),
                }
            }
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
        let events = self.claim().await?;
        for (event, attempts) in &events {
            match self.publish(event).await {
                Ok(()) => {
                    self.mark_sent(event).await?;
                    self.metrics.delivered();
                }
                Err(err) => {
                    self.metrics.delivery_failed();
                    // A dependency outage says nothing about the event: retry it, but do not
                    // count the attempt towards parking it as dead.
                    let counts = crate::error::unavailable_dependency(&err).is_none();
                    self.record_failure(event, *attempts, &format!("{err:#}"), counts).await?
                }
            }
        }
        Ok(events.len())
    }

    /// Claims up to a batch of due events for this relay (a lease, so that other relays leave
    /// them alone), oldest first, with their failed attempts so far.
    pub async fn claim(&self) -> anyhow::Result<Vec<(Event, i64)>> {
        let now = now_millis();
        let rows = sqlx::query(
            "UPDATE outbox SET claimed_until = $1 WHERE id IN (\
               SELECT id FROM outbox WHERE sent_at IS NULL AND dead_at IS NULL \
               AND (next_attempt_at IS NULL OR next_attempt_at <= $2) AND (claimed_until IS NULL OR claimed_until <= $2) \
               ORDER BY created_at, id LIMIT $3) \
             AND (claimed_until IS NULL OR claimed_until <= $2) \
             RETURNING id, event_type, payload, trace_context, attempts",
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
            let trace: Option<String> = row.try_get("trace_context")?;
            let event = Event {
                id: row.try_get("id")?,
                event_type: row.try_get("event_type")?,
                payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                trace: trace.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
            };
            events.push((event, row.try_get::<i64, _>("attempts")?));
        }
        // Outbox order: ids are UUIDv7, so they sort by creation time.
        events.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(events)
    }

    /// Hands `event` to every consumer: the in-process handlers, or each subscriber's queue.
    /// Fails when any of them did not take it (the others may have: delivery is at least once).
    pub async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        // A span in the trace the event was recorded in, so that the sends (and, through the
        // headers they carry, the consumers) join that trace.
        let span = tracing::info_span!(
            "event.publish",
            otel.name = format!("publish {}", event.event_type),
            otel.kind = "producer",
            event_id = event.id,
            event_type = event.event_type,
        );
        crate::telemetry::set_parent(&span, &event.trace);
        self.publish_in_span(event).instrument(span).await
    }

    async fn publish_in_span(&self, event: &Event) -> anyhow::Result<()> {
        let mut failure = None;
        // The first handler failure, kept whole while every failure is a dependency outage, so
        // that the relay can tell an outage (not counted) from a failing event.
        let mut outage: Option<anyhow::Error> = None;
        let mut other_failure = false;
        match &self.transport {
            Transport::InProcess(subscriptions) => {
                for subscription in subscriptions.iter().filter(|s| s.handles(event)) {
                    if let Some(age) = super::metrics::age_of(&event.id) {
                        self.metrics.waited(subscription.consumer, age);
                    }
                    let handled = handle_once(&self.db, subscription, event).await;
                    self.metrics.handled(subscription.consumer, handled.is_ok());
                    if let Err(err) = handled {
                        tracing::warn!(
                            consumer = subscription.consumer,
                            event_id = event.id,
                            event_type = event.event_type,
                            error = format!("{err:#}"),
                            "event handler failed"
                        );
                        failure = Some(format!("{}: {err:#}", subscription.consumer));
                        if crate::error::unavailable_dependency(&err).is_some() {
                            outage.get_or_insert(err);
                        } else {
                            other_failure = true;
                        }
                    }
                }
            }
            Transport::Sqs(queues) => {
                let mut traced = event.clone();
                let here = crate::telemetry::current_trace_headers();
                if !here.is_empty() {
                    traced.trace = here;
                }
                for consumer in consumers_of(&event.event_type) {
                    if let Err(err) = queues.send(consumer, &traced).await {
                        tracing::warn!(consumer, event_id = event.id, error = format!("{err:#}"), "sending an event to SQS failed");
                        failure = Some(format!("{consumer}: {err:#}"));
                        other_failure = true;
                    }
                }
            }
        }
        match (failure, outage) {
            (None, _) => Ok(()),
            (Some(_), Some(outage)) if !other_failure => Err(outage),
            (Some(error), _) => Err(anyhow::anyhow!(error)),
        }
    }

    /// Marks `event` delivered.
    pub async fn mark_sent(&self, event: &Event) -> anyhow::Result<()> {
        sqlx::query("UPDATE outbox SET sent_at = $2, claimed_until = NULL WHERE id = $1")
            .bind(&event.id)
            .bind(now_millis())
            .execute(self.db.pool())
            .await
            .context("marking event sent")?;
        Ok(())
    }

    /// Schedules the next attempt after a failed delivery, with exponential backoff (2 s, 4 s,
    /// 8 s, ... up to 15 minutes). In process, a handler that keeps failing is a bug the event cannot get past, so
    /// after `MAX_ATTEMPTS` the event is parked as dead; but an attempt that failed because a
    /// dependency was down (`counts` false: `crate::error::unavailable_dependency`) says nothing
    /// about the event and is not counted. A send to SQS fails only while the queue
    /// cannot be reached (an outage, a partition, a wrong policy): the event is not at fault, and
    /// parking it would leave an erasure or an upload check half done for good. So it is retried
    /// for as long as it takes, at most `SQS_MAX_BACKOFF_MS` apart, and an error is logged from
    /// `SQS_STUCK_AFTER` on, for the alarm on error logs to catch.
    async fn record_failure(&self, event: &Event, attempts: i64, error: &str, counts: bool) -> anyhow::Result<()> {
        let now = now_millis();
        let attempts = attempts + i64::from(counts);
        let to_sqs = matches!(self.transport, Transport::Sqs(_));
        let dead = !to_sqs && attempts >= MAX_ATTEMPTS;
        let cap = if to_sqs { SQS_MAX_BACKOFF_MS } else { MAX_BACKOFF_MS };
        let backoff = 1000i64.saturating_mul(1 << attempts.min(20)).min(cap);
        sqlx::query(
            "UPDATE outbox SET attempts = $2, next_attempt_at = $3, last_error = $4, dead_at = $5, claimed_until = NULL WHERE id = $1",
        )
        .bind(&event.id)
        .bind(attempts)
        .bind(now + backoff)
        .bind(error)
        .bind(dead.then_some(now))
        .execute(self.db.pool())
        .await
        .context("recording a failed delivery")?;
        if dead {
            tracing::error!(event_id = event.id, event_type = event.event_type, attempts, "event parked as dead after repeated failures");
        } else if to_sqs && attempts >= SQS_STUCK_AFTER {
            tracing::error!(event_id = event.id, event_type = event.event_type, attempts, "event still not sent to SQS; retrying");
        }
        Ok(())
    }

    /// Deletes sent outbox rows and handled-event records older than the retention.
    async fn purge(&self) -> anyhow::Result<()> {
        let cutoff = now_millis() - RETENTION_MS;
        sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1").bind(cutoff).execute(self.db.pool()).await?;
        sqlx::query("DELETE FROM consumed_events WHERE consumed_at < $1").bind(cutoff).execute(self.db.pool()).await?;
        Ok(())
    }
}
