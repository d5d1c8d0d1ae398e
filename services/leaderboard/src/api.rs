//! The leaderboard HTTP API: boards (admin), score submission, and ranked reads.

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use platform::auth::{Admin, Caller, Player, Scope as KeyScope, Unconfirmed, UnconfirmedCaller};
use platform::db::now_millis;
use platform::error::ErrorBody;
use platform::http::{Json, Query};
use platform::revocations::RevocationStatus;
use platform::{ApiError, ApiResult, OnUnique};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::LeaderboardState;
use crate::board::{Board, Operator, Refusal, Sort, valid_board_id};
use crate::index::{Entry, NotReady, RankAndRevocation, RankIndex, Ranked, RebuildLock, Scope};
use crate::store::{self, RecordRow};
use crate::writer::Submission;

/// The leaderboard routes.
pub fn routes() -> Router<LeaderboardState> {
    Router::new()
        .route("/v1/admin/leaderboards", post(create_board))
        .route("/v1/leaderboards", get(list_boards))
        .route("/v1/leaderboards/{id}", get(show_board))
        .route("/v1/leaderboards/{id}/scores", post(submit_score))
        .route("/v1/leaderboards/{id}/records", get(list_records))
        .route("/v1/leaderboards/{id}/records/me", get(my_record))
        .route("/v1/leaderboards/{id}/around/me", get(around_me))
}

/// Largest metadata object accepted with a score, serialised.
const MAX_METADATA_BYTES: usize = 2048;
/// Most owners in one `owner_ids` query.
const MAX_OWNER_IDS: usize = 100;

/// `POST /v1/admin/leaderboards`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBoard {
    /// 1 to 64 of `[a-z0-9_-]`.
    #[schema(pattern = r"^[a-z0-9_-]{1,64}$")]
    pub id: String,
    /// `desc` (higher wins) or `asc` (lower wins).
    pub sort: Sort,
    /// `best`, `set`, `incr` or `decr`.
    pub operator: Operator,
    /// Cron expression of the season reset in UTC, e.g. `@weekly` or `0 0 * * MON` (a leading
    /// seconds field is accepted). Without it the board has one endless season.
    #[serde(default)]
    pub reset: Option<String>,
    /// Lowest accepted score.
    #[serde(default)]
    pub min_score: Option<i64>,
    /// Highest accepted score.
    #[serde(default)]
    pub max_score: Option<i64>,
    /// Only the server key may submit scores.
    #[serde(default)]
    pub authoritative: bool,
}

/// A board as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoardView {
    /// Board id.
    pub id: String,
    /// Sort order.
    pub sort: Sort,
    /// Operator.
    pub operator: Operator,
    /// Cron expression of the season reset, if any.
    pub reset: Option<String>,
    /// Lowest accepted score.
    pub min_score: Option<i64>,
    /// Highest accepted score.
    pub max_score: Option<i64>,
    /// Only the server key may submit.
    pub authoritative: bool,
    /// The live season.
    pub season: SeasonView,
    /// RFC 3339.
    pub created_at: String,
}

/// The live season of a board.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeasonView {
    /// From 1.
    pub number: i64,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339, for a board that resets.
    pub ends_at: Option<String>,
}

impl From<&Board> for BoardView {
    fn from(b: &Board) -> Self {
        BoardView {
            id: b.id.clone(),
            sort: b.sort,
            operator: b.operator,
            reset: b.reset.clone(),
            min_score: b.min_score,
            max_score: b.max_score,
            authoritative: b.authoritative,
            season: SeasonView {
                number: b.season,
                started_at: platform::time::rfc3339(b.season_started_at),
                ends_at: b.season_ends_at.map(platform::time::rfc3339),
            },
            created_at: platform::time::rfc3339(b.created_at),
        }
    }
}

