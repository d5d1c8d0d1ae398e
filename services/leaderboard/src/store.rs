//! Every SQL statement of the leaderboard service, one text for both dialects.

use anyhow::Context;
use platform::db::Dialect;
use sqlx::any::AnyRow;
use sqlx::{Any, Executor, Row};

use crate::board::{Board, Operator, Sort};

const BOARD_COLUMNS: &str =
    "id, sort_order, operator, reset_schedule, min_score, max_score, authoritative, season, season_started_at, season_ends_at, created_at";

fn board(row: &AnyRow) -> anyhow::Result<Board> {
    Ok(Board {
        id: row.try_get("id")?,
        sort: Sort::parse(&row.try_get::<String, _>("sort_order")?)?,
        operator: Operator::parse(&row.try_get::<String, _>("operator")?)?,
        reset: row.try_get("reset_schedule")?,
        min_score: row.try_get("min_score")?,
        max_score: row.try_get("max_score")?,
        authoritative: row.try_get::<i64, _>("authoritative")? != 0,
        season: row.try_get("season")?,
        season_started_at: row.try_get("season_started_at")?,
        season_ends_at: row.try_get("season_ends_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Creates a board. A unique violation (the id exists) comes back as the error.
pub async fn insert_board<'e>(db: impl Executor<'e, Database = Any>, b: &Board) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO leaderboards (id, sort_order, operator, reset_schedule, min_score, max_score, authoritative, season, \
         season_started_at, season_ends_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&b.id)
    .bind(b.sort.as_str())
    .bind(b.operator.as_str())
    .bind(&b.reset)
    .bind(b.min_score)
    .bind(b.max_score)
    .bind(i64::from(b.authoritative))
    .bind(b.season)
    .bind(b.season_started_at)
    .bind(b.season_ends_at)
    .bind(b.created_at)
    .execute(db)
    .await
    .context("inserting leaderboard")?;
    Ok(())
}

/// The board with `id`.
pub async fn board_by_id<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<Option<Board>> {
    let sql = format!("SELECT {BOARD_COLUMNS} FROM leaderboards WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(db).await.context("loading leaderboard")?;
    row.as_ref().map(board).transpose()
}

/// A player's record on a board's season.
#[derive(Debug, Clone)]
pub struct RecordRow {
    /// Account id.
    pub owner_id: String,
    /// Name shown, as of the last write.
    pub owner_name: String,
    /// Score.
    pub score: i64,
    /// Tie-breaker before time.
    pub subscore: i64,
    /// JSON object text.
    pub metadata: Option<String>,
    /// Unix ms when the record reached its value.
    pub updated_at: i64,
    /// Bumped on every change.
    pub version: i64,
}

fn record(row: &AnyRow) -> Result<RecordRow, sqlx::Error> {
    Ok(RecordRow {
        owner_id: row.try_get("owner_id")?,
        owner_name: row.try_get("owner_name")?,
        score: row.try_get("score")?,
        subscore: row.try_get("subscore")?,
        metadata: row.try_get("metadata")?,
        updated_at: row.try_get("updated_at")?,
        version: row.try_get("version")?,
    })
}

const RECORD_COLUMNS: &str = "owner_id, owner_name, score, subscore, metadata, updated_at, version";

/// The owner's record, locked for the rest of the transaction on PostgreSQL (SQLite's
/// `BEGIN IMMEDIATE` already serialises writers).
pub async fn record_for_update(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    board: &str,
    season: i64,
    owner: &str,
) -> anyhow::Result<Option<RecordRow>> {
    let lock = if dialect == Dialect::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {RECORD_COLUMNS} FROM leaderboard_records WHERE board_id = $1 AND season = $2 AND owner_id = $3{lock}");
    let row = sqlx::query(&sql).bind(board).bind(season).bind(owner).fetch_optional(conn).await.context("loading record")?;
    row.as_ref().map(record).transpose().context("decoding record")
}

/// Writes the owner's record.
pub async fn upsert_record<'e>(db: impl Executor<'e, Database = Any>, board: &str, season: i64, r: &RecordRow) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO leaderboard_records (board_id, season, owner_id, owner_name, score, subscore, metadata, updated_at, version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (board_id, season, owner_id) DO UPDATE SET owner_name = excluded.owner_name, score = excluded.score, \
         subscore = excluded.subscore, metadata = excluded.metadata, updated_at = excluded.updated_at, version = excluded.version",
    )
    .bind(board)
    .bind(season)
    .bind(&r.owner_id)
    .bind(&r.owner_name)
    .bind(r.score)
    .bind(r.subscore)
    .bind(&r.metadata)
    .bind(r.updated_at)
    .bind(r.version)
    .execute(db)
    .await
    .context("writing record")?;
    Ok(())
}

/// Every record of a board's season, read in pages by owner id (for rebuilding the index).
pub async fn all_records(db: &sqlx::AnyPool, board: &str, season: i64) -> anyhow::Result<Vec<RecordRow>> {
    const PAGE: i64 = 10_000;
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM leaderboard_records WHERE board_id = $1 AND season = $2 AND owner_id > $3 ORDER BY owner_id LIMIT $4"
    );
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let rows = sqlx::query(&sql).bind(board).bind(season).bind(&after).bind(PAGE).fetch_all(db).await.context("reading records")?;
        let count = rows.len();
        for row in &rows {
            out.push(record(row).context("decoding record")?);
        }
        match out.last() {
            Some(last) if count as i64 == PAGE => after = last.owner_id.clone(),
            _ => return Ok(out),
        }
    }
}
