//! Operators' board routes: change a board's bounds and reset, delete a board, delete one
//! player's record (the rank index follows), close the live season now, and a player's records
//! everywhere (their part of the account view). Each requires its scope of the key
//! (`platform::auth::Scope`) and leaves an audit entry in the change's own transaction.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, patch, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::auth::{Admin, Scope as KeyScope};
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::http::{Json, Query};
use platform::{ApiError, ApiResult};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::LeaderboardState;
use crate::api::BoardView;
use crate::board::valid_board_id;
use crate::index::Scope;
use crate::seasons::{Closing, SeasonSummary, parse_schedule};
use crate::store::{self, Checked};

/// The operators' board routes.
pub fn routes() -> Router<LeaderboardState> {
    Router::new()
        .route("/v1/admin/leaderboards/{id}", patch(update_board).delete(delete_board))
        .route("/v1/admin/leaderboards/{id}/records/{owner_id}", delete(delete_record))
        .route("/v1/admin/leaderboards/{id}/seasons/close", post(close_season))
        .route("/v1/admin/accounts/{id}/records", get(account_records))
}

fn board_not_found() -> ApiError {
    ApiError::NotFound("no such leaderboard".into())
}

fn target(board: &str) -> String {
    format!("leaderboard:{board}")
}

/// `PATCH /v1/admin/leaderboards/{id}`: absent fields are kept, `null` clears a field. The sort
/// order and the operator never change (the rank index is ordered by them).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BoardUpdate {
    /// Lowest accepted score from now on; `null` for none.
    #[serde(default, deserialize_with = "platform::http::present")]
    #[schema(value_type = Option<i64>)]
    pub min_score: Option<Option<i64>>,
    /// Highest accepted score from now on; `null` for none.
    #[serde(default, deserialize_with = "platform::http::present")]
    #[schema(value_type = Option<i64>)]
    pub max_score: Option<Option<i64>>,
    /// Cron expression of the season reset in UTC; `null` for one endless season. The live season
    /// then ends at the schedule's next time from now.
    #[serde(default, deserialize_with = "platform::http::present")]
    #[schema(value_type = Option<String>)]
    pub reset: Option<Option<String>>,
    /// Only game servers (`game_server` keys) may submit scores.
    #[serde(default)]
    pub authoritative: Option<bool>,
}

