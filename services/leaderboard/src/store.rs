//! Every SQL statement of the leaderboard service, one text for both dialects.

use std::collections::HashSet;

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
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.insert_board", skip_all)]
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
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.board_by_id", skip_all)]
pub async fn board_by_id<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<Option<Board>> {
    let sql = format!("SELECT {BOARD_COLUMNS} FROM leaderboards WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(db).await.context("loading leaderboard")?;
    row.as_ref().map(board).transpose()
}

/// Which of the boards `ids` (not empty) exist.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.existing_boards", skip_all)]
pub async fn existing_boards<'e>(db: impl Executor<'e, Database = Any>, ids: &[&str]) -> anyhow::Result<HashSet<String>> {
    let (ids, list) = padded_in_list(ids, 1);
    let sql = format!("SELECT id FROM leaderboards WHERE id IN ({list})");
    let mut query = sqlx::query_scalar::<_, String>(&sql);
    for id in ids {
        query = query.bind(id);
    }
    Ok(query.fetch_all(db).await.context("checking leaderboards")?.into_iter().collect())
}

/// Up to `limit` boards whose ids come after `after` (`""` for the first page), by id.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.list_boards", skip_all)]
pub async fn list_boards<'e>(db: impl Executor<'e, Database = Any>, after: &str, limit: i64) -> anyhow::Result<Vec<Board>> {
    let sql = format!("SELECT {BOARD_COLUMNS} FROM leaderboards WHERE id > $1 ORDER BY id LIMIT $2");
    let rows = sqlx::query(&sql).bind(after).bind(limit).fetch_all(db).await.context("listing leaderboards")?;
    rows.iter().map(board).collect()
}

/// Writes what may change of a board after its creation: its bounds, whether it is
/// authoritative, its reset schedule and the live season's end that follows from it.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.update_board", skip_all)]
pub async fn update_board<'e>(db: impl Executor<'e, Database = Any>, b: &Board) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE leaderboards SET min_score = $2, max_score = $3, authoritative = $4, reset_schedule = $5, season_ends_at = $6 \
         WHERE id = $1",
    )
    .bind(&b.id)
    .bind(b.min_score)
    .bind(b.max_score)
    .bind(i64::from(b.authoritative))
    .bind(&b.reset)
    .bind(b.season_ends_at)
    .execute(db)
    .await
    .context("updating leaderboard")?;
    Ok(())
}

/// Deletes a board with its records of every season, its archives and its idempotency keys (the
/// children first: this does not rely on the cascade being enabled on the connection).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.delete_board", skip_all)]
pub async fn delete_board(conn: &mut sqlx::AnyConnection, id: &str) -> anyhow::Result<()> {
    for table in ["leaderboard_submission_keys", "leaderboard_records", "leaderboard_seasons"] {
        // `table` is one of the fixed names above, never input.
        sqlx::query(&format!("DELETE FROM {table} WHERE board_id = $1"))
            .bind(id)
            .execute(&mut *conn)
            .await
            .with_context(|| format!("deleting a board's {table}"))?;
    }
    sqlx::query("DELETE FROM leaderboards WHERE id = $1").bind(id).execute(&mut *conn).await.context("deleting leaderboard")?;
    Ok(())
}

/// Deletes `owner`'s record on a board's season and the idempotency keys that would answer with
/// it (a retried submission is applied afresh instead of answering, and ranking, a record that is
/// gone); an archived season counts one record fewer. Returns the record, if there was one.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.delete_record", skip_all)]
pub async fn delete_record(conn: &mut sqlx::AnyConnection, board: &str, season: i64, owner: &str) -> anyhow::Result<Option<RecordRow>> {
    let sql = format!("DELETE FROM leaderboard_records WHERE board_id = $1 AND season = $2 AND owner_id = $3 RETURNING {RECORD_COLUMNS}");
    let row = sqlx::query(&sql).bind(board).bind(season).bind(owner).fetch_optional(&mut *conn).await.context("deleting a record")?;
    let Some(row) = row else { return Ok(None) };
    sqlx::query("DELETE FROM leaderboard_submission_keys WHERE board_id = $1 AND season = $2 AND owner_id = $3")
        .bind(board)
        .bind(season)
        .bind(owner)
        .execute(&mut *conn)
        .await
        .context("deleting a record's submission keys")?;
    sqlx::query("UPDATE leaderboard_seasons SET record_count = record_count - 1 WHERE board_id = $1 AND season = $2")
        .bind(board)
        .bind(season)
        .execute(&mut *conn)
        .await
        .context("updating an archive's record count")?;
    Ok(Some(record(&row).context("decoding record")?))
}

