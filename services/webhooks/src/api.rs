//! The webhooks admin API: register, list, show and delete receivers; list a receiver's
//! deliveries (the parked failures among them) and redeliver one. Server key only.
//!
//! The secret is the operator's, given at creation: it is stored to sign deliveries, and never
//! answered nor logged (nor is the URL logged, whose query may carry the receiver's own token).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use platform::auth::{Admin, Scope};
use platform::config::Secret;
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::events::{
    AccountCreated, AccountDeleted, EventType, MessageReported, SanctionIssued, SeasonClosed, UploadReady, UploadRejected,
};
use platform::http::{Json, Query};
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::WebhooksState;
use crate::store::{self, DeliveryRow, NewWebhook, WebhookRow};
use crate::target::Refusal;

/// The most webhooks a deployment may have: every event is recorded once per subscribed webhook.
pub const MAX_WEBHOOKS: i64 = 100;
/// Secret length bounds, in characters: at least 24 (as the admin key), at most 256.
const SECRET_CHARS: std::ops::RangeInclusive<usize> = 24..=256;
/// The longest description.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// The webhooks routes.
pub fn routes() -> Router<WebhooksState> {
    Router::new()
        .route("/v1/admin/webhooks", post(create_webhook).get(list_webhooks))
        .route("/v1/admin/webhooks/{id}", get(show_webhook).delete(delete_webhook))
        .route("/v1/admin/webhooks/{id}/deliveries", get(list_deliveries))
        .route("/v1/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver", post(redeliver))
}

/// An event a webhook can subscribe to, or `*` for all of them (those added later too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum WebhookEvent {
    /// Every event.
    #[serde(rename = "*")]
    All,
    /// `account.created`: a registration, or a guest's first sign-in.
    #[serde(rename = "account.created")]
    AccountCreated,
    /// `account.deleted`: a player erased their account.
    #[serde(rename = "account.deleted")]
    AccountDeleted,
    /// `chat.message_reported`: a player reported a chat message.
    #[serde(rename = "chat.message_reported")]
    MessageReported,
    /// `chat.sanction_issued`: a player was muted or banned.
    #[serde(rename = "chat.sanction_issued")]
    SanctionIssued,
    /// `leaderboard.season_closed`: a season ended, with its top 10.
    #[serde(rename = "leaderboard.season_closed")]
    SeasonClosed,
    /// `upload.ready`: an upload passed its check.
    #[serde(rename = "upload.ready")]
    UploadReady,
    /// `upload.rejected`: an upload failed its check.
    #[serde(rename = "upload.rejected")]
    UploadRejected,
}

impl WebhookEvent {
    /// Every value.
    pub const ALL: &'static [WebhookEvent] = &[
        WebhookEvent::All,
        WebhookEvent::AccountCreated,
        WebhookEvent::AccountDeleted,
        WebhookEvent::MessageReported,
        WebhookEvent::SanctionIssued,
        WebhookEvent::SeasonClosed,
        WebhookEvent::UploadReady,
        WebhookEvent::UploadRejected,
    ];

    /// The event type's wire name (`platform::events::EventType::NAME`), or `*`.
    pub fn name(self) -> &'static str {
        match self {
            WebhookEvent::All => "*",
            WebhookEvent::AccountCreated => AccountCreated::NAME,
            WebhookEvent::AccountDeleted => AccountDeleted::NAME,
            WebhookEvent::MessageReported => MessageReported::NAME,
            WebhookEvent::SanctionIssued => SanctionIssued::NAME,
            WebhookEvent::SeasonClosed => SeasonClosed::NAME,
            WebhookEvent::UploadReady => UploadReady::NAME,
            WebhookEvent::UploadRejected => UploadRejected::NAME,
        }
    }
}

