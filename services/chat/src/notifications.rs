//! Each player's notification stream: friend requests and acceptances, direct messages in
//! conversations the player was not in, and season results where they placed.
//!
//! A notification is stored first (`chat_notifications`), then pushed to every chat socket of its
//! player on every instance as `{"type": "notification", "notification": {...}}` through the
//! hub's notices; a player who is offline finds it in `GET /v1/notifications`. The push is best
//! effort (pub/sub delivers at most once): the list is the record.
//!
//! Kept per player: the newest `MAX_PER_PLAYER`, none older than `MAX_AGE` (pruned every
//! `PRUNE_EVERY` by every instance, and hidden from the list once that old). The unread count is
//! a count over at most that many rows of one player.

use platform::shutdown::Shutdown;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use platform::auth::Player;
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::events::{FriendAccepted, FriendRequested, SeasonClosed};
use platform::http::{Json, Query};
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use crate::ChatState;
use crate::hub::Notice;
use crate::store::{self, NewNotification, NotificationRow, ReadMark};

/// Notifications kept per player: a new one beyond it deletes the oldest.
pub const MAX_PER_PLAYER: i64 = 200;
/// Notifications older than this are deleted (and no longer listed).
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often each instance deletes the notifications past `MAX_AGE`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Rows deleted per statement while pruning, so that no statement holds locks for long.
const PRUNE_BATCH: i64 = 1000;
/// Most ids one read mark may name.
pub const MAX_READ_IDS: usize = 100;

/// The kinds of notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Someone asked to be friends (`social.friend_requested`).
    FriendRequest,
    /// Someone accepted the player's request (`social.friend_accepted`).
    FriendAccepted,
    /// A direct message in a conversation the player had not joined.
    Direct,
    /// The player placed in a season that closed (`leaderboard.season_closed`).
    SeasonResult,
}

impl Kind {
    /// Its name on the wire and in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FriendRequest => "friend_request",
            Kind::FriendAccepted => "friend_accepted",
            Kind::Direct => "dm",
            Kind::SeasonResult => "season_result",
        }
    }
}

/// A notification as its player sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NotificationView {
    /// Server id (UUIDv7, time-ordered); a `dm` notification keeps its id while later messages
    /// of its conversation update it.
    pub id: String,
    /// `friend_request`, `friend_accepted`, `dm` or `season_result`.
    #[schema(pattern = "^(friend_request|friend_accepted|dm|season_result)$")]
    pub kind: String,
    /// RFC 3339, server time.
    pub created_at: String,
    /// Whether the player marked it read.
    pub read: bool,
    /// By kind: `friend_request` and `friend_accepted`: `{account_id}` (who asked, who
    /// accepted); `dm`: `{channel, sender_id, sender_name, message_id}` (the newest message);
    /// `season_result`: `{board_id, season, rank, score, subscore, record_count, ended_at}`.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

impl From<NotificationRow> for NotificationView {
    fn from(row: NotificationRow) -> Self {
        NotificationView {
            id: row.id,
            kind: row.kind,
            created_at: platform::time::rfc3339(row.created_at),
            read: row.read_at.is_some(),
            // Written by this module as JSON; a row that is not stays visible, without data.
            data: serde_json::from_str(&row.data).unwrap_or_else(|_| json!({})),
        }
    }
}

/// The oldest a listed notification may be made (Unix ms).
fn listed_since() -> i64 {
    now_millis().saturating_sub(i64::try_from(MAX_AGE.as_millis()).unwrap_or(i64::MAX))
}