/// A record with the board and season it is on.
#[derive(Debug, Clone)]
pub struct OwnedRecord {
    /// Board id.
    pub board_id: String,
    /// Season number.
    pub season: i64,
    /// The record.
    pub record: RecordRow,
}

/// Up to `limit` of `owner`'s records on every board and season: by board id, then newest season
/// first, after the (board, season) `after`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.records_of_owner", skip_all)]
pub async fn records_of_owner<'e>(
    db: impl Executor<'e, Database = Any>,
    owner: &str,
    after: Option<(&str, i64)>,
    limit: i64,
) -> anyhow::Result<Vec<OwnedRecord>> {
    let (after_board, after_season) = after.unwrap_or(("", i64::MAX));
    let sql = format!(
        "SELECT board_id, season, {RECORD_COLUMNS} FROM leaderboard_records \
         WHERE owner_id = $1 AND (board_id > $2 OR (board_id = $2 AND season < $3)) ORDER BY board_id, season DESC LIMIT $4"
    );
    let rows = sqlx::query(&sql)
        .bind(owner)
        .bind(after_board)
        .bind(after_season)
        .bind(limit)
        .fetch_all(db)
        .await
        .context("listing a player's records")?;
    rows.iter()
        .map(|row| Ok(OwnedRecord { board_id: row.try_get("board_id")?, season: row.try_get("season")?, record: record(row)? }))
        .collect::<Result<_, sqlx::Error>>()
        .context("decoding a player's records")
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

/// Placeholders `$from, $from+1, ...` for `count` values, comma-separated.
/// Binds each row's nine `leaderboard_records` columns, in the order the writes list them.
fn bind_records<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    board: &'q str,
    season: i64,
    rows: &'q [&RecordRow],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for r in rows {
        query = query
            .bind(board)
            .bind(season)
            .bind(&r.owner_id)
            .bind(&r.owner_name)
            .bind(r.score)
            .bind(r.subscore)
            .bind(&r.metadata)
            .bind(r.updated_at)
            .bind(r.version);
    }
    query
}

fn placeholders(from: usize, count: usize) -> String {
    (from..from + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// An `IN` list of `values` (not empty) for placeholders from `$from`: the values padded to a
/// power of two with repeats of the last, and their placeholders. A connection then prepares one
/// statement per power of two rather than one per list length.
fn padded_in_list<'a>(values: &[&'a str], from: usize) -> (Vec<&'a str>, String) {
    let size = values.len().next_power_of_two();
    let last = values.last().copied().unwrap_or_default();
    let padded = values.iter().copied().chain(std::iter::repeat_n(last, size - values.len())).collect();
    (padded, placeholders(from, size))
}

/// The records of `owners` (sorted, distinct) on a board's season. With `lock` (the pool's
/// dialect) they are locked for the rest of the transaction on PostgreSQL, in owner order so that
/// two batches cannot deadlock over them (SQLite's `BEGIN IMMEDIATE` already serialises writers).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.load_records", skip_all, fields(owners = owners.len()))]
pub async fn load_records(
    tx: &mut sqlx::AnyConnection,
    board: &str,
    season: i64,
    owners: &[&str],
    lock: Option<Dialect>,
) -> anyhow::Result<Vec<RecordRow>> {
    if owners.is_empty() {
        return Ok(Vec::new());
    }
    let lock = if lock == Some(Dialect::Postgres) { " FOR UPDATE" } else { "" };
    let (owners, list) = padded_in_list(owners, 3);
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM leaderboard_records WHERE board_id = $1 AND season = $2 AND owner_id IN ({list}) \
         ORDER BY owner_id{lock}"
    );
    let mut query = sqlx::query(&sql).bind(board).bind(season);
    for owner in owners {
        query = query.bind(owner);
    }
    let rows = query.fetch_all(&mut *tx).await.context("loading records")?;
    rows.iter().map(|row| record(row).context("decoding record")).collect()
}

