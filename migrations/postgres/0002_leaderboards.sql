-- Leaderboards (leaderboard service). The database is the source of truth; Redis sorted sets (or
-- the embedded in-memory index) are rebuilt from these rows whenever they are lost.

CREATE TABLE leaderboards (
    id                TEXT PRIMARY KEY,
    -- 'desc' (higher is better) or 'asc'
    sort_order        TEXT NOT NULL,
    -- 'best', 'set', 'incr' or 'decr'
    operator          TEXT NOT NULL,
    -- cron expression of the season reset, NULL for a board that never resets
    reset_schedule    TEXT,
    min_score         BIGINT,
    max_score         BIGINT,
    -- 1: only the server key may submit scores
    authoritative     BIGINT NOT NULL,
    -- the live season's number and when it started and (for a board that resets) ends
    season            BIGINT NOT NULL,
    season_started_at BIGINT NOT NULL,
    season_ends_at    BIGINT,
    created_at        BIGINT NOT NULL
);

CREATE TABLE leaderboard_records (
    board_id   TEXT NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    season     BIGINT NOT NULL,
    owner_id   TEXT NOT NULL,
    -- the owner's name when the record was written (services do not read each other's tables)
    owner_name TEXT NOT NULL,
    score      BIGINT NOT NULL,
    subscore   BIGINT NOT NULL,
    -- small JSON object, as submitted
    metadata   TEXT,
    -- when the record reached its current value: the earlier record wins a tie
    updated_at BIGINT NOT NULL,
    -- bumped on every change, so that out-of-order index updates cannot regress a record
    version    BIGINT NOT NULL,
    PRIMARY KEY (board_id, season, owner_id)
);
CREATE INDEX leaderboard_records_owner ON leaderboard_records (owner_id);

CREATE TABLE leaderboard_seasons (
    board_id     TEXT NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    season       BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    ended_at     BIGINT NOT NULL,
    record_count BIGINT NOT NULL,
    PRIMARY KEY (board_id, season)
);
