-- Rank index entries to check against the records (leaderboard service). The transaction that
-- changes records (a batch of submissions, an erasure) also writes a row naming them; it is
-- deleted once the index holds those records as committed. A row still here at `check_at` (the
-- writer crashed, or its index update failed or timed out) is claimed by any instance, which
-- reads those owners' records and corrects their index entries, so the index converges to the
-- database without manual action.

CREATE TABLE leaderboard_index_checks (
    -- a batch's UUID, or 'erase:<owner>' for an erasure (so that a retried erasure finds it)
    id       TEXT PRIMARY KEY,
    -- JSON: [{"board": "...", "season": n, "owners": ["...", ...]}, ...]
    records  TEXT NOT NULL,
    -- Unix ms after which any instance checks these entries (moved on while one is checking)
    check_at BIGINT NOT NULL
);
CREATE INDEX leaderboard_index_checks_due ON leaderboard_index_checks (check_at);
