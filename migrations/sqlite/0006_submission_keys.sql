-- Idempotency keys of score submissions (the `Idempotency-Key` header): a retried submission of
-- the same player, board, season and key is answered with the record its first try produced
-- instead of being applied again. Written in the transaction that applied the submission; purged
-- after a day.

CREATE TABLE leaderboard_submission_keys (
    board_id        TEXT NOT NULL REFERENCES leaderboards (id) ON DELETE CASCADE,
    season          BIGINT NOT NULL,
    owner_id        TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- the record as that submission left it
    owner_name      TEXT NOT NULL,
    score           BIGINT NOT NULL,
    subscore        BIGINT NOT NULL,
    metadata        TEXT,
    updated_at      BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (board_id, season, owner_id, idempotency_key)
);
CREATE INDEX leaderboard_submission_keys_owner ON leaderboard_submission_keys (owner_id);
CREATE INDEX leaderboard_submission_keys_created ON leaderboard_submission_keys (created_at);
