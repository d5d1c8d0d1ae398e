//! Seasons: a board with a reset schedule closes its live season at the scheduled time, exactly
//! once however many instances run (the database decides: the season number only moves from the
//! value a closer read, under a row lock), archives it, opens the next, and records
//! `leaderboard.season_closed` with the top records. Archives are read from the database.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::auth::{Admin, Caller};
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::events::{SeasonClosed, SeasonPlacing};
use platform::http::{Json, Query};
use platform::shutdown::Shutdown;
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::LeaderboardState;
use crate::api::{Record, RecordPage};
use crate::board::Board;
use crate::index::Scope;
use crate::schedule::Schedule;
use crate::store::{self, After, SeasonRow};

/// Why a live season closes.
#[derive(Debug, Clone, Copy)]
pub enum Closing<'a> {
    /// Its reset time has come (the closer, or a request that found it overdue).
    Due,
    /// An operator closes it now, whatever its schedule.
    Now(&'a Admin),
}

/// How many of the top records the `leaderboard.season_closed` event carries.
const TOP_IN_EVENT: i64 = 10;
/// How often each instance looks for seasons due to close.
const CLOSE_EVERY: Duration = Duration::from_secs(1);

/// The season routes.
pub fn routes() -> Router<LeaderboardState> {
    Router::new()
        .route("/v1/leaderboards/{id}/seasons", get(list_seasons))
        .route("/v1/leaderboards/{id}/seasons/{n}/records", get(season_records))
}

/// An archived season.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeasonSummary {
    /// Season number.
    pub number: i64,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub ended_at: String,
    /// Records it closed with.
    pub record_count: i64,
}

/// A page of archived seasons.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeasonPage {
    /// Newest first.
    pub seasons: Vec<SeasonSummary>,
    /// Pass as `cursor` for older seasons; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Paging of archive lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl From<SeasonRow> for SeasonSummary {
    fn from(s: SeasonRow) -> Self {
        SeasonSummary {
            number: s.season,
            started_at: platform::time::rfc3339(s.started_at),
            ended_at: platform::time::rfc3339(s.ended_at),
            record_count: s.record_count,
        }
    }
}

fn page_limit(limit: Option<usize>) -> ApiResult<i64> {
    match limit.unwrap_or(20) {
        n @ 1..=100 => Ok(n as i64),
        _ => Err(ApiError::invalid("limit", "limit must be between 1 and 100")),
    }
}

/// Parses a board's reset schedule, with the field name for errors.
pub fn parse_schedule(text: &str) -> ApiResult<Schedule> {
    let schedule: Schedule = text.parse().map_err(|e| ApiError::invalid("reset", format!("reset is not a cron expression: {e}")))?;
    if schedule.next_after(now_millis()).is_none() {
        return Err(ApiError::invalid("reset", "reset never fires"));
    }
    Ok(schedule)
}

impl LeaderboardState {
    /// Closes the live season of `board_id` if it is due, unless another instance already did.
    /// Returns the number of the season closed.
    pub async fn close_season_if_due(&self, board_id: &str) -> anyhow::Result<Option<i64>> {
        Ok(self.close_season(board_id, Closing::Due).await?.map(|closed| closed.season))
    }

