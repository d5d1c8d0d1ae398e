//! Guildhall leaderboards: boards configured through the admin API, score submission with
//! operators and bounds, and ranks served from Redis sorted sets (or an in-memory index on
//! embedded defaults) over the database, which stays the source of truth.

pub mod admin;
pub mod api;
pub mod board;
pub mod index;
pub mod repair;
pub mod schedule;
pub mod seasons;
pub mod store;
pub mod writer;

use axum::Router;
use axum::extract::FromRef;
use platform::auth::{AdminKey, Authenticator};
use platform::db::Database;
use platform::events::{AccountDeleted, FriendAccepted, FriendRemoved, Subscription};
use utoipa::OpenApi;

use crate::index::RankIndex;

/// Everything the leaderboard handlers need, behind one reference count: axum clones the state
/// for every request. Its parts are reached through `Deref`.
#[derive(Clone)]
pub struct LeaderboardState(std::sync::Arc<LeaderboardParts>);

impl LeaderboardState {
    /// The state over `parts`.
    pub fn new(parts: LeaderboardParts) -> Self {
        Self(std::sync::Arc::new(parts))
    }
}

impl std::ops::Deref for LeaderboardState {
    type Target = LeaderboardParts;

    fn deref(&self) -> &LeaderboardParts {
        &self.0
    }
}

/// What [`LeaderboardState`] holds.
pub struct LeaderboardParts {
    /// Boards and records (the source of truth).
    pub db: Database,
    /// Ranks.
    pub index: RankIndex,
    /// Verifies player tokens.
    pub auth: Authenticator,
    /// The server key.
    pub admin_key: AdminKey,
    /// Recently read boards.
    pub boards: BoardCache,
    /// Writes score submissions in group commits.
    pub writer: writer::Writer,
    /// `SOCIAL_MAX_FRIENDS`: the most friends a `records?friends=true` query reads.
    pub max_friends: u32,
}

/// Boards read in the last second, so that the hot paths (submit, rank) skip a database read.
/// A season change is never served stale: a cached board whose season has run out is reloaded
/// (see `LeaderboardState::current`). What an operator changes (`PATCH`: bounds, reset; a
/// deletion; a season closed by hand) is forgotten at once on the instance that changed it and
/// holds on the others within this second; the sort order and operator never change.
#[derive(Clone, Default)]
pub struct BoardCache(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, board::Board)>>>);

impl BoardCache {
    const TTL: std::time::Duration = std::time::Duration::from_secs(1);

    /// The cached board, if read less than a second ago.
    pub fn get(&self, id: &str) -> Option<board::Board> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|(at, _)| at.elapsed() < Self::TTL).map(|(_, b)| b.clone())
    }

    /// Remembers `board`.
    pub fn put(&self, board: &board::Board) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (at, _)| at.elapsed() < Self::TTL);
        }
        map.insert(board.id.clone(), (std::time::Instant::now(), board.clone()));
    }

    /// Forgets board `id` (an operator changed or deleted it).
    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

impl FromRef<LeaderboardState> for Authenticator {
    fn from_ref(state: &LeaderboardState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<LeaderboardState> for AdminKey {
    fn from_ref(state: &LeaderboardState) -> Self {
        state.admin_key.clone()
    }
}

/// What the leaderboard does once the database went back to an earlier point
/// (`platform::restore`): forgets the rank index, which every read then rebuilds from the
/// restored records (the path of a flushed Redis), so that no rank from the lost future is served.
pub fn restore_hook(index: index::RankIndex) -> platform::restore::Hook {
    Box::new(move || {
        let index = index.clone();
        Box::pin(async move {
            let dropped = index.forget_all().await?;
            tracing::warn!(dropped, "rank index forgotten after the database's restore; it is rebuilt from the records on first use");
            Ok(())
        })
    })
}

/// What the leaderboard consumes: `account.deleted` erases that player's records and
/// friendships everywhere; `social.friend_accepted` and `social.friend_removed` keep its copy of
/// the friendships, for `records?friends=true`.
pub fn subscriptions(state: LeaderboardState) -> Vec<Subscription> {
    let (accepted, removed) = (state.clone(), state.clone());
    vec![
        Subscription::on("leaderboard", move |event: AccountDeleted| {
            let state = state.clone();
            async move {
                let erased = state.erase_player(&event.account_id).await?;
                store::forget_friends(state.db.pool(), &event.account_id).await?;
                tracing::info!(account_id = event.account_id, records = erased, "erased a deleted player's records");
                Ok(())
            }
        }),
        Subscription::on("leaderboard", move |event: FriendAccepted| {
            let state = accepted.clone();
            async move {
                let at = platform::time::parse_rfc3339(&event.accepted_at).unwrap_or_else(platform::db::now_millis);
                let mut conn = state.db.pool().acquire().await?;
                store::put_friendship(&mut conn, &event.requester_id, &event.accepter_id, true, at).await
            }
        }),
        Subscription::on("leaderboard", move |event: FriendRemoved| {
            let state = removed.clone();
            async move {
                let at = platform::time::parse_rfc3339(&event.removed_at).unwrap_or_else(platform::db::now_millis);
                let mut conn = state.db.pool().acquire().await?;
                store::put_friendship(&mut conn, &event.account_id, &event.other_id, false, at).await
            }
        }),
    ]
}

/// The leaderboard router.
pub fn router(state: LeaderboardState) -> Router {
    api::routes().merge(seasons::routes()).merge(admin::routes()).with_state(state)
}

/// The OpenAPI description of the leaderboard API.
#[derive(OpenApi)]
#[openapi(
    paths(
        api::create_board, api::list_boards, api::show_board, api::submit_score, api::list_records, api::my_record, api::around_me,
        seasons::list_seasons, seasons::season_records,
        admin::update_board, admin::delete_board, admin::delete_record, admin::close_season, admin::account_records
    ),
    components(schemas(
        api::CreateBoard, api::BoardView, api::BoardPage, api::SeasonView, api::SubmitScore, api::Record, api::RecordPage,
        admin::BoardUpdate, admin::AccountRecord, admin::AccountRecordPage,
        board::Sort, board::Operator, seasons::SeasonSummary, seasons::SeasonPage, platform::error::ErrorBody
    )),
    tags((name = "leaderboards", description = "Boards, scores and ranks"))
)]
pub struct ApiDoc;
