//! The DM inbox: each player's direct conversations, newest first, with the other player, the
//! last message and an unread count; and the `dm` notification of a recipient who is not in the
//! conversation.
//!
//! Both are written in the transaction that stores the direct message: the message writer's
//! group commit (`crate::writer`), which calls `record` for each direct message of its batch. The
//! message, both players' conversation rows and the notification exist together or not at all,
//! so a process that dies mid-send loses none of them without losing the message too (which
//! was then never acknowledged). The inbox reads only those rows (one per conversation), never
//! the messages.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use platform::auth::Player;
use platform::db::{Tx, now_millis};
use platform::error::ErrorBody;
use platform::http::{Json, Query};
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::ChatState;
use crate::api::MessageView;
use crate::channel::Channel;
use crate::notifications::Kind;
use crate::store::{self, ConversationRow, MessageRow, NewNotification, NotificationRow};

/// The most unread messages a read mark counts (`unread_count` says at most this many after a
/// read mark short of the newest message; the next message counts on from there).
pub const MAX_UNREAD_COUNTED: i64 = 1000;

/// What a direct message writes beside itself, in its batch's transaction (`record`).
#[derive(Debug)]
pub struct DirectWrites {
    /// The sender's account id.
    sender: String,
    /// The other player's.
    recipient: String,
    /// The recipient's `dm` notification (its JSON data), when they are not in the conversation.
    notification: Option<String>,
}

/// Stores direct message `row` sent in `channel` (a `dm:`) through the message writer, with both
/// players' conversations and, when the recipient is not in the conversation on any instance,
/// their `dm` notification, in the transaction of the message's batch; then pushes the
/// notification. Answers once that has committed, and fails as the batch did.
pub(crate) async fn send_direct(state: &ChatState, channel: &Channel, row: MessageRow) -> ApiResult<MessageRow> {
    let Channel::Direct(a, b) = channel else {
        return Err(ApiError::invalid("channel", "not a direct conversation"));
    };
    let sender = row.sender_id.clone().unwrap_or_default();
    let recipient = if sender == *a { b } else { a };
    // Presence is what the fan-out delivers to: a recipient in the channel sees the message
    // live. When presence cannot be read (Redis down), notify rather than risk losing it.
    let present = match state.presence.list(&row.channel_id, 2, &std::collections::HashSet::new()).await {
        Ok((_, players)) => players.iter().any(|(account, _)| account == recipient),
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "presence unreadable; notifying the recipient");
            false
        }
    };
    let notification = (!present)
        .then(|| json!({"channel": row.channel_id, "sender_id": sender, "sender_name": row.sender_name, "message_id": row.id}).to_string());
    let direct = DirectWrites { sender, recipient: recipient.clone(), notification };
    let (row, notification) = state.messages.store_direct(row, direct).await?;
    if let Some(notification) = notification {
        state.cap_stream(recipient).await;
        state.push_notification(recipient, notification).await;
    }
    Ok(row)
}

/// Writes what direct message `row` (already inserted in `tx`) changes: both players'
/// conversation rows, and the recipient's `dm` notification when `direct` has one (one unread per
/// conversation: a later message updates it). The notification as stored, if any.
pub(crate) async fn record(tx: &mut Tx, row: &MessageRow, direct: &DirectWrites) -> anyhow::Result<Option<NotificationRow>> {
    store::record_direct(tx, row, &direct.sender, &direct.recipient).await?;
    let Some(data) = &direct.notification else { return Ok(None) };
    let n = NewNotification {
        account_id: &direct.recipient,
        kind: Kind::Direct.as_str(),
        source: &row.id,
        thread: Some(&row.channel_id),
        actor_id: Some(&direct.sender),
        data: data.clone(),
        created_at: row.created_at,
    };
    store::upsert_notification(tx, &n).await
}

/// The inbox routes.
pub fn routes() -> Router<ChatState> {
    Router::new().route("/v1/chat/conversations", get(conversations)).route("/v1/chat/conversations/{id}/read", post(mark_read))
}