    /// Closes the live season of `board_id` (`Closing::Due`: only if its reset time has come,
    /// unless another instance closed it already): archives it, opens the next (ending at the
    /// schedule's next time after now, for a board that resets) and records
    /// `leaderboard.season_closed` with the top records, in one transaction; an operator's close
    /// records its audit entry there too. Returns the archived season; `None` when there was
    /// nothing to close (no such board, or not due).
    pub async fn close_season(&self, board_id: &str, closing: Closing<'_>) -> anyhow::Result<Option<SeasonRow>> {
        let now = now_millis();
        let mut tx = self.db.begin().await?;
        let Some(board) = store::board_for_update(&mut tx, self.db.dialect(), board_id).await? else { return Ok(None) };
        let ends_at = match closing {
            Closing::Due => match (board.season_ends_at, board.reset.as_deref()) {
                (Some(ends_at), Some(_)) if ends_at <= now => ends_at,
                _ => return Ok(None),
            },
            Closing::Now(_) => now,
        };
        let schedule: Option<Schedule> = board
            .reset
            .as_deref()
            .map(|reset| reset.parse().map_err(|e| anyhow::anyhow!("stored schedule {reset:?} is invalid: {e}")))
            .transpose()?;
        let record_count = store::count_records(&mut *tx, &board.id, board.season).await?;
        let top = store::ranked_records(&mut *tx, &board.id, board.season, board.sort, None, TOP_IN_EVENT).await?;
        let archived = SeasonRow { season: board.season, started_at: board.season_started_at, ended_at: ends_at, record_count };
        store::insert_season(&mut *tx, &board.id, &archived).await?;
        // After downtime the next end is the next one from now: no empty seasons are made up.
        let next_end = schedule.and_then(|s| s.next_after(now.max(ends_at)));
        if !store::advance_season(&mut *tx, &board.id, board.season, ends_at, next_end).await? {
            return Ok(None);
        }
        let top = top
            .into_iter()
            .zip(1..)
            .map(|(r, rank)| SeasonPlacing { rank, owner_id: r.owner_id, name: r.owner_name, score: r.score, subscore: r.subscore })
            .collect();
        let event = SeasonClosed {
            board_id: board.id.clone(),
            season: board.season,
            started_at: platform::time::rfc3339(board.season_started_at),
            ended_at: platform::time::rfc3339(ends_at),
            record_count,
            top,
        };
        platform::events::record(&mut *tx, &event).await?;
        if let Closing::Now(admin) = closing {
            let detail = serde_json::json!({ "season": board.season, "record_count": record_count });
            platform::audit::record(&mut *tx, admin, "leaderboards.season_close", &format!("leaderboard:{}", board.id), &detail).await?;
        }
        tx.commit().await?;
        tracing::info!(board = board.id, season = board.season, records = record_count, "season closed");
        // The archive is served from the database; the live index of the old season can go.
        if let Err(err) = self.index.drop_season(Scope { board: &board.id, season: board.season }).await {
            tracing::warn!(error = format!("{err:#}"), "dropping a closed season's index failed");
        }
        self.boards.forget(&board.id);
        Ok(Some(archived))
    }

    /// The board as it is now: when its season has run out but no closer has run yet, closes it
    /// first, so that a score submitted after the reset time lands in the new season.
    pub async fn current(&self, board: Board) -> ApiResult<Board> {
        if board.season_ends_at.is_some_and(|end| end <= now_millis()) {
            self.close_season_if_due(&board.id).await?;
            let fresh =
                store::board_by_id(self.db.pool(), &board.id).await?.ok_or_else(|| ApiError::NotFound("no such leaderboard".into()))?;
            self.boards.put(&fresh);
            return Ok(fresh);
        }
        Ok(board)
    }
}

/// How often old idempotency keys are purged, and how long they are kept.
const PURGE_KEYS_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
const KEEP_KEYS_MS: i64 = 24 * 3600 * 1000;

/// Closes due seasons every second until shutdown. Every instance runs it; the database lets one
/// close each season.
pub async fn run_closer(state: LeaderboardState, shutdown: Shutdown) {
    let mut every = tokio::time::interval(CLOSE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purged_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.stopped() => return,
            _ = every.tick() => {}
        }
        // Submissions' idempotency keys are kept a day; the purge runs hourly on every instance
        // (deleting what another already deleted costs nothing).
        if purged_at.is_none_or(|at| at.elapsed() >= PURGE_KEYS_EVERY) {
            purged_at = Some(tokio::time::Instant::now());
            match store::purge_submission_keys(state.db.pool(), now_millis() - KEEP_KEYS_MS).await {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged old submission keys"),
                Err(err) => tracing::warn!(error = format!("{err:#}"), "purging submission keys failed"),
            }
        }
        let due = match store::due_boards(state.db.pool(), now_millis()).await {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "listing boards due a reset failed");
                continue;
            }
        };
        for board in due {
            if let Err(err) = state.close_season_if_due(&board).await {
                tracing::warn!(board, error = format!("{err:#}"), "closing a season failed; retrying");
            }
        }
    }
}