impl ChatState {
    /// Stores `notifications` in one transaction (each unless its source was seen before), then
    /// caps the streams it added to and pushes what it stored to their players' sockets.
    pub async fn notify(&self, notifications: &[NewNotification<'_>]) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let mut stored = Vec::new();
        for n in notifications {
            if let Some(row) = store::upsert_notification(&mut tx, n).await? {
                stored.push((n.account_id, row));
            }
        }
        tx.commit().await?;
        for (account_id, row) in &stored {
            self.cap_stream(account_id).await;
            self.push_notification(account_id, row.clone()).await;
        }
        Ok(stored.len())
    }

    /// Deletes the player's notifications beyond `MAX_PER_PLAYER`. After the insert's commit, not
    /// in its transaction: two transactions adding to one stream at once would each see the other's
    /// row missing and leave one too many, whereas the later of two commits is followed by a cap
    /// that sees both. One that fails (or a crash before it) leaves a row more until the next.
    pub async fn cap_stream(&self, account_id: &str) {
        if let Err(err) = store::cap_notifications(self.db.pool(), account_id, MAX_PER_PLAYER).await {
            tracing::warn!(error = format!("{err:#}"), "capping a notification stream failed; the next notification caps it");
        }
    }

    /// Pushes a stored notification to every socket of its player, on every instance. A push
    /// that fails (Redis down) is logged: the notification waits in the list.
    pub async fn push_notification(&self, account_id: &str, row: NotificationRow) {
        let frame = json!({"type": "notification", "notification": NotificationView::from(row)}).to_string();
        if let Err(err) = self.hub.notify(&Notice::Deliver { account_id: account_id.to_owned(), frame }).await {
            tracing::warn!(error = format!("{err:#}"), "pushing a notification failed; it stays listed");
        }
    }

    /// Deletes the notifications past `MAX_AGE` every `PRUNE_EVERY`, until `phase` stops (the
    /// process shuts down, or its region turns read-only: `platform::region`).
    pub(crate) async fn prune_notifications(&self, phase: &Shutdown) {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                () = phase.stopped() => return,
                _ = every.tick() => {}
            }
            let before = listed_since();
            loop {
                match store::prune_notifications(self.db.pool(), before, PRUNE_BATCH).await {
                    Ok(deleted) if deleted == PRUNE_BATCH as u64 => continue,
                    Ok(deleted) => {
                        if deleted > 0 {
                            tracing::info!(deleted, "pruned old notifications");
                        }
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "pruning notifications failed; trying again later");
                        break;
                    }
                }
            }
        }
    }
}

/// The notification routes.
pub fn routes() -> Router<ChatState> {
    Router::new().route("/v1/notifications", get(list)).route("/v1/notifications/read", post(mark_read))
}

/// Paging of the notifications.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotificationsQuery {
    /// Only unread ones.
    pub unread: Option<bool>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// A page of notifications.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationPage {
    /// Newest first.
    pub notifications: Vec<NotificationView>,
    /// How many of the player's notifications are unread, all pages together.
    pub unread_count: i64,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn notification_id(field: &str, id: &str) -> ApiResult<String> {
    uuid::Uuid::try_parse(id)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::invalid(field, format!("{field} must be a notification id")))
}

/// The caller's notifications, newest first (kept `MAX_PER_PLAYER` at most, 30 days at most),
/// with how many are unread.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", security(("bearer" = [])), params(NotificationsQuery),
    responses((status = 200, body = NotificationPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<ChatState>,
    player: Player,
    Query(query): Query<NotificationsQuery>,
) -> ApiResult<Json<NotificationPage>> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    let before = query.cursor.as_deref().map(|c| notification_id("cursor", c)).transpose()?;
    let since = listed_since();
    let account = &player.account_id;
    let rows = store::notifications(state.db.pool(), account, since, query.unread.unwrap_or(false), before.as_deref(), limit).await?;
    let unread_count = store::unread_notifications(state.db.pool(), account, since).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|n| n.id.clone())).flatten();
    Ok(Json(NotificationPage { notifications: rows.into_iter().map(NotificationView::from).collect(), unread_count, next_cursor }))
}

/// `POST /v1/notifications/read`: exactly one of `ids` and `up_to`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// These notifications (1 to 100 ids).
    #[schema(min_items = 1, max_items = 100)]
    pub ids: Option<Vec<String>>,
    /// Every notification up to this one (inclusive): the newest the client has shown.
    #[schema(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub up_to: Option<String>,
}