/// Changes a board's bounds, reset schedule or authority. Bounds apply to submissions from now
/// on: records already kept stay.
#[utoipa::path(patch, path = "/v1/admin/leaderboards/{id}", tag = "leaderboards", security(("bearer" = [])), request_body = BoardUpdate,
    params(("id" = String, Path, description = "Board id")),
    responses((status = 200, body = BoardView), (status = 400, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `leaderboards`", body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(board = id))]
pub async fn update_board(
    State(state): State<LeaderboardState>,
    admin: Admin,
    Path(id): Path<String>,
    Json(req): Json<BoardUpdate>,
) -> ApiResult<Json<BoardView>> {
    admin.require(KeyScope::Leaderboards)?;
    if !valid_board_id(&id) {
        return Err(board_not_found());
    }
    let schedule = match &req.reset {
        Some(Some(text)) => Some(parse_schedule(text)?),
        _ => None,
    };
    let mut tx = state.db.begin().await?;
    let mut board = store::board_for_update(&mut tx, state.db.dialect(), &id).await?.ok_or_else(board_not_found)?;
    let before = BoardView::from(&board);
    if let Some(min) = req.min_score {
        board.min_score = min;
    }
    if let Some(max) = req.max_score {
        board.max_score = max;
    }
    if let (Some(min), Some(max)) = (board.min_score, board.max_score)
        && min > max
    {
        return Err(ApiError::invalid("min_score", "min_score must not exceed max_score"));
    }
    if let Some(authoritative) = req.authoritative {
        board.authoritative = authoritative;
    }
    if let Some(reset) = req.reset {
        board.reset = reset;
        board.season_ends_at = schedule.and_then(|s| s.next_after(now_millis()));
    }
    store::update_board(&mut *tx, &board).await?;
    let after = BoardView::from(&board);
    let detail = serde_json::json!({ "before": before, "after": after });
    platform::audit::record(&mut *tx, &admin, "leaderboards.update", &target(&id), &detail).await?;
    tx.commit().await?;
    state.boards.forget(&id);
    tracing::info!("leaderboard updated");
    Ok(Json(after))
}

/// Deletes a board with every record of every season and its archives.
#[utoipa::path(delete, path = "/v1/admin/leaderboards/{id}", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id")),
    responses((status = 204), (status = 403, description = "`insufficient_scope`: the key lacks `leaderboards`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(board = id))]
pub async fn delete_board(State(state): State<LeaderboardState>, admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    admin.require(KeyScope::Leaderboards)?;
    if !valid_board_id(&id) {
        return Err(board_not_found());
    }
    let mut tx = state.db.begin().await?;
    let board = store::board_for_update(&mut tx, state.db.dialect(), &id).await?.ok_or_else(board_not_found)?;
    let live_records = store::count_records(&mut *tx, &id, board.season).await?;
    store::delete_board(&mut tx, &id).await?;
    let detail = serde_json::json!({ "board": BoardView::from(&board), "live_records": live_records });
    platform::audit::record(&mut *tx, &admin, "leaderboards.delete", &target(&id), &detail).await?;
    tx.commit().await?;
    state.boards.forget(&id);
    // Archived seasons have no index; the live one's goes. Should this fail, a board made again
    // with this id drops it before its first season (see `create_board`), and nothing reads it
    // meanwhile (the board is gone).
    if let Err(err) = state.index.drop_season(Scope { board: &id, season: board.season }).await {
        tracing::warn!(error = format!("{err:#}"), "dropping a deleted board's index failed");
    }
    tracing::info!(live_records, "leaderboard deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Which season an operator means.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SeasonQuery {
    /// Season number; the live season when absent.
    #[param(minimum = 1)]
    pub season: Option<i64>,
}

/// Deletes one player's record (a cheater's score, say) from the live season or, with `season`,
/// an archived one. Ranks close up at once: the deletion writes an index check in its
/// transaction, corrects the index from it right after, and a repairer looks once more ten
/// seconds later (a submission that committed just before the deletion may update the index
/// just after it). The player's idempotency keys on that season go too, so a retried submission
/// is applied afresh rather than answered with the deleted record.
#[utoipa::path(delete, path = "/v1/admin/leaderboards/{id}/records/{owner_id}", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id"), ("owner_id" = String, Path, description = "The record's owner (account id)"), SeasonQuery),
    responses((status = 204), (status = 400, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `leaderboards`", body = ErrorBody),
        (status = 404, description = "no such board, season or record", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(board = id))]
pub async fn delete_record(
    State(state): State<LeaderboardState>,
    admin: Admin,
    Path((id, owner)): Path<(String, String)>,
    Query(query): Query<SeasonQuery>,
) -> ApiResult<StatusCode> {
    admin.require(KeyScope::Leaderboards)?;
    let board = state.current(state.board(&id).await?).await?;
    let season = query.season.unwrap_or(board.season);
    if !(1..=board.season).contains(&season) {
        return Err(ApiError::NotFound("no such season".into()));
    }
    let no_record = || ApiError::NotFound("no such record".into());
    if owner.is_empty() || owner.len() > 64 || owner.contains('|') {
        return Err(no_record());
    }
    let checked = vec![Checked { board: board.id.clone(), season, owners: vec![owner.clone()] }];
    let mut tx = state.db.begin().await?;
    let record = store::delete_record(&mut tx, &board.id, season, &owner).await?.ok_or_else(no_record)?;
    let check_id = uuid::Uuid::now_v7().to_string();
    store::put_index_check(&mut *tx, &check_id, &checked, now_millis() + crate::repair::ERASURE_RECHECK_MS).await?;
    let detail = serde_json::json!({
        "owner_id": owner,
        "owner_name": record.owner_name,
        "season": season,
        "score": record.score,
        "subscore": record.subscore,
        "updated_at": platform::time::rfc3339(record.updated_at),
    });
    platform::audit::record(&mut *tx, &admin, "leaderboards.record_delete", &target(&board.id), &detail).await?;
    tx.commit().await?;
    // The record is gone; should the index step fail now, the check's repair does it.
    if let Err(err) = state.check_until_agreed(&checked).await {
        tracing::warn!(error = format!("{err:#}"), "removing a deleted record from the rank index failed; the repair will");
    }
    tracing::info!(season, "record deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Closes the live season now, whatever the board's schedule: it is archived with its records,
/// `leaderboard.season_closed` is recorded with the top 10, and the next season starts empty
/// (ending at the schedule's next time, for a board that resets). Answers the archived season.
#[utoipa::path(post, path = "/v1/admin/leaderboards/{id}/seasons/close", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id")),
    responses((status = 200, body = SeasonSummary), (status = 403, description = "`insufficient_scope`: the key lacks `leaderboards`", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "`season_changed`: another close got there first", body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(board = id))]
pub async fn close_season(State(state): State<LeaderboardState>, admin: Admin, Path(id): Path<String>) -> ApiResult<Json<SeasonSummary>> {
    admin.require(KeyScope::Leaderboards)?;
    let board = state.board(&id).await?;
    let closed = state.close_season(&board.id, Closing::Now(&admin)).await?.ok_or_else(|| ApiError::Conflict {
        code: "season_changed",
        message: "the season was closed or the board deleted meanwhile; look again".into(),
    })?;
    Ok(Json(SeasonSummary::from(closed)))
}

/// A player's record on one board and season.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountRecord {
    /// Board id.
    pub board_id: String,
    /// Season number.
    pub season: i64,
    /// Whether it is the board's live season (archived otherwise).
    pub live: bool,
    /// The name shown with it.
    pub name: String,
    /// Score.
    pub score: i64,
    /// Subscore.
    pub subscore: i64,
    /// Rank in the live season; absent for archived ones.
    pub rank: Option<u64>,
    /// As submitted.
    pub metadata: Option<serde_json::Value>,
    /// RFC 3339: when the record reached its value.
    pub updated_at: String,
}

/// A page of a player's records.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountRecordPage {
    /// By board id, then newest season first.
    pub records: Vec<AccountRecord>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Paging of a player's records.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecordsQuery {
    /// 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A player's records on every board and season: the leaderboard service's part of the account
/// view (`GET /v1/admin/accounts/{id}`), which each service serves from its own tables.
#[utoipa::path(get, path = "/v1/admin/accounts/{id}/records", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Account id"), RecordsQuery),
    responses((status = 200, body = AccountRecordPage), (status = 400, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `accounts`", body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn account_records(
    State(state): State<LeaderboardState>,
    admin: Admin,
    Path(owner): Path<String>,
    Query(query): Query<RecordsQuery>,
) -> ApiResult<Json<AccountRecordPage>> {
    admin.require(KeyScope::Accounts)?;
    let limit = platform::admin::page_limit(query.limit)?;
    let bad_cursor = || ApiError::invalid("cursor", "cursor must be a next_cursor of this list");
    let after = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => {
            let text = URL_SAFE_NO_PAD.decode(cursor).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad_cursor)?;
            let (board, season) = text.split_once('\n').ok_or_else(bad_cursor)?;
            Some((board.to_owned(), season.parse::<i64>().map_err(|_| bad_cursor())?))
        }
    };
    let mut rows = store::records_of_owner(state.db.pool(), &owner, after.as_ref().map(|(b, s)| (b.as_str(), *s)), limit + 1).await?;
    let next_cursor = platform::admin::next_cursor(&mut rows, limit, |r| URL_SAFE_NO_PAD.encode(format!("{}\n{}", r.board_id, r.season)));
    let mut records = Vec::with_capacity(rows.len());
    for row in rows {
        let board = state.board(&row.board_id).await?;
        let live = row.season == board.season;
        let rank = if live { state.live_rank(&board, &owner).await? } else { None };
        records.push(AccountRecord {
            board_id: row.board_id,
            season: row.season,
            live,
            name: row.record.owner_name,
            score: row.record.score,
            subscore: row.record.subscore,
            rank,
            metadata: row.record.metadata.and_then(|m| serde_json::from_str(&m).ok()),
            updated_at: platform::time::rfc3339(row.record.updated_at),
        });
    }
    Ok(Json(AccountRecordPage { records, next_cursor }))
}