/// `POST /v1/admin/webhooks`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where deliveries are POSTed: `https://`, a host that resolves to public addresses only,
    /// no credentials or fragment, at most 2048 characters. (`http://` and loopback or private
    /// hosts only with `WEBHOOK_ALLOW_LOCAL_TARGETS`, for local testing.)
    #[schema(max_length = 2048, example = "https://hooks.example.com/guildhall")]
    pub url: String,
    /// The events to deliver: 1 to 7 distinct names, or `["*"]` for every event.
    #[schema(min_items = 1, max_items = 7)]
    pub events: Vec<WebhookEvent>,
    /// The HMAC-SHA256 key deliveries are signed with: 24 to 256 printable ASCII characters
    /// without spaces (`openssl rand -hex 32`). Never answered back.
    #[schema(min_length = 24, max_length = 256, pattern = "^[!-~]{24,256}$")]
    pub secret: String,
    /// A note for operators, at most 200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    pub description: Option<String>,
}

/// A webhook (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// Its id.
    pub id: String,
    /// Where deliveries go.
    pub url: String,
    /// The events it takes.
    pub events: Vec<String>,
    /// The operator's note.
    pub description: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl From<WebhookRow> for WebhookView {
    fn from(row: WebhookRow) -> Self {
        WebhookView {
            id: row.id,
            url: row.url,
            events: row.events,
            description: row.description,
            created_at: platform::time::rfc3339(row.created_at),
        }
    }
}