/// What a read mark did.
#[derive(Debug, Serialize, ToSchema)]
pub struct MarkedRead {
    /// Notifications that were unread and are read now.
    pub marked: u64,
    /// How many are still unread.
    pub unread_count: i64,
}

/// Marks notifications read: by `ids` (others' ids and unknown ones are ignored), or all `up_to`
/// one.
#[utoipa::path(post, path = "/v1/notifications/read", tag = "notifications", security(("bearer" = [])), request_body = MarkRead,
    responses((status = 200, body = MarkedRead), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn mark_read(State(state): State<ChatState>, player: Player, Json(req): Json<MarkRead>) -> ApiResult<Json<MarkedRead>> {
    let ids;
    let up_to;
    let mark = match (&req.ids, &req.up_to) {
        (Some(given), None) => {
            if given.is_empty() || given.len() > MAX_READ_IDS {
                return Err(ApiError::invalid("ids", format!("ids must hold 1 to {MAX_READ_IDS} notification ids")));
            }
            ids = given.iter().map(|id| notification_id("ids", id)).collect::<ApiResult<Vec<_>>>()?;
            ReadMark::Ids(&ids)
        }
        (None, Some(given)) => {
            up_to = notification_id("up_to", given)?;
            ReadMark::UpTo(&up_to)
        }
        _ => return Err(ApiError::invalid("ids", "send exactly one of ids and up_to")),
    };
    let account = &player.account_id;
    let marked = store::mark_notifications_read(state.db.pool(), account, &mark, now_millis()).await?;
    let unread_count = store::unread_notifications(state.db.pool(), account, listed_since()).await?;
    Ok(Json(MarkedRead { marked, unread_count }))
}

/// `social.friend_requested`: the player asked is notified (once per event).
pub(crate) async fn friend_requested(state: &ChatState, event_id: &str, event: &FriendRequested) -> anyhow::Result<()> {
    notify_of_player(state, event_id, Kind::FriendRequest, &event.to_id, &event.from_id).await
}

/// `social.friend_accepted`: the player who asked is notified (once per event).
pub(crate) async fn friend_accepted(state: &ChatState, event_id: &str, event: &FriendAccepted) -> anyhow::Result<()> {
    notify_of_player(state, event_id, Kind::FriendAccepted, &event.requester_id, &event.accepter_id).await
}

/// Notifies `account_id` of something `other_id` did (a friend kind: `data` is `{account_id}`,
/// the other player's), once per event.
async fn notify_of_player(state: &ChatState, event_id: &str, kind: Kind, account_id: &str, other_id: &str) -> anyhow::Result<()> {
    let n = NewNotification {
        account_id,
        kind: kind.as_str(),
        source: event_id,
        thread: None,
        actor_id: Some(other_id),
        data: json!({"account_id": other_id}).to_string(),
        created_at: now_millis(),
    };
    state.notify(&[n]).await.map(drop)
}

/// `leaderboard.season_closed`: each player in its `top` is notified of their place (once per
/// event), all in one transaction.
pub(crate) async fn season_closed(state: &ChatState, event_id: &str, event: &SeasonClosed) -> anyhow::Result<usize> {
    let now = now_millis();
    let notifications: Vec<NewNotification<'_>> = event
        .top
        .iter()
        .map(|placing| NewNotification {
            account_id: &placing.owner_id,
            kind: Kind::SeasonResult.as_str(),
            source: event_id,
            thread: None,
            actor_id: None,
            data: json!({
                "board_id": event.board_id,
                "season": event.season,
                "rank": placing.rank,
                "score": placing.score,
                "subscore": placing.subscore,
                "record_count": event.record_count,
                "ended_at": event.ended_at,
            })
            .to_string(),
            created_at: now,
        })
        .collect();
    state.notify(&notifications).await
}