/// A page of boards, by id.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoardPage {
    /// The boards, each with its live season (`season.ends_at` is its next reset).
    pub boards: Vec<BoardView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/leaderboards`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BoardQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page (a board id).
    #[param(pattern = r"^[a-z0-9_-]{1,64}$")]
    pub cursor: Option<String>,
}

/// `POST /v1/leaderboards/{id}/scores`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitScore {
    /// The score (combined with the record by the board's operator).
    pub score: i64,
    /// Breaks ties between equal scores (then the earlier record wins).
    #[serde(default)]
    pub subscore: i64,
    /// A small JSON object kept with the record (2 KiB at most), e.g. the car and the track.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Server key only: whose score this is.
    #[serde(default)]
    pub owner_id: Option<String>,
    /// Server key only: the name to show for that player.
    #[serde(default)]
    pub owner_name: Option<String>,
}

/// A player's record with its rank.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct Record {
    /// Account id.
    pub owner_id: String,
    /// Name shown for the player.
    pub name: String,
    /// Score.
    pub score: i64,
    /// Subscore.
    pub subscore: i64,
    /// 1 is the best.
    pub rank: u64,
    /// As submitted.
    pub metadata: Option<serde_json::Value>,
    /// RFC 3339: when the record reached its value.
    pub updated_at: String,
}

/// A page of records.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordPage {
    /// Best first.
    pub records: Vec<Record>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/leaderboards/{id}/records`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Comma-separated account ids (at most 100): their records only, e.g. a friends list.
    pub owner_ids: Option<String>,
    /// `true`: the records of the caller and their friends only (a player's token; not with
    /// `owner_ids` or `cursor`).
    pub friends: Option<bool>,
}

/// Query of `GET /v1/leaderboards/{id}/around/me`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AroundQuery {
    /// 1 to 100, default 10.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

fn limit(value: Option<usize>, default: usize) -> ApiResult<usize> {
    let limit = value.unwrap_or(default);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "limit must be between 1 and 100"));
    }
    Ok(limit)
}

fn board_not_found() -> ApiError {
    ApiError::NotFound("no such leaderboard".into())
}

/// What the index keeps beside a record's key, as `Entry::of` writes it: the owner's name and
/// the metadata (read into a struct, not a `Value` map: this is on every rank read).
#[derive(Debug, Default, Deserialize)]
struct EntryData {
    #[serde(default)]
    n: String,
    #[serde(default)]
    m: Option<serde_json::Value>,
}

impl LeaderboardState {
    pub(crate) async fn board(&self, id: &str) -> ApiResult<Board> {
        if !valid_board_id(id) {
            return Err(board_not_found());
        }
        if let Some(board) = self.boards.get(id) {
            return Ok(board);
        }
        let board = store::board_by_id(self.db.pool(), id).await?.ok_or_else(board_not_found)?;
        self.boards.put(&board);
        Ok(board)
    }

    /// Rebuilds the index of the board's live season from the database, or, when another
    /// instance is rebuilding it, waits a moment for it.
    async fn rebuild(&self, board: &Board) -> anyhow::Result<()> {
        let scope = Scope { board: &board.id, season: board.season };
        match self.index.try_lock_rebuild(scope).await? {
            RebuildLock::Acquired => {}
            RebuildLock::Ready => return Ok(()),
            RebuildLock::Busy => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Ok(());
            }
        }
        let started = std::time::Instant::now();
        let loaded = async {
            let rows = store::all_records(self.db.pool(), &board.id, board.season).await?;
            let entries: Vec<Entry> = rows.iter().map(|r| Entry::of(board, r)).collect();
            let count = entries.len();
            self.index.install(scope, entries).await?;
            anyhow::Ok(count)
        }
        .await;
        match loaded {
            Ok(count) => {
                tracing::info!(
                    board = board.id,
                    season = board.season,
                    records = count,
                    ms = started.elapsed().as_millis() as u64,
                    "rank index rebuilt"
                );
                Ok(())
            }
            Err(err) => {
                let _ = self.index.unlock_rebuild(scope).await;
                Err(err)
            }
        }
    }

    fn record(&self, board: &Board, ranked: Ranked) -> Option<Record> {
        let (score, subscore, updated_at, owner) = board.decode_key(&ranked.key)?;
        let data: EntryData = serde_json::from_str(&ranked.data).unwrap_or_default();
        Some(Record {
            owner_id: owner.to_owned(),
            name: data.n,
            score,
            subscore,
            rank: ranked.rank,
            metadata: data.m.filter(|m| !m.is_null()),
            updated_at: platform::time::rfc3339(updated_at),
        })
    }
}

/// Runs an index operation, rebuilding the index from the database while it answers `NotReady`.
macro_rules! when_ready {
    ($state:expr, $board:expr, $op:expr) => {{
        let mut tries = 0;
        loop {
            match $op.await? {
                Ok(value) => break value,
                Err(NotReady) => {
                    tries += 1;
                    if tries > 200 {
                        return Err(ApiError::Unavailable("the leaderboard index is being rebuilt; retry shortly".into()));
                    }
                    $state.rebuild(&$board).await?;
                }
            }
        }
    }};
}