/// A board's archived seasons, newest first.
#[utoipa::path(get, path = "/v1/leaderboards/{id}/seasons", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id"), PageQuery),
    responses((status = 200, body = SeasonPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_seasons(
    State(state): State<LeaderboardState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<SeasonPage>> {
    let board = state.board(&id).await?;
    let limit = page_limit(query.limit)?;
    let before = match query.cursor {
        None => i64::MAX,
        Some(cursor) => cursor.parse().ok().filter(|n| *n > 0).ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this list"))?,
    };
    // Archives tolerate lag: the reader's (`platform::replica`).
    let reads = state.db.reads_for(viewer(&caller)).await?;
    let rows = store::seasons(&*reads, &board.id, before, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|s| s.season.to_string())).flatten();
    Ok(Json(SeasonPage { seasons: rows.into_iter().map(SeasonSummary::from).collect(), next_cursor }))
}

/// The records of an archived season, best first, a page at a time.
#[utoipa::path(get, path = "/v1/leaderboards/{id}/seasons/{n}/records", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id"), ("n" = i64, Path, description = "Season number"), PageQuery),
    responses((status = 200, body = RecordPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn season_records(
    State(state): State<LeaderboardState>,
    caller: Caller,
    Path((id, season)): Path<(String, String)>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<RecordPage>> {
    let board = state.board(&id).await?;
    let season: i64 = season.parse().map_err(|_| ApiError::NotFound("no such season".into()))?;
    let reads = state.db.reads_for(viewer(&caller)).await?;
    store::season(&*reads, &board.id, season).await?.ok_or_else(|| ApiError::NotFound("no such archived season".into()))?;
    let limit = page_limit(query.limit)?;
    // The cursor is the last record's sort key and rank: archives do not change, so ranks
    // continue from it.
    let (after, first_rank) = match query.cursor.as_deref() {
        None => (None, 1),
        Some(cursor) => {
            let bad = || ApiError::invalid("cursor", "not a cursor of this season");
            let text = URL_SAFE_NO_PAD.decode(cursor).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
            let (key, rank) = text.rsplit_once('#').ok_or_else(bad)?;
            let rank: u64 = rank.parse().map_err(|_| bad())?;
            let (score, subscore, updated_at, owner) = board.decode_key(key).ok_or_else(bad)?;
            (Some(After { score, subscore, updated_at, owner_id: owner.to_owned() }), rank + 1)
        }
    };
    let rows = store::ranked_records(&*reads, &board.id, season, board.sort, after.as_ref(), limit).await?;
    let records: Vec<Record> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
            owner_id: r.owner_id.clone(),
            name: r.owner_name.clone(),
            score: r.score,
            subscore: r.subscore,
            rank: first_rank + i as u64,
            metadata: r.metadata.as_deref().and_then(|m| serde_json::from_str(m).ok()),
            updated_at: platform::time::rfc3339(r.updated_at),
        })
        .collect();
    let next_cursor = (rows.len() as i64 == limit)
        .then(|| {
            let (last, record) = (rows.last()?, records.last()?);
            let key = board.sort_key(last.score, last.subscore, last.updated_at, &last.owner_id);
            Some(URL_SAFE_NO_PAD.encode(format!("{key}#{}", record.rank)))
        })
        .flatten();
    Ok(Json(RecordPage { records, next_cursor }))
}

/// The player a read is for (a game server's key reads for nobody in particular).
fn viewer(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Player(player) => Some(&player.account_id),
        Caller::Server(_) => None,
    }
}
