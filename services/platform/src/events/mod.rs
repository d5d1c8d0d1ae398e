//! Events between services, delivered from the transactional outbox.
//!
//! A service records an event in its `outbox` in the same transaction as the change
//! (`outbox::record`). The relay (`relay`) claims unsent rows with a lease (so several instances
//! can run it without delivering a row twice at once), hands each event to every consumer
//! subscribed to its type, and marks it sent only when all of them succeeded: delivery is at
//! least once. Each consumer's handled event ids are kept in `consumed_events`
//! (`subscription::handle_once`), so a redelivered event is skipped.
//!
//! Every event is a serde struct implementing [`EventType`], its wire name written once, in
//! `catalog`; producers record the struct and consumers subscribe with a handler taking it
//! (`Subscription::on`), so no payload is read field by field anywhere.
//!
//! Two transports carry events from the relay to the consumers:
//! - in process (embedded default, monolith only): the relay calls the handlers itself;
//! - SQS (`QUEUE_URL`, `sqs`): the relay sends each event to the queue of every consuming
//!   service (`ROUTES`), and each service's `QueueConsumer` long-polls its own queue.
//!
//! Fan-out is done by the relay sending to each subscriber's queue rather than through SNS: one
//! AWS service fewer to run, secure and emulate, and an outbox row is marked sent only when every
//! subscriber's queue accepted it. The cost is that the relay must know who subscribes (`ROUTES`,
//! checked against the subscriptions by `check_routes` when a process starts on SQS).
//!
//! Failures: an attempt that failed because a dependency was down is retried without counting
//! against the event. One that failed otherwise backs off exponentially for hours before the
//! event is parked as dead (the outbox's `dead_at`, or SQS's dead-letter queue); `dead` lists
//! both and re-drives them (`guildhall events`).

pub mod catalog;
pub mod dead;
pub mod metrics;
pub mod outbox;
pub mod relay;
pub mod sqs;
pub mod subscription;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use catalog::{
    AccountCreated, AccountDeleted, BlockAdded, BlockRemoved, FriendAccepted, FriendRemoved, FriendRequested, MessageReported,
    SanctionIssued, SeasonClosed, SeasonPlacing, UploadCompleted, UploadReady, UploadRejected,
};
pub use metrics::{EventMetrics, register_outbox_metrics};
pub use outbox::record;
pub use relay::{MAX_ATTEMPTS, Relay};
pub use sqs::{QueueConsumer, Queues};
pub use subscription::{Subscription, handle_once};

/// A kind of event: a serde struct, its payload, with its name on the wire.
pub trait EventType: Serialize + DeserializeOwned + Send + 'static {
    /// e.g. `account.deleted`: the outbox's `event_type` and the SQS message's `type`.
    const NAME: &'static str;
}

/// An event as the outbox stores it and the transports carry it: the payload is still JSON,
/// read into its `EventType` by the subscription that handles it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Outbox id (UUIDv7): the idempotency key.
    pub id: String,
    /// `EventType::NAME` of the payload.
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
/// `webhooks` takes every event an operator can subscribe a webhook to.
pub const ROUTES: &[(&str, &[&str])] = &[
    (AccountCreated::NAME, &["webhooks"]),
    (AccountDeleted::NAME, &["leaderboard", "uploads", "chat", "webhooks"]),
    (UploadCompleted::NAME, &["uploads"]),
    (UploadReady::NAME, &["webhooks"]),
    (UploadRejected::NAME, &["webhooks"]),
    (MessageReported::NAME, &["chat", "webhooks"]),
    (SanctionIssued::NAME, &["webhooks"]),
    (SeasonClosed::NAME, &["chat", "webhooks"]),
    (FriendRequested::NAME, &["chat"]),
    (FriendAccepted::NAME, &["chat", "leaderboard"]),
    (FriendRemoved::NAME, &["leaderboard"]),
    (BlockAdded::NAME, &["chat"]),
    (BlockRemoved::NAME, &["chat"]),
];

/// The consumers of `event_type` (see `ROUTES`).
pub fn consumers_of(event_type: &str) -> &'static [&'static str] {
    ROUTES.iter().find(|(t, _)| *t == event_type).map_or(&[], |(_, c)| c)
}

/// Every consuming service named in `ROUTES`, once each.
pub fn consumers() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = ROUTES.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Checks `ROUTES` against the subscriptions of the consumers in this process: every
/// subscription must be routed to its consumer (or SQS would never bring it the event), and every
/// route to one of these consumers must have a subscription (or its consumer would delete the
/// messages as of a type it does not handle).
pub fn check_routes(subscriptions: &[Subscription]) -> anyhow::Result<()> {
    for s in subscriptions {
        anyhow::ensure!(consumers_of(s.event_type).contains(&s.consumer), "ROUTES does not send {} to {}", s.event_type, s.consumer);
    }
    for (event_type, consumers) in ROUTES {
        for consumer in consumers.iter().filter(|c| subscriptions.iter().any(|s| s.consumer == **c)) {
            anyhow::ensure!(
                subscriptions.iter().any(|s| s.consumer == *consumer && s.event_type == *event_type),
                "ROUTES sends {event_type} to {consumer}, which does not subscribe to it"
            );
        }
    }
    Ok(())
}
