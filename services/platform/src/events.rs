//! Events between services, delivered from the transactional outbox.
//!
//! A service records an event in its `outbox` in the same transaction as the change
//! (`crate::outbox::record`). The relay here claims unsent rows with a lease (so several
//! instances can run it without delivering a row twice at once), hands each event to every
//! consumer subscribed to its type, and marks it sent only when all of them succeeded: delivery is
//! at least once. Each consumer's handled event ids are kept in `consumed_events`, so a
//! redelivered event is skipped. An event that keeps failing is retried with exponential backoff;
//! in process, after `MAX_ATTEMPTS` it is parked as dead (`dead_at`), the in-process twin of a
//! dead-letter queue. A send to SQS is retried until SQS takes it (at most 30 s apart), since it
//! fails only while the queue is unreachable.
//!
//! Two transports carry events from the relay to the consumers:
//! - in process (embedded default, monolith only): the relay calls the handlers itself;
//! - SQS (`QUEUE_URL`): the relay sends each event to the queue of every consuming service
//!   (`ROUTES`), and each service's `QueueConsumer` long-polls its own queue. A message that
//!   keeps failing is moved by SQS to the queue's dead-letter queue after its redrive policy's
//!   `maxReceiveCount`.
//!
//! Fan-out is done by the relay sending to each subscriber's queue rather than through SNS: one
//! AWS service fewer to run, secure and emulate, and an outbox row is marked sent only when every
//! subscriber's queue accepted it. The cost is that the relay must know who subscribes (`ROUTES`,
//! checked against the services' subscriptions by a test).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, MessageSystemAttributeNameForSends, MessageSystemAttributeValue,
};
use sqlx::Row;
use tracing::Instrument;

use crate::config::{AwsConfig, QueueConfig};
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
    /// Trace propagation headers captured where the event was recorded (`traceparent`,
    /// `X-Amzn-Trace-Id`), so the consumer's work joins the producer's trace.
    pub trace: TraceHeaders,
}

/// Trace propagation headers by name.
pub type TraceHeaders = std::collections::BTreeMap<String, String>;

/// Who consumes each event type, for the SQS transport, where the relay cannot see the
/// subscriptions of services running elsewhere. Event types missing here have no consumer.
pub const ROUTES: &[(&str, &[&str])] = &[("account.deleted", &["leaderboard", "uploads", "chat"]), ("upload.completed", &["uploads"])];

/// The consumers of `event_type` (see `ROUTES`).
pub fn consumers_of(event_type: &str) -> &'static [&'static str] {
    ROUTES.iter().find(|(t, _)| *t == event_type).map_or(&[], |(_, c)| c)
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
/// After this many failed deliveries an event handled in process is parked as dead; one sent to
/// SQS is not (see `Relay::record_failure`) but is reported as stuck.
pub const MAX_ATTEMPTS: i64 = 8;
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
}

impl Relay {
    /// A relay over `db` delivering in process to `subscriptions`.
    pub fn new(db: Database, subscriptions: Vec<Subscription>) -> Self {
        Self { db, transport: Transport::InProcess(Arc::new(subscriptions)) }
    }

    /// A relay over `db` sending to the consumers' SQS queues.
    pub fn sqs(db: Database, queues: Queues) -> Self {
        Self { db, transport: Transport::Sqs(queues) }
    }

