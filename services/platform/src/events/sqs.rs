//! The SQS transport: the relay sends each event to every consuming service's queue
//! (`Queues::send`), and each service's `QueueConsumer` long-polls its own. A message that keeps
//! failing is retried with growing delays and moved by SQS to the queue's dead-letter queue after
//! its redrive policy's `maxReceiveCount`; one that failed because a dependency was down is put
//! back without holding up the consumer, which stops receiving until the dependency answers, so
//! that an outage spends as few receives as possible.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, MessageSystemAttributeNameForSends, MessageSystemAttributeValue,
};

use super::{Event, EventMetrics, Subscription, TraceHeaders, handle_once};
use crate::config::{AwsConfig, QueueConfig};
use crate::db::Database;
use crate::shutdown::Shutdown;

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
/// The longest delay before a failed message comes back. With the queues' `maxReceiveCount` of
/// 20 (ecs/cloudformation), a failing event is retried for about 2.5 hours (1 + 2 + ... + 512 s,
/// then 900 s each) before it lands in the dead-letter queue.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(900);
/// The first and the longest pause between runs of a handler whose dependency is down.
const OUTAGE_RETRY_FIRST: Duration = Duration::from_secs(1);
const OUTAGE_RETRY_MAX: Duration = Duration::from_secs(30);

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
    metrics: EventMetrics,
}

/// One received message, parsed.
struct Received {
    receipt: String,
    receives: u32,
    /// How long it was in the queue before this receipt (from SQS's `SentTimestamp`).
    waited: Option<Duration>,
    event: Result<Event, String>,
}

impl QueueConsumer {
    /// A consumer of the queue of `consumer`, handing each event to the one of `subscriptions`
    /// (all of `consumer`) that handles its type.
    pub fn new(db: Database, queues: Queues, consumer: &'static str, subscriptions: Vec<Subscription>) -> Self {
        debug_assert!(subscriptions.iter().all(|s| s.consumer == consumer));
        Self { db, queues, consumer, subscriptions: Arc::new(subscriptions), metrics: EventMetrics::default() }
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

    /// Counts what this consumer handles, and how long messages waited in its queue, into
    /// `metrics`.
    pub fn with_metrics(mut self, metrics: EventMetrics) -> Self {
        self.metrics = metrics;
        self
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
                    self.handle_batch(messages, &shutdown).await;
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

    async fn handle_batch(&self, messages: Vec<Received>, shutdown: &Shutdown) {
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
            let (this, shutdown) = (self.clone(), shutdown.clone());
            tasks.spawn(async move {
                let done = this.handle(&message, &shutdown).await;
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
    /// be deleted. A handler that failed because a dependency is down is run again here, the
    /// message kept hidden, until the dependency is back (or shutdown): giving the message back
    /// would spend one of its receives per attempt, and an outage of minutes would send good
    /// events to the dead-letter queue. Meanwhile this consumer receives nothing new. Any other
    /// failure gives the message back after a growing delay (1 s, 2 s, 4 s ... up to
    /// `MAX_RETRY_DELAY`) until the redrive policy moves it to the dead-letter queue.
    async fn handle(&self, message: &Received, shutdown: &Shutdown) -> bool {
        let consumer = self.consumer;
        if let Some(waited) = message.waited {
            self.metrics.waited(consumer, waited);
        }
        let handled = match &message.event {
            Err(reason) => {
                tracing::error!(consumer, receives = message.receives, reason, "unreadable message; it will land in the dead-letter queue");
                false
            }
            Ok(event) => match self.subscriptions.iter().find(|s| s.handles(event)) {
                None => {
                    tracing::warn!(consumer, event_type = event.event_type, "message of a type this consumer does not handle; deleted");
                    true
                }
                Some(subscription) => {
                    let heartbeat = self.keep_hidden(&message.receipt);
                    let mut pause = OUTAGE_RETRY_FIRST;
                    let result = loop {
                        let result = handle_once(&self.db, subscription, event).await;
                        let Err(err) = &result else { break result };
                        let Some(dependency) = crate::error::unavailable_dependency(err) else { break result };
                        tracing::warn!(
                            consumer,
                            event_id = event.id,
                            dependency = dependency.name(),
                            retry_in_ms = pause.as_millis() as u64,
                            error = format!("{err:#}"),
                            "event handler failed: a dependency is down; retrying the message in hand"
                        );
                        tokio::select! {
                            () = shutdown.stopped() => break result,
                            () = tokio::time::sleep(pause) => {}
                        }
                        pause = (pause * 2).min(OUTAGE_RETRY_MAX);
                    };
                    heartbeat.abort();
                    self.metrics.handled(consumer, result.is_ok());
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
            let delay = if shutdown.is_stopped() {
                // Interrupted, not failed: another instance may take it at once.
                Duration::ZERO
            } else {
                Duration::from_secs(1u64 << message.receives.saturating_sub(1).min(16)).min(MAX_RETRY_DELAY)
            };
            let retried = self
                .queues
                .client
                .change_message_visibility()
                .queue_url(self.queues.url(consumer))
                .receipt_handle(&message.receipt)
                .visibility_timeout(i32::try_from(delay.as_secs()).unwrap_or(60))
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
    let waited = message
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
        .and_then(|ms| ms.parse::<i64>().ok())
        .map(|sent| Duration::from_millis(u64::try_from(crate::db::now_millis() - sent).unwrap_or(0)));
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
    Some(Received { receipt, receives, waited, event })
}