impl LeaderboardState {
    /// The owner's rank on the board's live season, rebuilding the index when needed.
    pub(crate) async fn live_rank(&self, board: &Board, owner: &str) -> ApiResult<Option<u64>> {
        let scope = Scope { board: &board.id, season: board.season };
        Ok(when_ready!(self, board, self.index.rank_of(scope, owner)).map(|ranked| ranked.rank))
    }
}

/// 409 `board_exists`.
fn board_exists() -> ApiError {
    ApiError::Conflict { code: "board_exists", message: "a leaderboard with that id exists".into() }
}

/// Creates a leaderboard (a server key with the `leaderboards` scope).
#[utoipa::path(post, path = "/v1/admin/leaderboards", tag = "leaderboards", security(("bearer" = [])), request_body = CreateBoard,
    responses((status = 201, body = BoardView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`insufficient_scope`: the key lacks `leaderboards`", body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(board = req.id))]
pub async fn create_board(
    State(state): State<LeaderboardState>,
    admin: Admin,
    Json(req): Json<CreateBoard>,
) -> ApiResult<impl IntoResponse> {
    admin.require(KeyScope::Leaderboards)?;
    if !valid_board_id(&req.id) {
        return Err(ApiError::invalid("id", "id must be 1 to 64 of a-z, 0-9, _ and -"));
    }
    let schedule = req.reset.as_deref().map(crate::seasons::parse_schedule).transpose()?;
    if let (Some(min), Some(max)) = (req.min_score, req.max_score)
        && min > max
    {
        return Err(ApiError::invalid("min_score", "min_score must not exceed max_score"));
    }
    let now = now_millis();
    let board = Board {
        id: req.id,
        sort: req.sort,
        operator: req.operator,
        reset: req.reset,
        min_score: req.min_score,
        max_score: req.max_score,
        authoritative: req.authoritative,
        season: 1,
        season_started_at: now,
        season_ends_at: schedule.and_then(|s| s.next_after(now)),
        created_at: now,
    };
    if store::board_by_id(state.db.pool(), &board.id).await?.is_some() {
        return Err(board_exists());
    }
    // A board of this id may have existed and been deleted: nothing left of its index may show
    // in the new board's first season.
    state.index.drop_season(Scope { board: &board.id, season: 1 }).await?;
    let view = BoardView::from(&board);
    let mut tx = state.db.begin().await?;
    // The board's id is the table's one unique key (`leaderboards_pkey`, `leaderboards.id`).
    store::insert_board(&mut *tx, &board).await.on_unique("leaderboards", board_exists)?;
    platform::audit::record(&mut *tx, &admin, "leaderboards.create", &format!("leaderboard:{}", board.id), &view).await?;
    tx.commit().await?;
    tracing::info!("leaderboard created");
    Ok((StatusCode::CREATED, Json(view)))
}

/// The boards, by id, a page at a time: for players (what to show) and operators alike.
#[utoipa::path(get, path = "/v1/leaderboards", tag = "leaderboards", security(("bearer" = [])), params(BoardQuery),
    responses((status = 200, body = BoardPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_boards(
    State(state): State<LeaderboardState>,
    _caller: Caller,
    Query(query): Query<BoardQuery>,
) -> ApiResult<Json<BoardPage>> {
    let limit = limit(query.limit, 20)? as i64;
    let after = match query.cursor {
        None => String::new(),
        Some(cursor) if valid_board_id(&cursor) => cursor,
        Some(_) => return Err(ApiError::invalid("cursor", "cursor must be a next_cursor of this list")),
    };
    let mut boards = store::list_boards(state.db.pool(), &after, limit + 1).await?;
    let next_cursor = platform::admin::next_cursor(&mut boards, limit, |b| b.id.clone());
    Ok(Json(BoardPage { boards: boards.iter().map(BoardView::from).collect(), next_cursor }))
}

/// A board's configuration and live season.
#[utoipa::path(get, path = "/v1/leaderboards/{id}", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id")),
    responses((status = 200, body = BoardView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_board(State(state): State<LeaderboardState>, _caller: Caller, Path(id): Path<String>) -> ApiResult<Json<BoardView>> {
    Ok(Json(BoardView::from(&state.current(state.board(&id).await?).await?)))
}

/// Submits a score: the player's own with their token, or anyone's with a server key holding the
/// `game_server` scope (the only way onto an authoritative board). Answers the record after the operator applied, with its rank.
#[utoipa::path(post, path = "/v1/leaderboards/{id}/scores", tag = "leaderboards", security(("bearer" = [])), request_body = SubmitScore,
    params(("id" = String, Path, description = "Board id"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,64}$", description = "1 to 64 printable ASCII characters without spaces: a retry with the same key gets the first answer and is not applied again (kept a day)")),
    responses((status = 200, body = Record), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "`forbidden` (a player on an authoritative board) or `insufficient_scope` (a key without `game_server`)", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all, fields(board = id))]
pub async fn submit_score(
    State(state): State<LeaderboardState>,
    caller: UnconfirmedCaller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<SubmitScore>, ApiError>,
) -> ApiResult<Json<Record>> {
    // A player's session is confirmed before anything is answered or written, as the `Caller`
    // extractor would; on a `best` board over Redis the revocation status rides in the same
    // round trip as the index check below.
    let (player, submission) = match caller {
        UnconfirmedCaller::Server(admin) => (None, checked_submission(&state, Err(admin), &id, &headers, body).await?),
        UnconfirmedCaller::Player(unconfirmed) => match checked_submission(&state, Ok(&unconfirmed), &id, &headers, body).await {
            Ok(submission) => (Some(unconfirmed), submission),
            Err(err) => {
                state.auth.confirm(unconfirmed).await?;
                return Err(err);
            }
        },
    };
    let board = &submission.board;

    // Most submissions to a `best` board do not beat the record. Ask the index first; only a
    // submission that may change the record goes to the database and takes the row lock below
    // (which decides again, so a concurrent change is never lost).
    if board.operator == Operator::Best {
        let candidate = board.sort_key(submission.score, submission.subscore, 0, &submission.owner_id);
        let scope = Scope { board: &board.id, season: board.season };
        let (owner, prefix) = (submission.owner_id.as_str(), &candidate[..32]);
        let kept = match player {
            Some(unconfirmed) if matches!(state.index, RankIndex::Redis(_)) => {
                let (status, kept) = when_ready!(state, board, async {
                    unless_revoked(state.index.unless_better_unless_revoked(scope, owner, prefix, unconfirmed.session_id()).await?)
                });
                // Reads the database only when the cache has lost its revocations.
                state.auth.confirm_with_status(unconfirmed, status).await?;
                kept
            }
            player => {
                if let Some(unconfirmed) = player {
                    state.auth.confirm(unconfirmed).await?;
                }
                when_ready!(state, board, state.index.unless_better(scope, owner, prefix))
            }
        };
        if let Some(record) = kept.and_then(|kept| state.record(board, kept)) {
            return Ok(Json(record));
        }
    } else if let Some(unconfirmed) = player {
        state.auth.confirm(unconfirmed).await?;
    }

    // The database first: the record is durable before it is acknowledged or ranked. The writer
    // commits it together with whatever other submissions are waiting (group commit), then
    // updates the index itself, so that a request that ends early does not leave it behind.
    let board = board.clone();
    let written = state.writer.submit(submission).await?.map_err(|refusal| match refusal {
        Refusal::OutOfBounds => ApiError::invalid("score", "the score is outside this leaderboard's bounds"),
        Refusal::Overflow => ApiError::invalid("score", "the resulting score does not fit in 64 bits"),
        Refusal::BoardGone => {
            state.boards.forget(&board.id);
            board_not_found()
        }
    })?;
    let rank = match written.rank {
        Some(rank) => rank,
        // The index was not ready (or did not answer) when the writer updated it: rank it here,
        // rebuilding the index when needed.
        None => {
            let scope = Scope { board: &board.id, season: board.season };
            when_ready!(state, board, state.index.upsert(scope, &Entry::of(&board, &written.record)))
        }
    };
    Ok(Json(record_of(written.record, rank)))
}

/// A submission as the request makes it, checked against the board: its owner (the player's
/// token, `Ok`, or the `owner_id` a server key names, `Err`), bounds, metadata and key. The
/// player's session is not confirmed here.
async fn checked_submission(
    state: &LeaderboardState,
    caller: Result<&Unconfirmed, Admin>,
    id: &str,
    headers: &HeaderMap,
    body: Result<Json<SubmitScore>, ApiError>,
) -> ApiResult<Submission> {
    let Json(req) = body?;
    let idempotency_key = idempotency_key(headers)?;
    let board = state.current(state.board(id).await?).await?;
    let (owner_id, owner_name) = match caller {
        Ok(player) => {
            if board.authoritative {
                return Err(ApiError::Forbidden("this leaderboard takes scores from the game server only".into()));
            }
            if req.owner_id.is_some() || req.owner_name.is_some() {
                return Err(ApiError::invalid("owner_id", "players submit their own scores; owner_id is for the server key"));
            }
            (player.account_id().to_owned(), player.name().to_owned())
        }
        Err(admin) => {
            admin.require(KeyScope::GameServer)?;
            let owner_id = req.owner_id.filter(|o| !o.is_empty() && o.len() <= 64 && !o.contains('|'));
            let owner_id = owner_id.ok_or_else(|| ApiError::invalid("owner_id", "the server key must name the player (owner_id)"))?;
            let name = req.owner_name.unwrap_or_default();
            if name.chars().count() > 64 {
                return Err(ApiError::invalid("owner_name", "owner_name must be at most 64 characters"));
            }
            (owner_id, name)
        }
    };
    let metadata = match req.metadata {
        Some(map) => {
            let text = serde_json::Value::Object(map).to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err(ApiError::invalid("metadata", format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")));
            }
            Some(text)
        }
        None => None,
    };
    if board.operator == Operator::Best {
        board
            .apply(None, req.score, req.subscore)
            .map_err(|_| ApiError::invalid("score", "the score is outside this leaderboard's bounds"))?;
    }
    Ok(Submission { board, owner_id, owner_name, score: req.score, subscore: req.subscore, metadata, idempotency_key })
}

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 64;

/// The `Idempotency-Key` header, if sent: 1 to 64 printable ASCII characters without spaces
/// (a UUID, say). A player reusing a key on a board's season gets the first answer again.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.to_str().ok().filter(|k| (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()));
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::invalid(
            "Idempotency-Key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces"),
        )),
    }
}

fn record_of(row: RecordRow, rank: u64) -> Record {
    Record {
        owner_id: row.owner_id,
        name: row.owner_name,
        score: row.score,
        subscore: row.subscore,
        rank,
        metadata: row.metadata.and_then(|m| serde_json::from_str(&m).ok()),
        updated_at: platform::time::rfc3339(row.updated_at),
    }
}

/// The top of the board, a page at a time; or, with `owner_ids`, those players' records.
#[utoipa::path(get, path = "/v1/leaderboards/{id}/records", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id"), ListQuery),
    responses((status = 200, body = RecordPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_records(
    State(state): State<LeaderboardState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<RecordPage>> {
    // Read before the board, so that a bad query is refused whatever the board.
    let friends = match (query.friends, &caller) {
        (Some(true), _) if query.owner_ids.is_some() => return Err(ApiError::invalid("friends", "friends=true takes no owner_ids")),
        (Some(true), Caller::Player(player)) => {
            let mut owners = store::friends_of(state.db.pool(), &player.account_id, i64::from(state.max_friends)).await?;
            owners.push(player.account_id.clone());
            Some(owners)
        }
        (Some(true), Caller::Server(_)) => return Err(ApiError::invalid("friends", "friends=true needs a player's token")),
        _ => None,
    };
    let board = state.current(state.board(&id).await?).await?;
    let scope = Scope { board: &board.id, season: board.season };
    let owners: Option<Vec<&str>> = match (&friends, &query.owner_ids) {
        (Some(friends), _) => Some(friends.iter().map(String::as_str).collect()),
        (None, Some(owner_ids)) => {
            let mut owners: Vec<&str> = owner_ids.split(',').map(str::trim).filter(|o| !o.is_empty()).collect();
            owners.sort_unstable();
            owners.dedup();
            if owners.is_empty() || owners.len() > MAX_OWNER_IDS || owners.iter().any(|o| o.len() > 64) {
                return Err(ApiError::invalid("owner_ids", format!("owner_ids must list 1 to {MAX_OWNER_IDS} account ids")));
            }
            Some(owners)
        }
        (None, None) => None,
    };
    if let Some(mut owners) = owners {
        if query.cursor.is_some() {
            return Err(ApiError::invalid("cursor", "owner_ids and friends=true answer in one page; drop the cursor"));
        }
        owners.sort_unstable();
        owners.dedup();
        let mut records = Vec::with_capacity(owners.len());
        for owner in owners {
            if let Some(ranked) = when_ready!(state, board, state.index.rank_of(scope, owner)) {
                records.extend(state.record(&board, ranked));
            }
        }
        records.sort_by_key(|r| r.rank);
        return Ok(Json(RecordPage { records, next_cursor: None }));
    }
    let limit = limit(query.limit, 20)?;
    let after = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => {
            let key = URL_SAFE_NO_PAD.decode(cursor).ok().and_then(|bytes| String::from_utf8(bytes).ok());
            let key = key
                .filter(|k| board.decode_key(k).is_some())
                .ok_or_else(|| ApiError::invalid("cursor", "not a cursor of this leaderboard"))?;
            Some(key)
        }
    };
    let page = when_ready!(state, board, state.index.page(scope, after.as_deref(), limit));
    let next_cursor = (page.len() == limit).then(|| page.last().map(|last| URL_SAFE_NO_PAD.encode(&last.key))).flatten();
    let records = page.into_iter().filter_map(|r| state.record(&board, r)).collect();
    Ok(Json(RecordPage { records, next_cursor }))
}

/// A Redis index answer read in one round trip with its session's revocation status
/// (`*_unless_revoked`): refused when the session was revoked, otherwise the answer with the
/// status, for `confirm_with_status` to finish the check.
fn unless_revoked(found: Option<RankAndRevocation>) -> ApiResult<Result<(RevocationStatus, Option<Ranked>), NotReady>> {
    let Some((revocation, ranked)) = found else { unreachable!("a Redis index answers") };
    if revocation.revoked {
        return Err(platform::auth::session_revoked());
    }
    Ok(ranked.map(|ranked| (revocation, ranked)))
}

/// The caller's own record and rank.
#[utoipa::path(get, path = "/v1/leaderboards/{id}/records/me", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id")),
    responses((status = 200, body = Record), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn my_record(State(state): State<LeaderboardState>, caller: Unconfirmed, Path(id): Path<String>) -> ApiResult<Json<Record>> {
    let board = state.current(state.board(&id).await?).await?;
    let scope = Scope { board: &board.id, season: board.season };
    // The hottest read: on Redis, the session's revocation check rides in the same round trip as
    // the rank, and nothing read is answered unless the session still stands.
    let ranked = if matches!(state.index, RankIndex::Redis(_)) {
        let (status, ranked) = when_ready!(state, board, async {
            unless_revoked(state.index.rank_of_unless_revoked(scope, caller.account_id(), caller.session_id()).await?)
        });
        // Reads the database only when the cache has lost its revocations (see
        // `platform::revocations`).
        state.auth.confirm_with_status(caller, status).await?;
        ranked
    } else {
        let player = state.auth.confirm(caller).await?;
        when_ready!(state, board, state.index.rank_of(scope, &player.account_id))
    };
    let record = ranked.and_then(|r| state.record(&board, r));
    Ok(Json(record.ok_or_else(|| ApiError::NotFound("you have no record on this leaderboard".into()))?))
}

/// Records around the caller's: `limit` of them with the caller's in the middle, shifted to stay
/// full at the top and bottom of the board. Empty when the caller has no record.
#[utoipa::path(get, path = "/v1/leaderboards/{id}/around/me", tag = "leaderboards", security(("bearer" = [])),
    params(("id" = String, Path, description = "Board id"), AroundQuery),
    responses((status = 200, body = RecordPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn around_me(
    State(state): State<LeaderboardState>,
    player: Player,
    Path(id): Path<String>,
    Query(query): Query<AroundQuery>,
) -> ApiResult<Json<RecordPage>> {
    let limit = limit(query.limit, 10)?;
    let board = state.current(state.board(&id).await?).await?;
    let scope = Scope { board: &board.id, season: board.season };
    let page = when_ready!(state, board, state.index.around(scope, &player.account_id, limit));
    let records = page.into_iter().filter_map(|r| state.record(&board, r)).collect();
    Ok(Json(RecordPage { records, next_cursor: None }))
}