/// What [`write_records`] does with a row whose key already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Overwrite it: the caller read the record and holds its lock.
    Update,
    /// Leave it: the row was meant to be new, and the count written tells the caller it was not.
    Nothing,
}

/// Writes `rows` (distinct owners, sorted) on a board's season in one statement and returns how
/// many were written.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.write_records", skip_all, fields(rows = rows.len()))]
pub async fn write_records(
    tx: &mut sqlx::AnyConnection,
    board: &str,
    season: i64,
    rows: &[&RecordRow],
    on_conflict: OnConflict,
) -> anyhow::Result<u64> {
    const COLUMNS: usize = 9;
    if rows.is_empty() {
        return Ok(0);
    }
    let conflict = match on_conflict {
        OnConflict::Update => {
            "DO UPDATE SET owner_name = excluded.owner_name, score = excluded.score, subscore = excluded.subscore, \
             metadata = excluded.metadata, updated_at = excluded.updated_at, version = excluded.version"
        }
        OnConflict::Nothing => "DO NOTHING",
    };
    let values: Vec<String> = (0..rows.len()).map(|i| format!("({})", placeholders(1 + i * COLUMNS, COLUMNS))).collect();
    let sql = format!(
        "INSERT INTO leaderboard_records (board_id, season, owner_id, owner_name, score, subscore, metadata, updated_at, version) \
         VALUES {} ON CONFLICT (board_id, season, owner_id) {conflict}",
        values.join(", ")
    );
    let query = bind_records(sqlx::query(&sql), board, season, rows);
    Ok(query.execute(&mut *tx).await.context("writing records")?.rows_affected())
}

/// How [`upsert_records`] combines a submitted row with the record it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combine {
    /// The row replaces the record (`set`).
    Replace,
    /// The row replaces the record only if it ranks strictly higher by this order (`best`); a
    /// record kept comes back as it was.
    KeepBetter(Sort),
}

/// The index check an [`upsert_records`] statement writes beside the records (PostgreSQL only).
#[derive(Debug, Clone, Copy)]
pub struct CheckRow<'a> {
    /// Its id.
    pub id: &'a str,
    /// What it names.
    pub records: &'a [Checked],
    /// When it is due (Unix ms).
    pub check_at: i64,
}

