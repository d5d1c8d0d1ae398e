//! Friends and blocks: requests, accepts, removals, blocks, and their lists.
//!
//! Every change locks the two players' account rows first (`store::lock_pair`), then reads and
//! writes their relation and records its event in the same transaction, so the caps hold under
//! concurrent requests and two players asking each other at once end up friends, not with two
//! crossed requests.
//!
//! A player the other has blocked cannot send them a request. The answer is 403
//! `request_not_delivered`, the same as when the other has as many requests waiting as they may
//! have: the sender cannot tell a block from a full inbox. A player who blocked the other is told
//! so (409 `player_blocked`): they know it already.
//!
//! The friends list carries each friend's online status (`platform::online`, set by chat). Request
//! lists do not: a request to a stranger must not tell when they play. A block ends any friendship
//! and request between the two, so blocked players never see each other's status here.

pub mod store;

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use platform::auth::Player;
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::events::{BlockAdded, BlockRemoved, FriendAccepted, FriendRemoved, FriendRequested};
use platform::http::{Json, Query};
use platform::ratelimit::Limit;
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use self::store::LinkState;
use crate::AccountsState;

/// The friends and blocks routes.
pub fn routes() -> Router<AccountsState> {
    Router::new()
        .route("/v1/friends", get(list_friends))
        .route("/v1/friends/{account_id}", post(befriend).delete(unfriend))
        .route("/v1/blocks", get(list_blocks))
        .route("/v1/blocks/{account_id}", post(block).delete(unblock))
}

/// A relation with another player, as `POST /v1/friends/{account_id}` answers it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Friendship {
    /// The other player.
    pub account_id: String,
    /// `friends`, or `outgoing` (your request waits for their answer).
    pub state: String,
    /// When the request was made, or accepted (RFC 3339).
    pub since: String,
}

/// One player of a friends list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Friend {
    /// Their account.
    pub account_id: String,
    /// The name they show (display name, else username).
    pub name: String,
    /// `friends`, `incoming` or `outgoing`, as asked.
    pub state: String,
    /// Friends since, or the request's time (RFC 3339).
    pub since: String,
    /// Whether they have a chat socket open now: on the `friends` list only, absent on the
    /// request lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