/// One of the caller's direct conversations.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    /// The channel, `dm:<a>:<b>`.
    pub channel: String,
    /// The other player's account id.
    pub other_id: String,
    /// Their name as their last message in it showed it; null until they wrote ("deleted
    /// player" once their account was erased).
    pub other_name: Option<String>,
    /// The newest message; null when an operator deleted it.
    pub last_message: Option<MessageView>,
    /// Messages from the other player after the caller's read mark.
    pub unread_count: i64,
    /// The newest message the caller read (sending one reads the conversation); null when none.
    pub read_up_to: Option<String>,
}

impl From<ConversationRow> for ConversationView {
    fn from(row: ConversationRow) -> Self {
        ConversationView {
            channel: row.channel_id,
            other_id: row.other_id,
            other_name: row.other_name,
            last_message: row.last_message.map(MessageView::from),
            unread_count: row.unread_count,
            read_up_to: row.read_up_to,
        }
    }
}

/// Paging of the inbox.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationsQuery {
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// A page of the inbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationPage {
    /// Newest message first.
    pub conversations: Vec<ConversationView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The caller's direct conversations, the one with the newest message first.
#[utoipa::path(get, path = "/v1/chat/conversations", tag = "chat", security(("bearer" = [])), params(ConversationsQuery),
    responses((status = 200, body = ConversationPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn conversations(
    State(state): State<ChatState>,
    player: Player,
    Query(query): Query<ConversationsQuery>,
) -> ApiResult<Json<ConversationPage>> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    let before = match &query.cursor {
        Some(cursor) => Some(
            uuid::Uuid::try_parse(cursor)
                .map_err(|_| ApiError::invalid("cursor", "cursor must be a next_cursor of this list"))?
                .hyphenated()
                .to_string(),
        ),
        None => None,
    };
    let rows = store::conversations(state.db.pool(), &player.account_id, before.as_deref(), limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|c| c.last_message_id.clone())).flatten();
    Ok(Json(ConversationPage { conversations: rows.into_iter().map(ConversationView::from).collect(), next_cursor }))
}

/// `POST /v1/chat/conversations/{id}/read`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadConversation {
    /// A message of the conversation: read up to it (inclusive). Absent: up to the newest.
    #[schema(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub up_to: Option<String>,
}

/// The direct conversation in a path, for the OpenAPI document.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConversationPath {
    /// `dm:<account>:<account>`, the two ids in ascending order.
    #[param(pattern = r"^dm:[A-Za-z0-9-]{1,64}:[A-Za-z0-9-]{1,64}$")]
    pub id: String,
}

/// Marks one of the caller's conversations read, up to a message of it or its newest; a mark
/// never moves back. Marks its `dm` notification read too.
#[utoipa::path(post, path = "/v1/chat/conversations/{id}/read", tag = "chat", security(("bearer" = [])), request_body = ReadConversation,
    params(ConversationPath),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`forbidden`: a conversation between two other players", body = ErrorBody),
        (status = 404, description = "`not_found`: no message in this conversation yet, or `up_to` is not one of its messages", body = ErrorBody)))]
pub async fn mark_read(
    State(state): State<ChatState>,
    player: Player,
    Path(id): Path<String>,
    Json(req): Json<ReadConversation>,
) -> ApiResult<StatusCode> {
    let channel = Channel::parse(&id)?;
    let Channel::Direct(a, b) = &channel else {
        return Err(ApiError::invalid("channel", "only direct conversations (dm:...) have read marks"));
    };
    let account = &player.account_id;
    if account != a && account != b {
        return Err(ApiError::Forbidden("this conversation is between two other players".into()));
    }
    let channel_id = channel.id();
    let up_to = match &req.up_to {
        Some(up_to) => {
            let not_found = || ApiError::NotFound("up_to is not a message of this conversation".into());
            let id = uuid::Uuid::try_parse(up_to).map_err(|_| not_found())?.hyphenated().to_string();
            let message = store::message_by_id(state.db.pool(), &id).await?.ok_or_else(not_found)?;
            if message.channel_id != channel_id {
                return Err(not_found());
            }
            Some(id)
        }
        None => None,
    };
    let mut tx = state.db.begin().await?;
    if !store::mark_conversation_read(&mut tx, account, &channel_id, up_to.as_deref(), MAX_UNREAD_COUNTED).await? {
        return Err(ApiError::NotFound("no message in this conversation yet".into()));
    }
    store::mark_thread_read(&mut *tx, account, &channel_id, now_millis()).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