/// Writes `rows` (distinct owners, sorted; each with version 1 and its `updated_at`) on a board's
/// season in one statement, combining each with the record it finds by `combine`: an absent
/// record is inserted; a present one takes the row's values and its version plus one (keeping
/// its metadata when the row has none), unless `combine` keeps it. Every record comes back as
/// the statement left it, kept ones included: the statement locks each record it meets, so
/// those are current. With `check` (PostgreSQL, whose data-modifying `WITH` SQLite lacks), the
/// same statement writes that index check, so that one round trip in autocommit writes a whole
/// batch atomically.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.upsert_records", skip_all, fields(rows = rows.len()))]
pub async fn upsert_records(
    conn: &mut sqlx::AnyConnection,
    board: &str,
    season: i64,
    rows: &[&RecordRow],
    combine: Combine,
    check: Option<CheckRow<'_>>,
) -> anyhow::Result<Vec<RecordRow>> {
    const COLUMNS: usize = 9;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Each column's new value when the row wins, and the record's own when it is kept.
    let wins = match combine {
        Combine::Replace => None,
        Combine::KeepBetter(Sort::Desc) => {
            Some("(excluded.score, excluded.subscore) > (leaderboard_records.score, leaderboard_records.subscore)")
        }
        Combine::KeepBetter(Sort::Asc) => {
            Some("(excluded.score, excluded.subscore) < (leaderboard_records.score, leaderboard_records.subscore)")
        }
    };
    let set = |column: &str, new: &str| match wins {
        None => format!("{column} = {new}"),
        Some(wins) => format!("{column} = CASE WHEN {wins} THEN {new} ELSE leaderboard_records.{column} END"),
    };
    let assignments = [
        set("owner_name", "excluded.owner_name"),
        set("score", "excluded.score"),
        set("subscore", "excluded.subscore"),
        set("metadata", "COALESCE(excluded.metadata, leaderboard_records.metadata)"),
        set("updated_at", "excluded.updated_at"),
        set("version", "leaderboard_records.version + 1"),
    ]
    .join(", ");
    let values: Vec<String> = (0..rows.len()).map(|i| format!("({})", placeholders(1 + i * COLUMNS, COLUMNS))).collect();
    let upsert = format!(
        "INSERT INTO leaderboard_records (board_id, season, owner_id, owner_name, score, subscore, metadata, updated_at, version) \
         VALUES {} ON CONFLICT (board_id, season, owner_id) DO UPDATE SET {assignments} RETURNING {RECORD_COLUMNS}",
        values.join(", ")
    );
    let sql = match check {
        None => upsert,
        Some(_) => {
            let at = 1 + rows.len() * COLUMNS;
            format!(
                "WITH written AS ({upsert}), checked AS (INSERT INTO leaderboard_index_checks (id, records, check_at) \
                 VALUES ({})) SELECT {RECORD_COLUMNS} FROM written",
                placeholders(at, 3)
            )
        }
    };
    let mut query = bind_records(sqlx::query(&sql), board, season, rows);
    if let Some(check) = check {
        query = query.bind(check.id).bind(serde_json::to_string(check.records).context("encoding an index check")?).bind(check.check_at);
    }
    let written = query.fetch_all(&mut *conn).await.context("writing records")?;
    written.iter().map(|row| record(row).context("decoding a written record")).collect()
}

/// The records that earlier submissions with these idempotency `keys` left on a board's season,
/// as (owner, key, record).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.load_submission_keys", skip_all, fields(keys = keys.len()))]
pub async fn load_submission_keys(
    tx: &mut sqlx::AnyConnection,
    board: &str,
    season: i64,
    keys: &[&str],
) -> anyhow::Result<Vec<(String, String, RecordRow)>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (keys, list) = padded_in_list(keys, 3);
    let sql = format!(
        "SELECT idempotency_key, {RECORD_COLUMNS} FROM leaderboard_submission_keys \
         WHERE board_id = $1 AND season = $2 AND idempotency_key IN ({list})"
    );
    let mut query = sqlx::query(&sql).bind(board).bind(season);
    for key in keys {
        query = query.bind(key);
    }
    let rows = query.fetch_all(&mut *tx).await.context("loading submission keys")?;
    rows.iter()
        .map(|row| {
            let record = record(row).context("decoding a submission key's record")?;
            Ok((record.owner_id.clone(), row.try_get("idempotency_key")?, record))
        })
        .collect()
}

/// Records that the submissions with these idempotency keys left `record`s: (key, record). Returns
/// how many were new (one that is not was recorded by another instance meanwhile).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.insert_submission_keys", skip_all, fields(keys = keys.len()))]
pub async fn insert_submission_keys(
    tx: &mut sqlx::AnyConnection,
    board: &str,
    season: i64,
    keys: &[(&str, RecordRow)],
    now: i64,
) -> anyhow::Result<u64> {
    const COLUMNS: usize = 11;
    if keys.is_empty() {
        return Ok(0);
    }
    let values: Vec<String> = (0..keys.len()).map(|i| format!("({})", placeholders(1 + i * COLUMNS, COLUMNS))).collect();
    let sql = format!(
        "INSERT INTO leaderboard_submission_keys (board_id, season, owner_id, idempotency_key, owner_name, score, subscore, \
         metadata, updated_at, version, created_at) VALUES {} ON CONFLICT DO NOTHING",
        values.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for (key, r) in keys {
        query = query
            .bind(board)
            .bind(season)
            .bind(&r.owner_id)
            .bind(*key)
            .bind(&r.owner_name)
            .bind(r.score)
            .bind(r.subscore)
            .bind(&r.metadata)
            .bind(r.updated_at)
            .bind(r.version)
            .bind(now);
    }
    Ok(query.execute(&mut *tx).await.context("recording submission keys")?.rows_affected())
}

/// Deletes idempotency keys recorded before `before` (Unix ms); returns how many.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.purge_submission_keys", skip_all)]
pub async fn purge_submission_keys(db: &platform::db::Pool, before: i64) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM leaderboard_submission_keys WHERE created_at < $1")
        .bind(before)
        .execute(db)
        .await
        .context("purging submission keys")?;
    Ok(done.rows_affected())
}