/// A page of webhooks.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookPage {
    /// Newest first.
    pub webhooks: Vec<WebhookView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not delivered yet: due at `next_attempt_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Parked after its last attempt failed; redeliver it once the receiver is fixed.
    Failed,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// One event's delivery to one webhook.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    /// Its id (the `Guildhall-Delivery-Id` header).
    pub id: String,
    /// The event's id (`Guildhall-Event-Id`): the same on every attempt and redelivery.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub state: DeliveryState,
    /// Attempts made (since the last redelivery).
    pub attempts: i64,
    /// RFC 3339, while pending: when the next attempt is due.
    pub next_attempt_at: Option<String>,
    /// The status the receiver last answered, if it answered.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once delivered.
    pub delivered_at: Option<String>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(row: DeliveryRow) -> Self {
        let state = match row.state.as_str() {
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            _ => DeliveryState::Pending,
        };
        DeliveryView {
            id: row.id,
            event_id: row.event_id,
            event_type: row.event_type,
            state,
            attempts: row.attempts,
            next_attempt_at: (state == DeliveryState::Pending).then(|| platform::time::rfc3339(row.next_at)),
            last_status: row.last_status,
            last_error: row.last_error,
            created_at: platform::time::rfc3339(row.created_at),
            delivered_at: row.delivered_at.map(platform::time::rfc3339),
        }
    }
}

/// A page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/admin/webhooks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Query of `GET /v1/admin/webhooks/{id}/deliveries`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only deliveries in this state (`failed`: the parked ones).
    pub state: Option<DeliveryState>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn limit(value: Option<i64>) -> ApiResult<i64> {
    let limit = value.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    Ok(limit)
}

/// Cursors and ids are UUIDs; anything else is no page of ours.
fn cursor(value: Option<&str>) -> ApiResult<Option<&str>> {
    match value {
        Some(c) if uuid::Uuid::try_parse(c).is_err() => Err(ApiError::invalid("cursor", "not a cursor of this list")),
        other => Ok(other),
    }
}

fn webhook_not_found() -> ApiError {
    ApiError::NotFound("no such webhook".into())
}

/// The webhook `id`, or 404.
async fn existing(state: &WebhooksState, id: &str) -> ApiResult<WebhookRow> {
    if uuid::Uuid::try_parse(id).is_err() {
        return Err(webhook_not_found());
    }
    store::get(&state.db, id).await?.ok_or_else(webhook_not_found)
}

/// Checks the events: known names, no repeats, and `*` alone. Returns their names.
fn check_events(events: &[WebhookEvent]) -> ApiResult<Vec<String>> {
    if events.is_empty() || events.len() > WebhookEvent::ALL.len() - 1 {
        return Err(ApiError::invalid("events", "events must name 1 to 7 event types, or be [\"*\"]"));
    }
    if events.contains(&WebhookEvent::All) && events.len() > 1 {
        return Err(ApiError::invalid("events", "\"*\" takes every event; list it alone"));
    }
    let mut names: Vec<String> = events.iter().map(|e| e.name().to_owned()).collect();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    if names.len() != count {
        return Err(ApiError::invalid("events", "events must not repeat a name"));
    }
    Ok(names)
}

fn check_secret(secret: &str) -> ApiResult<()> {
    if !SECRET_CHARS.contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid("secret", "secret must be 24 to 256 printable ASCII characters without spaces"));
    }
    Ok(())
}

fn check_description(description: Option<&str>) -> ApiResult<Option<String>> {
    let Some(text) = description.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(None) };
    if text.chars().count() > MAX_DESCRIPTION_CHARS || text.chars().any(char::is_control) {
        return Err(ApiError::invalid("description", "description must be at most 200 characters, without control characters"));
    }
    Ok(Some(text.to_owned()))
}

/// A refused URL: 400 `invalid_request` for one that is not a URL Guildhall posts to or does not
/// resolve, 400 `url_not_allowed` for one that points into a private network or at a metadata
/// service.
fn url_refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Address { .. } => ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            code: "url_not_allowed",
            message: refusal.to_string(),
            field: Some("url".into()),
        },
        other => ApiError::invalid("url", other.to_string()),
    }
}

/// Registers a webhook (scope `webhooks`). Its host is resolved now and must reach public addresses
/// only (and again at every delivery). The secret is never answered back.
#[utoipa::path(post, path = "/v1/admin/webhooks", tag = "webhooks", security(("bearer" = [])), request_body = CreateWebhook,
    responses((status = 201, body = WebhookView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `webhooks`", body = ErrorBody), (status = 409, body = ErrorBody, description = "`too_many_webhooks`: 100 exist")))]
#[tracing::instrument(skip_all)]
pub async fn create_webhook(
    State(state): State<WebhooksState>,
    admin: Admin,
    Json(req): Json<CreateWebhook>,
) -> ApiResult<impl IntoResponse> {
    admin.require(Scope::Webhooks)?;
    let policy = state.policy();
    let url = policy.parse(&req.url).map_err(url_refused)?;
    let events = check_events(&req.events)?;
    check_secret(&req.secret)?;
    let description = check_description(req.description.as_deref())?;
    let host = url.host_str().unwrap_or_default().to_owned();
    policy.resolve(&host).await.map_err(url_refused)?;
    if store::count(&state.db).await? >= MAX_WEBHOOKS {
        return Err(ApiError::Conflict {
            code: "too_many_webhooks",
            message: format!("at most {MAX_WEBHOOKS} webhooks; delete one first"),
        });
    }
    let id = uuid::Uuid::now_v7().to_string();
    let secret = Secret::new(req.secret);
    let created_at = now_millis();
    let new = NewWebhook { id: &id, url: url.as_str(), events: &events, secret: &secret, description: description.as_deref(), created_at };
    store::insert(&state.db, &new, &admin, &host).await?;
    tracing::info!(webhook_id = id, host, events = events.join(","), "webhook registered");
    let row = WebhookRow { id, url: url.to_string(), events, description, created_at };
    Ok((StatusCode::CREATED, Json(WebhookView::from(row))))
}

/// Lists webhooks, newest first (scope `webhooks`).
#[utoipa::path(get, path = "/v1/admin/webhooks", tag = "webhooks", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = WebhookPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "`insufficient_scope`: the key lacks `webhooks`", body = ErrorBody)))]
pub async fn list_webhooks(
    State(state): State<WebhooksState>,
    admin: Admin,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<WebhookPage>> {
    admin.require(Scope::Webhooks)?;
    let limit = limit(query.limit)?;
    let rows = store::list(&state.db, cursor(query.cursor.as_deref())?, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|w| w.id.clone())).flatten();
    Ok(Json(WebhookPage { webhooks: rows.into_iter().map(WebhookView::from).collect(), next_cursor }))
}

/// One webhook (scope `webhooks`).
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 200, body = WebhookView), (status = 401, body = ErrorBody), (status = 403, description = "`insufficient_scope`: the key lacks `webhooks`", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_webhook(State(state): State<WebhooksState>, admin: Admin, Path(id): Path<String>) -> ApiResult<Json<WebhookView>> {
    admin.require(Scope::Webhooks)?;
    Ok(Json(existing(&state, &id).await?.into()))
}

/// Deletes a webhook and its deliveries, pending ones included (scope `webhooks`).
#[utoipa::path(delete, path = "/v1/admin/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, description = "`insufficient_scope`: the key lacks `webhooks`", body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(webhook_id = id))]
pub async fn delete_webhook(State(state): State<WebhooksState>, admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    admin.require(Scope::Webhooks)?;
    if uuid::Uuid::try_parse(&id).is_err() || !store::delete(&state.db, &id, &admin).await? {
        return Err(webhook_not_found());
    }
    tracing::info!("webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A webhook's deliveries, newest first; `?state=failed` lists the parked ones (scope `webhooks`).
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `webhooks`", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_deliveries(
    State(state): State<WebhooksState>,
    admin: Admin,
    Path(id): Path<String>,
    Query(query): Query<DeliveryQuery>,
) -> ApiResult<Json<DeliveryPage>> {
    admin.require(Scope::Webhooks)?;
    let limit = limit(query.limit)?;
    let before = cursor(query.cursor.as_deref())?;
    let webhook = existing(&state, &id).await?;
    let rows = store::deliveries(&state.db, &webhook.id, query.state.map(DeliveryState::as_str), before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|d| d.id.clone())).flatten();
    Ok(Json(DeliveryPage { deliveries: rows.into_iter().map(DeliveryView::from).collect(), next_cursor }))
}

/// Sends a delivered or parked delivery again, with a fresh count of attempts: the same event
/// id and body, signed anew (scope `webhooks`). 409 `delivery_pending` while it is still being tried.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks", security(("bearer" = [])),
    params(("id" = String, Path, description = "Webhook id"), ("delivery_id" = String, Path, description = "Delivery id")),
    responses((status = 202, body = DeliveryView), (status = 401, body = ErrorBody), (status = 403, description = "`insufficient_scope`: the key lacks `webhooks`", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "`delivery_pending`: it is still being tried")))]
#[tracing::instrument(skip_all, fields(webhook_id = id, delivery_id))]
pub async fn redeliver(
    State(state): State<WebhooksState>,
    admin: Admin,
    Path((id, delivery_id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    admin.require(Scope::Webhooks)?;
    let not_found = || ApiError::NotFound("no such delivery".into());
    if uuid::Uuid::try_parse(&id).is_err() || uuid::Uuid::try_parse(&delivery_id).is_err() {
        return Err(not_found());
    }
    match store::redeliver(&state.db, &id, &delivery_id).await?.ok_or_else(not_found)? {
        Ok(row) => {
            state.wake.notify_one();
            let detail = serde_json::json!({ "delivery_id": delivery_id, "event_id": row.event_id });
            platform::audit::record(state.db.pool(), &admin, "webhooks.redeliver", &format!("webhook:{id}"), &detail).await?;
            tracing::info!("webhook delivery redelivered");
            Ok((StatusCode::ACCEPTED, Json(DeliveryView::from(row))))
        }
        Err(_) => Err(ApiError::Conflict { code: "delivery_pending", message: "this delivery is still being tried".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_known_distinct_and_star_is_alone() {
        use WebhookEvent::*;
        assert_eq!(check_events(&[SeasonClosed, AccountCreated]).expect("valid"), ["account.created", "leaderboard.season_closed"]);
        assert_eq!(check_events(&[All]).expect("valid"), ["*"]);
        assert!(check_events(&[]).is_err());
        assert!(check_events(&[All, SeasonClosed]).is_err());
        assert!(check_events(&[SeasonClosed, SeasonClosed]).is_err());
        let parsed: Result<Vec<WebhookEvent>, _> = serde_json::from_str(r#"["upload.completed"]"#);
        assert!(parsed.is_err(), "an internal event is not offered");
    }

    #[test]
    fn secrets_have_bounds() {
        assert!(check_secret(&"s".repeat(24)).is_ok());
        assert!(check_secret(&"s".repeat(23)).is_err());
        assert!(check_secret(&"s".repeat(257)).is_err());
        assert!(check_secret("with a space in it, twenty-four+").is_err());
        assert!(check_secret("ünïcödé-is-not-ascii-0123456789").is_err());
    }
}
