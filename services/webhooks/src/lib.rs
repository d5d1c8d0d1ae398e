//! Guildhall webhooks: operators register receivers (`/v1/admin/webhooks`) for events such as a
//! closed season or a chat report; the `webhooks` consumer turns each event it receives (in
//! process or from its SQS queue, like every consumer) into one delivery row per subscribed
//! webhook, and the delivery pool (`delivery`) POSTs each, signed (`signature`), retrying with
//! backoff and parking as failed what never got through, for an operator to redeliver.

pub mod api;
pub mod delivery;
pub mod signature;
pub mod store;
pub mod target;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::AdminKey;
use platform::config::WebhookSettings;
use platform::db::Database;
use platform::events::{
    AccountCreated, AccountDeleted, EventType, MessageReported, SanctionIssued, SeasonClosed, Subscription, UploadReady, UploadRejected,
};
use serde::Serialize;
use utoipa::OpenApi;

/// The consumer's name: its idempotency records, and its SQS queue (`guildhall-webhooks`).
pub const CONSUMER: &str = "webhooks";

/// Everything the webhook handlers and the delivery pool need. Cheap to clone.
#[derive(Clone)]
pub struct WebhooksState {
    /// Webhooks and their deliveries.
    pub db: Database,
    /// The server key.
    pub admin_key: AdminKey,
    /// Timeouts, retries, targets.
    pub settings: WebhookSettings,
    /// Makes the requests.
    pub sender: delivery::Sender,
    /// Wakes the delivery pool of this process when deliveries became due here.
    pub wake: Arc<tokio::sync::Notify>,
}

impl WebhooksState {
    /// The state over `db` with `settings`.
    pub fn new(db: Database, admin_key: AdminKey, settings: WebhookSettings) -> anyhow::Result<Self> {
        let sender = delivery::Sender::new(&settings)?;
        Ok(Self { db, admin_key, settings, sender, wake: Arc::default() })
    }

    /// Which receivers a webhook may point at.
    pub fn policy(&self) -> target::TargetPolicy {
        target::TargetPolicy { allow_local: self.settings.allow_local_targets }
    }

    /// Records a delivery of event `id` for every webhook that takes its type. The body is made
    /// here, once, and sent as is on every attempt.
    async fn enqueue<E: EventType>(&self, id: String, event: E) -> anyhow::Result<()> {
        let webhooks = store::subscribed(&self.db, E::NAME).await?;
        if webhooks.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_string(&Envelope { id: &id, event_type: E::NAME, created_at: created_at(&id), data: &event })?;
        store::enqueue(&self.db, &id, E::NAME, &body, &webhooks).await?;
        tracing::debug!(event_id = id, event_type = E::NAME, webhooks = webhooks.len(), "webhook deliveries recorded");
        self.wake.notify_one();
        Ok(())
    }
}

impl FromRef<WebhooksState> for AdminKey {
    fn from_ref(state: &WebhooksState) -> Self {
        state.admin_key.clone()
    }
}

/// The body of every delivery: the event's id, type and time, and its payload as the catalog
/// defines it (`platform::events::catalog`).
#[derive(Debug, Serialize)]
struct Envelope<'a, E> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    created_at: String,
    data: &'a E,
}

/// When event `id` was recorded: outbox ids are UUIDv7, which carry their creation time.
fn created_at(id: &str) -> String {
    let millis = uuid::Uuid::parse_str(id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|ts| {
            let (secs, nanos) = ts.to_unix();
            i64::try_from(secs).unwrap_or(0) * 1000 + i64::from(nanos / 1_000_000)
        })
        .unwrap_or_else(platform::db::now_millis);
    platform::time::rfc3339(millis)
}

fn forward<E: EventType>(state: &WebhooksState) -> Subscription {
    let state = state.clone();
    Subscription::on_with_id(CONSUMER, move |id: String, event: E| {
        let state = state.clone();
        async move { state.enqueue(id, event).await }
    })
}

/// What the webhooks consumer takes: every event a webhook can subscribe to (`api::WebhookEvent`),
/// each routed to it in `platform::events::ROUTES`.
pub fn subscriptions(state: WebhooksState) -> Vec<Subscription> {
    vec![
        forward::<AccountCreated>(&state),
        forward::<AccountDeleted>(&state),
        forward::<MessageReported>(&state),
        forward::<SanctionIssued>(&state),
        forward::<SeasonClosed>(&state),
        forward::<UploadReady>(&state),
        forward::<UploadRejected>(&state),
    ]
}

/// The webhooks router.
pub fn router(state: WebhooksState) -> Router {
    api::routes().with_state(state)
}

/// Delivers due deliveries until shutdown (run it where the event workers run).
pub async fn run_deliveries(state: WebhooksState, shutdown: platform::shutdown::Shutdown) {
    delivery::run(state, shutdown).await;
}

/// The OpenAPI description of the webhooks API.
#[derive(OpenApi)]
#[openapi(
    paths(api::create_webhook, api::list_webhooks, api::show_webhook, api::delete_webhook, api::list_deliveries, api::redeliver),
    components(schemas(
        api::CreateWebhook, api::WebhookView, api::WebhookPage, api::WebhookEvent, api::DeliveryView, api::DeliveryPage,
        api::DeliveryState, platform::error::ErrorBody
    )),
    tags((name = "webhooks", description = "Operators' receivers of events, and their deliveries"))
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    /// The consumer subscribes to exactly the events `ROUTES` sends it and the API offers, so
    /// that over SQS no event is sent to a queue nobody reads, nor offered and never delivered.
    #[test]
    fn subscriptions_routes_and_the_api_agree() {
        let mut routed: Vec<&str> = platform::events::ROUTES
            .iter()
            .filter(|(_, consumers)| consumers.contains(&CONSUMER))
            .map(|(event_type, _)| *event_type)
            .collect();
        routed.sort_unstable();
        let mut offered: Vec<&str> = api::WebhookEvent::ALL.iter().map(|e| e.name()).filter(|n| *n != "*").collect();
        offered.sort_unstable();
        assert_eq!(routed, offered);
        let mut names = api::WebhookEvent::ALL.iter().map(|e| e.name()).collect::<Vec<_>>();
        names.dedup();
        assert_eq!(names.len(), api::WebhookEvent::ALL.len());
    }

    #[test]
    fn an_event_time_comes_from_its_id() {
        assert_eq!(created_at("0190f5a2-0000-7000-8000-000000000000"), "2024-07-27T19:19:13.152Z");
    }
}