/// Every record of a board's season, read in pages by owner id (for rebuilding the index).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.all_records", skip_all)]
pub async fn all_records(db: &platform::db::Pool, board: &str, season: i64) -> anyhow::Result<Vec<RecordRow>> {
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

/// ORDER BY that ranks records of a board: best first, then the earlier record, then the owner.
fn rank_order(sort: Sort) -> &'static str {
    match sort {
        Sort::Desc => "ORDER BY score DESC, subscore DESC, updated_at ASC, owner_id ASC",
        Sort::Asc => "ORDER BY score ASC, subscore ASC, updated_at ASC, owner_id ASC",
    }
}

/// WHERE fragment selecting the records ranked after the record ($3 score, $4 subscore,
/// $5 updated_at, $6 owner) in `rank_order`.
fn ranked_after(sort: Sort) -> &'static str {
    match sort {
        Sort::Desc => {
            "(score < $3 OR (score = $3 AND subscore < $4) OR (score = $3 AND subscore = $4 AND updated_at > $5) \
             OR (score = $3 AND subscore = $4 AND updated_at = $5 AND owner_id > $6))"
        }
        Sort::Asc => {
            "(score > $3 OR (score = $3 AND subscore > $4) OR (score = $3 AND subscore = $4 AND updated_at > $5) \
             OR (score = $3 AND subscore = $4 AND updated_at = $5 AND owner_id > $6))"
        }
    }
}

/// Where a page of archived records starts: after this record.
#[derive(Debug, Clone)]
pub struct After {
    /// Score of the last record shown.
    pub score: i64,
    /// Its subscore.
    pub subscore: i64,
    /// Its time.
    pub updated_at: i64,
    /// Its owner.
    pub owner_id: String,
}

/// Up to `limit` records of a board's season in rank order, after `after`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.ranked_records", skip_all)]
pub async fn ranked_records<'e>(
    db: impl Executor<'e, Database = Any>,
    board: &str,
    season: i64,
    sort: Sort,
    after: Option<&After>,
    limit: i64,
) -> anyhow::Result<Vec<RecordRow>> {
    let rows = match after {
        None => {
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM leaderboard_records WHERE board_id = $1 AND season = $2 {} LIMIT $3",
                rank_order(sort)
            );
            sqlx::query(&sql).bind(board).bind(season).bind(limit).fetch_all(db).await
        }
        Some(a) => {
            let sql = format!(
                "SELECT {RECORD_COLUMNS} FROM leaderboard_records WHERE board_id = $1 AND season = $2 AND {} {} LIMIT $7",
                ranked_after(sort),
                rank_order(sort)
            );
            sqlx::query(&sql)
                .bind(board)
                .bind(season)
                .bind(a.score)
                .bind(a.subscore)
                .bind(a.updated_at)
                .bind(&a.owner_id)
                .bind(limit)
                .fetch_all(db)
                .await
        }
    }
    .context("reading ranked records")?;
    rows.iter().map(|r| record(r).context("decoding record")).collect()
}

/// Boards whose live season has reached its end.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.due_boards", skip_all)]
pub async fn due_boards<'e>(db: impl Executor<'e, Database = Any>, now: i64) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar("SELECT id FROM leaderboards WHERE season_ends_at IS NOT NULL AND season_ends_at <= $1 ORDER BY id")
        .bind(now)
        .fetch_all(db)
        .await
        .context("listing boards due a reset")
}