    /// Delivers until shutdown, then finishes the round in hand.
    pub async fn run(self, shutdown: Shutdown) {
        let mut last_purge = tokio::time::Instant::now();
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
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = tokio::time::Instant::now();
                if let Err(err) = self.purge().await {
                    tracing::warn!(error = format!("{err:#}"), "purging old events failed");
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
                Ok(()) => self.mark_sent(event).await?,
                Err(err) => {
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
                for subscription in subscriptions.iter().filter(|s| s.event_types.contains(&event.event_type.as_str())) {
                    if let Err(err) = handle_once(&self.db, subscription, event).await {
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
    /// 8 s, ...). In process, a handler that keeps failing is a bug the event cannot get past, so
    /// after `MAX_ATTEMPTS` the event is parked as dead; but an attempt that failed because a
    /// dependency was down (`counts` false: `crate::error::unavailable_dependency`) says nothing
    /// about the event and is not counted. A send to SQS fails only while the queue
    /// cannot be reached (an outage, a partition, a wrong policy): the event is not at fault, and
    /// parking it would leave an erasure or an upload check half done for good. So it is retried
    /// for as long as it takes, at most `SQS_MAX_BACKOFF_MS` apart, and an error is logged from
    /// `MAX_ATTEMPTS` on, for the alarm on error logs to catch.
    async fn record_failure(&self, event: &Event, attempts: i64, error: &str, counts: bool) -> anyhow::Result<()> {
        let now = now_millis();
        let attempts = attempts + i64::from(counts);
        let to_sqs = matches!(self.transport, Transport::Sqs(_));
        let dead = !to_sqs && attempts >= MAX_ATTEMPTS;
        let cap = if to_sqs { SQS_MAX_BACKOFF_MS } else { 300_000 };
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
        } else if to_sqs && attempts >= MAX_ATTEMPTS {
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

/// The SQS queues of the consuming services. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Queues {
    client: aws_sdk_sqs::Client,
    /// `QUEUE_URL`, with `{consumer}`.
    url_template: String,
    /// Long-poll wait of a receive.
    wait: Duration,
    /// How long a received message stays hidden.
    visibility: Duration,
}

/// Messages received per call (SQS's maximum).
const RECEIVE_BATCH: i32 = 10;

impl Queues {
    /// Connects to SQS as `queue` describes; `None` for the in-process transport.
    pub async fn connect(queue: &QueueConfig, aws: &AwsConfig) -> Option<Self> {
        match queue {
            QueueConfig::Sqs { url_template, wait, visibility } => {
                let sdk = crate::aws::sdk_config(aws).await;
                Some(Queues {
                    client: aws_sdk_sqs::Client::new(&sdk),
                    url_template: url_template.clone(),
                    wait: *wait,
                    visibility: *visibility,
                })
            }
            QueueConfig::InProcess => None,
        }
    }

    /// The SQS client (tests and tools).
    pub fn client(&self) -> &aws_sdk_sqs::Client {
        &self.client
    }

    /// The queue URL of `consumer`.
    pub fn url(&self, consumer: &str) -> String {
        self.url_template.replace("{consumer}", consumer)
    }

    /// Sends `event` to `consumer`'s queue, with the trace headers as message attributes.
    pub async fn send(&self, consumer: &str, event: &Event) -> anyhow::Result<()> {
        let body = serde_json::json!({ "id": event.id, "type": event.event_type, "payload": event.payload });
        let attribute = |value: &str| MessageAttributeValue::builder().data_type("String").string_value(value).build();
        let mut request = self
            .client
            .send_message()
            .queue_url(self.url(consumer))
            .message_body(body.to_string())
            .message_attributes("event_id", attribute(&event.id)?)
            .message_attributes("event_type", attribute(&event.event_type)?);
        if let Some(traceparent) = event.trace.get("traceparent") {
            request = request.message_attributes("traceparent", attribute(traceparent)?);
        }
        if let Some(xray) = event.trace.get(crate::telemetry::XRAY_HEADER) {
            let value = MessageSystemAttributeValue::builder().data_type("String").string_value(xray).build()?;
            request = request.message_system_attributes(MessageSystemAttributeNameForSends::AwsTraceHeader, value);
        }
        request.send().await.with_context(|| format!("SQS SendMessage to {consumer}"))?;
        Ok(())
    }
}

/// Long-polls one consuming service's queue and hands each message to the subscription of its
/// event type.
#[derive(Clone, Debug)]
pub struct QueueConsumer {
    db: Database,
    queues: Queues,
    consumer: &'static str,
    subscriptions: Arc<Vec<Subscription>>,
}

/// One received message, parsed.
struct Received {
    receipt: String,
    receives: u32,
    event: Result<Event, String>,
}

impl QueueConsumer {
    /// A consumer of the queue of `consumer`, handing each event to the one of `subscriptions`
    /// (all of `consumer`) that handles its type.
    pub fn new(db: Database, queues: Queues, consumer: &'static str, subscriptions: Vec<Subscription>) -> Self {
        debug_assert!(subscriptions.iter().all(|s| s.consumer == consumer));
        Self { db, queues, consumer, subscriptions: Arc::new(subscriptions) }
    }

    /// One consumer per consuming service among `subscriptions`.
    pub fn for_each_consumer(db: &Database, queues: &Queues, subscriptions: &[Subscription]) -> Vec<Self> {
        let mut consumers: Vec<Self> = Vec::new();
        for subscription in subscriptions {
            match consumers.iter_mut().find(|c| c.consumer == subscription.consumer) {
                Some(existing) => Arc::make_mut(&mut existing.subscriptions).push(subscription.clone()),
                None => consumers.push(Self::new(db.clone(), queues.clone(), subscription.consumer, vec![subscription.clone()])),
            }
        }
        consumers
    }

    /// The consuming service.
    pub fn consumer(&self) -> &'static str {
        self.consumer
    }

    /// Receives and handles messages until shutdown.
    pub async fn run(self, shutdown: Shutdown) {
        let mut errors = 0u32;
        loop {
            let received = tokio::select! {
                () = shutdown.stopped() => return,
                received = self.receive() => received,
            };
            match received {
                Ok(messages) => {
                    errors = 0;
                    self.handle_batch(messages).await;
                }
                Err(err) => {
                    errors = errors.saturating_add(1);
                    tracing::warn!(consumer = self.consumer, error = format!("{err:#}"), "receiving from SQS failed");
                    let pause = Duration::from_millis(500u64.saturating_mul(1 << errors.min(6)));
                    tokio::select! {
                        () = shutdown.stopped() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// One long poll: up to ten messages.
    async fn receive(&self) -> anyhow::Result<Vec<Received>> {
        let (wait, visibility) = (self.queues.wait, self.queues.visibility);
        let config = aws_sdk_sqs::config::Builder::default().timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(wait + crate::aws::CALL_TIMEOUT)
                .operation_timeout(wait + crate::aws::CALL_TIMEOUT * 2)
                .build(),
        );
        let out = self
            .queues
            .client
            .receive_message()
            .queue_url(self.queues.url(self.consumer))
            .max_number_of_messages(RECEIVE_BATCH)
            .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20))
            .visibility_timeout(i32::try_from(visibility.as_secs()).unwrap_or(60))
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .customize()
            .config_override(config)
            .send()
            .await
            .context("SQS ReceiveMessage")?;
        Ok(out.messages.unwrap_or_default().into_iter().filter_map(parse_message).collect())
    }

    async fn handle_batch(&self, messages: Vec<Received>) {
        // Standard queues may hand out two copies of one event in one batch: handle the first,
        // and let its outcome decide for the copies, so that they are not handled side by side.
        let mut copies: Vec<(String, String)> = Vec::new();
        let mut firsts: Vec<Received> = Vec::new();
        for message in messages {
            let id = message.event.as_ref().ok().map(|e| e.id.clone());
            match id {
                Some(id) if firsts.iter().any(|f| f.event.as_ref().is_ok_and(|e| e.id == id)) => copies.push((id, message.receipt)),
                _ => firsts.push(message),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for message in firsts {
            let this = self.clone();
            tasks.spawn(async move {
                let done = this.handle(&message).await;
                (message.event.ok().map(|e| e.id), message.receipt, done)
            });
        }
        let mut done = Vec::new();
        while let Some(result) = tasks.join_next().await {
            if let Ok((id, receipt, true)) = result {
                done.push(receipt);
                done.extend(copies.iter().filter(|(copy, _)| Some(copy) == id.as_ref()).map(|(_, r)| r.clone()));
            }
        }
        if let Err(err) = self.delete(done).await {
            // They come back after their visibility timeout and are skipped as already handled.
            tracing::warn!(consumer = self.consumer, error = format!("{err:#}"), "deleting handled messages failed");
        }
    }

    /// Handles one message, extending its visibility while the handler runs. True when it can
    /// be deleted; otherwise it comes back after a growing pause (1 s, 2 s, 4 s ... up to the
    /// visibility timeout) until the redrive policy moves it to the dead-letter queue.
    async fn handle(&self, message: &Received) -> bool {
        let consumer = self.consumer;
        let handled = match &message.event {
            Err(reason) => {
                tracing::error!(consumer, receives = message.receives, reason, "unreadable message; it will land in the dead-letter queue");
                false
            }
            Ok(event) => match self.subscriptions.iter().find(|s| s.event_types.contains(&event.event_type.as_str())) {
                None => {
                    tracing::warn!(consumer, event_type = event.event_type, "message of a type this consumer does not handle; deleted");
                    true
                }
                Some(subscription) => {
                    let heartbeat = self.keep_hidden(&message.receipt);
                    let result = handle_once(&self.db, subscription, event).await;
                    heartbeat.abort();
                    match result {
                        Ok(()) => true,
                        Err(err) => {
                            tracing::warn!(
                                consumer,
                                event_id = event.id,
                                receives = message.receives,
                                error = format!("{err:#}"),
                                "event handler failed"
                            );
                            false
                        }
                    }
                }
            },
        };
        if !handled {
            let visibility = self.queues.visibility;
            let delay = (1u64 << message.receives.saturating_sub(1).min(12)).min(visibility.as_secs());
            let retried = self
                .queues
                .client
                .change_message_visibility()
                .queue_url(self.queues.url(consumer))
                .receipt_handle(&message.receipt)
                .visibility_timeout(i32::try_from(delay).unwrap_or(60))
                .send()
                .await;
            if let Err(err) = retried {
                tracing::warn!(consumer, error = %aws_sdk_sqs::error::DisplayErrorContext(&err), "setting a failed message's retry delay failed");
            }
        }
        handled
    }

    /// Extends the visibility of the message `receipt` every half visibility timeout until aborted,
    /// so that slow work is not handed to another consumer meanwhile.
    fn keep_hidden(&self, receipt: &str) -> tokio::task::JoinHandle<()> {
        let visibility = self.queues.visibility;
        let (client, url, receipt) = (self.queues.client.clone(), self.queues.url(self.consumer), receipt.to_owned());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(visibility / 2);
            tick.tick().await;
            loop {
                tick.tick().await;
                let extended = client
                    .change_message_visibility()
                    .queue_url(&url)
                    .receipt_handle(&receipt)
                    .visibility_timeout(i32::try_from(visibility.as_secs()).unwrap_or(60))
                    .send()
                    .await;
                match extended {
                    Ok(_) => tracing::debug!("extended a message's visibility"),
                    Err(err) => {
                        tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&err), "extending a message's visibility failed")
                    }
                }
            }
        })
    }

    async fn delete(&self, receipts: Vec<String>) -> anyhow::Result<()> {
        if receipts.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(receipts.len());
        for (i, receipt) in receipts.into_iter().enumerate() {
            entries.push(aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(receipt).build()?);
        }
        let out = self
            .queues
            .client
            .delete_message_batch()
            .queue_url(self.queues.url(self.consumer))
            .set_entries(Some(entries))
            .send()
            .await
            .context("SQS DeleteMessageBatch")?;
        anyhow::ensure!(out.failed.is_empty(), "{} messages not deleted", out.failed.len());
        Ok(())
    }
}

/// Reads an SQS message into an event; a message without a receipt handle is dropped.
fn parse_message(message: aws_sdk_sqs::types::Message) -> Option<Received> {
    let receipt = message.receipt_handle?;
    let receives = message
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let event = (|| {
        let body: serde_json::Value =
            serde_json::from_str(message.body.as_deref().unwrap_or("")).map_err(|e| format!("body is not JSON: {e}"))?;
        let field = |name: &str| body[name].as_str().map(str::to_owned).ok_or_else(|| format!("body has no {name}"));
        let mut trace = TraceHeaders::new();
        if let Some(tp) = message.message_attributes.as_ref().and_then(|a| a.get("traceparent")).and_then(|v| v.string_value.clone()) {
            trace.insert("traceparent".into(), tp);
        }
        if let Some(xray) = message.attributes.as_ref().and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader)) {
            trace.insert(crate::telemetry::XRAY_HEADER.into(), xray.clone());
        }
        Ok(Event { id: field("id")?, event_type: field("type")?, payload: body["payload"].clone(), trace })
    })();
    Some(Received { receipt, receives, event })
}

/// Builds a `Handler` from an async closure.
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Arc::new(move |event| Box::pin(f(event)))
}
