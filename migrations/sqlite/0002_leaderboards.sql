-- SQLite twin of migrations/postgres/0002_leaderboards.sql: the same tables, INTEGER for BIGINT.

CREATE TABLE leaderboards (
    id                TEXT PRIMARY KEY,
    -- 'desc' (higher is better) or 'asc'
    sort_order        TEXT NOT NULL,
    -- 'best', 'set', 'incr' or 'decr'
    operator          TEXT NOT NULL,
    -- cron expression of the season reset, NULL for a board that never resets
    reset_schedule    TEXT,
    min_score         INTEGER,
    max_score         INTEGER,
    -- 1: only the server key may submit scores
    authoritative     INTEGER NOT NULL,
    -- the live season's number and when it started and (for a board that resets) ends
    season            INTEGER NOT NULL,
    season_started_at INTEGER NOT NULL,
    season_ends_at    INTEGER,
    created_at        INTEGER NOT NULL
);

CREATE TABLE leaderboard_records (
    board_id   TEXT NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    season     INTEGER NOT NULL,
    owner_id   TEXT NOT NULL,
    -- the owner's name when the record was written (services do not read each other's tables)
    owner_name TEXT NOT NULL,
    score      INTEGER NOT NULL,
    subscore   INTEGER NOT NULL,
    -- small JSON object, as submitted
    metadata   TEXT,
    -- when the record reached its current value: the earlier record wins a tie
    updated_at INTEGER NOT NULL,
    -- bumped on every change, so that out-of-order index updates cannot regress a record
    version    INTEGER NOT NULL,
    PRIMARY KEY (board_id, season, owner_id)
);
CREATE INDEX leaderboard_records_owner ON leaderboard_records (owner_id);

CREATE TABLE leaderboard_seasons (
    board_id     TEXT NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    season       INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    ended_at     INTEGER NOT NULL,
    record_count INTEGER NOT NULL,
    PRIMARY KEY (board_id, season)
);