/// The board, locked for the transaction on PostgreSQL.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.board_for_update", skip_all)]
pub async fn board_for_update(conn: &mut sqlx::AnyConnection, dialect: Dialect, id: &str) -> anyhow::Result<Option<Board>> {
    let lock = if dialect == Dialect::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!("SELECT {BOARD_COLUMNS} FROM leaderboards WHERE id = $1{lock}");
    let row = sqlx::query(&sql).bind(id).fetch_optional(conn).await.context("locking leaderboard")?;
    row.as_ref().map(board).transpose()
}

/// How many records a board's season holds.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.count_records", skip_all)]
pub async fn count_records<'e>(db: impl Executor<'e, Database = Any>, board: &str, season: i64) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM leaderboard_records WHERE board_id = $1 AND season = $2")
        .bind(board)
        .bind(season)
        .fetch_one(db)
        .await
        .context("counting records")
}

/// An archived season.
#[derive(Debug, Clone)]
pub struct SeasonRow {
    /// Season number.
    pub season: i64,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms.
    pub ended_at: i64,
    /// Records it closed with.
    pub record_count: i64,
}

fn season_row(row: &AnyRow) -> Result<SeasonRow, sqlx::Error> {
    Ok(SeasonRow {
        season: row.try_get("season")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        record_count: row.try_get("record_count")?,
    })
}

/// Archives a closed season.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.insert_season", skip_all)]
pub async fn insert_season<'e>(db: impl Executor<'e, Database = Any>, board: &str, s: &SeasonRow) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO leaderboard_seasons (board_id, season, started_at, ended_at, record_count) VALUES ($1, $2, $3, $4, $5)")
        .bind(board)
        .bind(s.season)
        .bind(s.started_at)
        .bind(s.ended_at)
        .bind(s.record_count)
        .execute(db)
        .await
        .context("archiving season")?;
    Ok(())
}

/// Moves the board from season `expected` to the next; false when it was not on `expected` (some
/// other instance closed it first).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.advance_season", skip_all)]
pub async fn advance_season<'e>(
    db: impl Executor<'e, Database = Any>,
    board: &str,
    expected: i64,
    started_at: i64,
    ends_at: Option<i64>,
) -> anyhow::Result<bool> {
    let done = sqlx::query(
        "UPDATE leaderboards SET season = season + 1, season_started_at = $3, season_ends_at = $4 WHERE id = $1 AND season = $2",
    )
    .bind(board)
    .bind(expected)
    .bind(started_at)
    .bind(ends_at)
    .execute(db)
    .await
    .context("opening the next season")?;
    Ok(done.rows_affected() == 1)
}

/// Archived seasons, newest first, before season `before`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.seasons", skip_all)]
pub async fn seasons<'e>(db: impl Executor<'e, Database = Any>, board: &str, before: i64, limit: i64) -> anyhow::Result<Vec<SeasonRow>> {
    let rows = sqlx::query(
        "SELECT season, started_at, ended_at, record_count FROM leaderboard_seasons WHERE board_id = $1 AND season < $2 \
         ORDER BY season DESC LIMIT $3",
    )
    .bind(board)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("listing seasons")?;
    rows.iter().map(|r| season_row(r).context("decoding season")).collect()
}

/// One archived season.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.season", skip_all)]
pub async fn season<'e>(db: impl Executor<'e, Database = Any>, board: &str, season: i64) -> anyhow::Result<Option<SeasonRow>> {
    let row = sqlx::query("SELECT season, started_at, ended_at, record_count FROM leaderboard_seasons WHERE board_id = $1 AND season = $2")
        .bind(board)
        .bind(season)
        .fetch_optional(db)
        .await
        .context("loading season")?;
    row.as_ref().map(season_row).transpose().context("decoding season")
}

/// Owners on one board season whose rank index entries are to be checked against their records
/// (see `crate::repair`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checked {
    /// Board id.
    pub board: String,
    /// Season number.
    pub season: i64,
    /// Sorted, distinct.
    pub owners: Vec<String>,
}

fn checked(text: &str) -> anyhow::Result<Vec<Checked>> {
    serde_json::from_str(text).context("decoding an index check")
}