/// A page of `GET /v1/friends`.
#[derive(Debug, Serialize, ToSchema)]
pub struct FriendPage {
    /// By account id.
    pub friends: Vec<Friend>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/friends`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FriendQuery {
    /// `friends` (default), `incoming` (requests to you) or `outgoing` (your requests).
    #[param(pattern = "^(friends|incoming|outgoing)$")]
    pub state: Option<String>,
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

/// A blocked player.
#[derive(Debug, Serialize, ToSchema)]
pub struct Blocked {
    /// Their account.
    pub account_id: String,
    /// The name they show (display name, else username).
    pub name: String,
    /// When you blocked them (RFC 3339).
    pub since: String,
}

/// A page of `GET /v1/blocks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlockPage {
    /// By account id.
    pub blocks: Vec<Blocked>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/blocks`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BlockQuery {
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")]
    pub cursor: Option<String>,
}

fn no_such_account() -> ApiError {
    ApiError::NotFound("no such account".into())
}

/// The other player of a route: an account id that is not the caller's (400
/// `cannot_target_self`); anything but a UUID is no account (404).
fn other_player<'a>(player: &Player, account_id: &'a str) -> ApiResult<&'a str> {
    if uuid::Uuid::try_parse(account_id).is_err() {
        return Err(no_such_account());
    }
    if account_id == player.account_id {
        return Err(ApiError::client(StatusCode::BAD_REQUEST, "cannot_target_self", "that is your own account"));
    }
    Ok(account_id)
}

/// 403 `request_not_delivered`: the other player blocked you or has too many requests waiting;
/// deliberately one answer for both.
fn not_delivered() -> ApiError {
    ApiError::client(StatusCode::FORBIDDEN, "request_not_delivered", "this player cannot receive a friend request from you now")
}

fn friend_limit(max: u32) -> ApiError {
    ApiError::Conflict { code: "friend_limit_reached", message: format!("a player may have at most {max} friends") }
}

/// Sends a friend request, or accepts the one the other player sent you (then you are friends).
/// Sending again what is already sent, or asking a friend, changes nothing (200).
#[utoipa::path(post, path = "/v1/friends/{account_id}", tag = "social", security(("bearer" = [])),
    params(("account_id" = String, Path, description = "The other player's account id")),
    responses((status = 200, description = "Accepted their request, or nothing to change", body = Friendship),
        (status = 201, description = "Request sent", body = Friendship),
        (status = 400, description = "`cannot_target_self`", body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`request_not_delivered`: they blocked you or have too many requests waiting", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`player_blocked` (you blocked them), `friend_limit_reached`, `too_many_pending_requests`", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn befriend(State(state): State<AccountsState>, player: Player, Path(account_id): Path<String>) -> ApiResult<impl IntoResponse> {
    let me = player.account_id.as_str();
    let other = other_player(&player, &account_id)?;
    let limits = state.social;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    if store::lock_pair(&mut tx, me, other).await? < 2 {
        return Err(no_such_account());
    }
    if store::is_blocked(&mut *tx, me, other).await? {
        return Err(ApiError::Conflict { code: "player_blocked", message: "you blocked this player; unblock them first".into() });
    }
    if store::is_blocked(&mut *tx, other, me).await? {
        return Err(not_delivered());
    }
    let answer = |link: LinkState, since: i64| Friendship {
        account_id: other.to_owned(),
        state: link.as_str().into(),
        since: platform::time::rfc3339(since),
    };
    match store::link(&mut *tx, me, other).await? {
        Some((link @ (LinkState::Friends | LinkState::Outgoing), since)) => Ok((StatusCode::OK, Json(answer(link, since)))),
        Some((LinkState::Incoming, _)) => {
            let max = i64::from(limits.max_friends);
            if store::count_links(&mut *tx, me, LinkState::Friends).await? >= max
                || store::count_links(&mut *tx, other, LinkState::Friends).await? >= max
            {
                return Err(friend_limit(limits.max_friends));
            }
            store::put_link_pair(&mut tx, me, other, LinkState::Friends, now).await?;
            let event =
                FriendAccepted { requester_id: other.to_owned(), accepter_id: me.to_owned(), accepted_at: platform::time::rfc3339(now) };
            platform::events::record(&mut *tx, &event).await?;
            tx.commit().await?;
            tracing::info!(other_id = other, "friend request accepted");
            Ok((StatusCode::OK, Json(answer(LinkState::Friends, now))))
        }
        None => {
            if store::count_links(&mut *tx, me, LinkState::Friends).await? >= i64::from(limits.max_friends) {
                return Err(friend_limit(limits.max_friends));
            }
            let pending = i64::from(limits.max_pending_requests);
            if store::count_links(&mut *tx, me, LinkState::Outgoing).await? >= pending {
                return Err(ApiError::Conflict {
                    code: "too_many_pending_requests",
                    message: format!("at most {pending} of your requests may wait for an answer; withdraw some first"),
                });
            }
            if store::count_links(&mut *tx, other, LinkState::Incoming).await? >= pending {
                return Err(not_delivered());
            }
            // Counted only for requests that would be sent: a repeat or an accept is free.
            let per_hour = Limit::new(limits.friend_requests_per_hour, Duration::from_secs(3600));
            per_hour.hit(&state.cache, &format!("friend-requests:{me}")).await?;
            store::put_link_pair(&mut tx, me, other, LinkState::Outgoing, now).await?;
            let event = FriendRequested { from_id: me.to_owned(), to_id: other.to_owned(), requested_at: platform::time::rfc3339(now) };
            platform::events::record(&mut *tx, &event).await?;
            tx.commit().await?;
            tracing::info!(other_id = other, "friend request sent");
            Ok((StatusCode::CREATED, Json(answer(LinkState::Outgoing, now))))
        }
    }
}

/// Ends a friendship, declines a request you received, or withdraws one you sent. Nothing to end
/// is no error (204).
#[utoipa::path(delete, path = "/v1/friends/{account_id}", tag = "social", security(("bearer" = [])),
    params(("account_id" = String, Path, description = "The other player's account id")),
    responses((status = 204), (status = 400, description = "`cannot_target_self`", body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn unfriend(State(state): State<AccountsState>, player: Player, Path(account_id): Path<String>) -> ApiResult<StatusCode> {
    let me = player.account_id.as_str();
    let other = other_player(&player, &account_id)?;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    if store::lock_pair(&mut tx, me, other).await? < 2 {
        return Err(no_such_account());
    }
    if store::delete_link_pair(&mut *tx, me, other).await? {
        let event = FriendRemoved { account_id: me.to_owned(), other_id: other.to_owned(), removed_at: platform::time::rfc3339(now) };
        platform::events::record(&mut *tx, &event).await?;
        tracing::info!(other_id = other, "friendship or request ended");
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Your friends (with whether each is online now), or the requests you received or sent, a page
/// at a time, by account id.
#[utoipa::path(get, path = "/v1/friends", tag = "social", security(("bearer" = [])), params(FriendQuery),
    responses((status = 200, body = FriendPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn list_friends(
    State(state): State<AccountsState>,
    player: Player,
    Query(query): Query<FriendQuery>,
) -> ApiResult<Json<FriendPage>> {
    let link = match query.state.as_deref() {
        None | Some("friends") => LinkState::Friends,
        Some("incoming") => LinkState::Incoming,
        Some("outgoing") => LinkState::Outgoing,
        Some(_) => return Err(ApiError::invalid("state", "state must be friends, incoming or outgoing")),
    };
    let limit = platform::admin::page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(platform::admin::uuid_cursor).transpose()?;
    let mut rows = store::list_links(state.db.pool(), &player.account_id, link, after, limit + 1).await?;
    let next_cursor = platform::admin::next_cursor(&mut rows, limit, |r| r.account_id.clone());
    let online = if link == LinkState::Friends {
        let ids: Vec<&str> = rows.iter().map(|r| r.account_id.as_str()).collect();
        platform::online::which(&state.cache, &ids).await?.into_iter().map(Some).collect()
    } else {
        vec![None; rows.len()]
    };
    let friends = rows
        .into_iter()
        .zip(online)
        .map(|(r, online)| Friend {
            account_id: r.account_id,
            name: r.name,
            state: link.as_str().into(),
            since: platform::time::rfc3339(r.since),
            online,
        })
        .collect();
    Ok(Json(FriendPage { friends, next_cursor }))
}

/// Blocks a player: any friendship or request between you ends, neither can send the other a
/// request, DM the other or see the other's presence in chat. Blocking again changes nothing (200).
#[utoipa::path(post, path = "/v1/blocks/{account_id}", tag = "social", security(("bearer" = [])),
    params(("account_id" = String, Path, description = "The player to block")),
    responses((status = 200, description = "Already blocked", body = Blocked), (status = 201, body = Blocked),
        (status = 400, description = "`cannot_target_self`", body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "`block_limit_reached`", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn block(State(state): State<AccountsState>, player: Player, Path(account_id): Path<String>) -> ApiResult<impl IntoResponse> {
    let me = player.account_id.as_str();
    let other = other_player(&player, &account_id)?;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    if store::lock_pair(&mut tx, me, other).await? < 2 {
        return Err(no_such_account());
    }
    let name = crate::store::account_by_id(&mut *tx, other).await?.ok_or_else(no_such_account)?.public_name().to_owned();
    if let Some(since) = store::block_since(&mut *tx, me, other).await? {
        return Ok((StatusCode::OK, Json(Blocked { account_id: other.to_owned(), name, since: platform::time::rfc3339(since) })));
    }
    let max = state.social.max_blocks;
    if store::count_blocks(&mut *tx, me).await? >= i64::from(max) {
        return Err(ApiError::Conflict { code: "block_limit_reached", message: format!("a player may block at most {max} players") });
    }
    store::insert_block(&mut *tx, me, other, now).await?;
    if store::delete_link_pair(&mut *tx, me, other).await? {
        let event = FriendRemoved { account_id: me.to_owned(), other_id: other.to_owned(), removed_at: platform::time::rfc3339(now) };
        platform::events::record(&mut *tx, &event).await?;
    }
    let event = BlockAdded { blocker_id: me.to_owned(), blocked_id: other.to_owned(), blocked_at: platform::time::rfc3339(now) };
    platform::events::record(&mut *tx, &event).await?;
    tx.commit().await?;
    tracing::info!(other_id = other, "player blocked");
    Ok((StatusCode::CREATED, Json(Blocked { account_id: other.to_owned(), name, since: platform::time::rfc3339(now) })))
}

/// Lifts a block. Nothing to lift is no error (204).
#[utoipa::path(delete, path = "/v1/blocks/{account_id}", tag = "social", security(("bearer" = [])),
    params(("account_id" = String, Path, description = "The blocked player")),
    responses((status = 204), (status = 400, description = "`cannot_target_self`", body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn unblock(State(state): State<AccountsState>, player: Player, Path(account_id): Path<String>) -> ApiResult<StatusCode> {
    let me = player.account_id.as_str();
    let other = other_player(&player, &account_id)?;
    let now = now_millis();
    let mut tx = state.db.begin().await?;
    if store::lock_pair(&mut tx, me, other).await? < 2 {
        return Err(no_such_account());
    }
    if store::delete_block(&mut *tx, me, other).await? {
        let event = BlockRemoved { blocker_id: me.to_owned(), blocked_id: other.to_owned(), unblocked_at: platform::time::rfc3339(now) };
        platform::events::record(&mut *tx, &event).await?;
        tracing::info!(other_id = other, "block lifted");
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The players you blocked, a page at a time, by account id.
#[utoipa::path(get, path = "/v1/blocks", tag = "social", security(("bearer" = [])), params(BlockQuery),
    responses((status = 200, body = BlockPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(account_id = player.account_id))]
pub async fn list_blocks(
    State(state): State<AccountsState>,
    player: Player,
    Query(query): Query<BlockQuery>,
) -> ApiResult<Json<BlockPage>> {
    let limit = platform::admin::page_limit(query.limit)?;
    let after = query.cursor.as_deref().map(platform::admin::uuid_cursor).transpose()?;
    let mut rows = store::list_blocks(state.db.pool(), &player.account_id, after, limit + 1).await?;
    let next_cursor = platform::admin::next_cursor(&mut rows, limit, |r| r.account_id.clone());
    let blocks =
        rows.into_iter().map(|r| Blocked { account_id: r.account_id, name: r.name, since: platform::time::rfc3339(r.since) }).collect();
    Ok(Json(BlockPage { blocks, next_cursor }))
}