/// Writes the index check `id` naming `records`, due at `check_at` (Unix ms), replacing one of
/// that id.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.put_index_check", skip_all)]
pub async fn put_index_check<'e>(
    db: impl Executor<'e, Database = Any>,
    id: &str,
    records: &[Checked],
    check_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO leaderboard_index_checks (id, records, check_at) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET records = excluded.records, check_at = excluded.check_at",
    )
    .bind(id)
    .bind(serde_json::to_string(records).context("encoding an index check")?)
    .bind(check_at)
    .execute(db)
    .await
    .context("writing an index check")?;
    Ok(())
}

/// The index check `id`, if it is still there.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.index_check", skip_all)]
pub async fn index_check<'e>(db: impl Executor<'e, Database = Any>, id: &str) -> anyhow::Result<Option<Vec<Checked>>> {
    let text: Option<String> = sqlx::query_scalar("SELECT records FROM leaderboard_index_checks WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
        .context("reading an index check")?;
    text.as_deref().map(checked).transpose()
}

/// Deletes the index checks `ids` (not empty): the index took what they name.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.delete_index_checks", skip_all, fields(ids = ids.len()))]
pub async fn delete_index_checks<'e>(db: impl Executor<'e, Database = Any>, ids: &[&str]) -> anyhow::Result<()> {
    let (ids, list) = padded_in_list(ids, 1);
    let sql = format!("DELETE FROM leaderboard_index_checks WHERE id IN ({list})");
    let mut query = sqlx::query(&sql);
    for id in ids {
        query = query.bind(id);
    }
    query.execute(db).await.context("deleting index checks")?;
    Ok(())
}

/// Claims up to `limit` index checks due at `now`, oldest first, by moving them on to `until`
/// (so that other instances leave them alone until then); returns their ids and records.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.claim_index_checks", skip_all)]
pub async fn claim_index_checks(db: &platform::db::Pool, now: i64, until: i64, limit: i64) -> anyhow::Result<Vec<(String, Vec<Checked>)>> {
    let rows = sqlx::query(
        "UPDATE leaderboard_index_checks SET check_at = $1 WHERE id IN (\
           SELECT id FROM leaderboard_index_checks WHERE check_at <= $2 ORDER BY check_at LIMIT $3) \
         AND check_at <= $2 RETURNING id, records",
    )
    .bind(until)
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
    .context("claiming index checks")?;
    rows.iter().map(|row| Ok((row.try_get("id")?, checked(&row.try_get::<String, _>("records")?)?))).collect()
}

/// Deletes a claimed index check, unless it was written again since the claim (its `check_at`
/// is no longer `claimed_until`).
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.finish_index_check", skip_all)]
pub async fn finish_index_check(db: &platform::db::Pool, id: &str, claimed_until: i64) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM leaderboard_index_checks WHERE id = $1 AND check_at = $2")
        .bind(id)
        .bind(claimed_until)
        .execute(db)
        .await
        .context("finishing an index check")?;
    Ok(())
}

/// Hands a claimed index check back, due at `now`, unless it was written again since the claim:
/// the claimer failed (it cannot reach the index, say), and another instance may do better.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.release_index_check", skip_all)]
pub async fn release_index_check(db: &platform::db::Pool, id: &str, claimed_until: i64, now: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE leaderboard_index_checks SET check_at = $3 WHERE id = $1 AND check_at = $2")
        .bind(id)
        .bind(claimed_until)
        .bind(now)
        .execute(db)
        .await
        .context("releasing an index check")?;
    Ok(())
}

/// The id of the index check an erasure of `owner` leaves: one per player, so that a retried
/// erasure, which finds no record left to delete, still finds what must leave the index.
pub fn erasure_check_id(owner: &str) -> String {
    format!("erase:{owner}")
}

/// Deletes every record of `owner` on every board and season (erasure); returns the (board,
/// season) pairs that held one. In the same transaction, the erasure's index check (see
/// [`erasure_check_id`]) names them, due at `check_at`, added to what an earlier erasure whose
/// index step has not finished left there.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.erase_owner", skip_all)]
pub async fn erase_owner(db: &platform::db::Database, owner: &str, check_at: i64) -> anyhow::Result<Vec<(String, i64)>> {
    let mut tx = db.begin().await?;
    let rows = sqlx::query("DELETE FROM leaderboard_records WHERE owner_id = $1 RETURNING board_id, season")
        .bind(owner)
        .fetch_all(&mut *tx)
        .await
        .context("erasing records")?;
    let erased: Vec<(String, i64)> =
        rows.iter().map(|r| Ok((r.try_get("board_id")?, r.try_get("season")?))).collect::<anyhow::Result<_>>()?;
    // An archived season counts one record fewer (a live season has no row here yet). In the same
    // transaction as the delete, so a second delivery of the event, which deletes nothing, takes
    // nothing off either.
    sqlx::query("DELETE FROM leaderboard_submission_keys WHERE owner_id = $1")
        .bind(owner)
        .execute(&mut *tx)
        .await
        .context("erasing submission keys")?;
    for (board, season) in &erased {
        sqlx::query("UPDATE leaderboard_seasons SET record_count = record_count - 1 WHERE board_id = $1 AND season = $2")
            .bind(board)
            .bind(season)
            .execute(&mut *tx)
            .await
            .context("updating an archive's record count")?;
    }
    if !erased.is_empty() {
        let id = erasure_check_id(owner);
        let mut records = index_check(&mut *tx, &id).await?.unwrap_or_default();
        for (board, season) in &erased {
            if !records.iter().any(|c| c.board == *board && c.season == *season) {
                records.push(Checked { board: board.clone(), season: *season, owners: vec![owner.to_owned()] });
            }
        }
        put_index_check(&mut *tx, &id, &records, check_at).await?;
    }
    tx.commit().await.context("committing an erasure")?;
    Ok(erased)
}

/// Records that `a` and `b` are friends (`active`) or no longer are, as of `changed_at` (Unix
/// ms, the event's time), both ways; a row holding a later change is kept, since events may
/// arrive out of order. At equal times the removal wins.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.put_friendship", skip_all)]
pub async fn put_friendship(conn: &mut sqlx::AnyConnection, a: &str, b: &str, active: bool, changed_at: i64) -> anyhow::Result<()> {
    for (account, friend) in [(a, b), (b, a)] {
        sqlx::query(
            "INSERT INTO leaderboard_friends (account_id, friend_id, active, changed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (account_id, friend_id) DO UPDATE SET active = excluded.active, changed_at = excluded.changed_at \
             WHERE leaderboard_friends.changed_at < excluded.changed_at \
             OR (leaderboard_friends.changed_at = excluded.changed_at AND excluded.active = 0)",
        )
        .bind(account)
        .bind(friend)
        .bind(i64::from(active))
        .bind(changed_at)
        .execute(&mut *conn)
        .await
        .context("recording a friendship")?;
    }
    Ok(())
}

/// Up to `limit` friends of `account_id`.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.friends_of", skip_all)]
pub async fn friends_of<'e>(db: impl Executor<'e, Database = Any>, account_id: &str, limit: i64) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar("SELECT friend_id FROM leaderboard_friends WHERE account_id = $1 AND active = 1 ORDER BY friend_id LIMIT $2")
        .bind(account_id)
        .bind(limit)
        .fetch_all(db)
        .await
        .context("listing friends")
}

/// Forgets an erased player's friendships, both ways.
#[tracing::instrument(target = "guildhall::db", level = "debug", name = "db leaderboard.forget_friends", skip_all)]
pub async fn forget_friends<'e>(db: impl Executor<'e, Database = Any>, account_id: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM leaderboard_friends WHERE account_id = $1 OR friend_id = $1")
        .bind(account_id)
        .execute(db)
        .await
        .context("forgetting friendships")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::padded_in_list;

    #[test]
    fn in_lists_pad_to_a_power_of_two_with_the_last_value() {
        assert_eq!(padded_in_list(&["a"], 3), (vec!["a"], "$3".to_owned()));
        assert_eq!(padded_in_list(&["a", "b", "c"], 3), (vec!["a", "b", "c", "c"], "$3, $4, $5, $6".to_owned()));
        assert_eq!(padded_in_list(&["a", "b", "c", "d"], 1).0, ["a", "b", "c", "d"]);
        assert_eq!(padded_in_list(&["a", "b"], 1).1, "$1, $2");
    }
}
