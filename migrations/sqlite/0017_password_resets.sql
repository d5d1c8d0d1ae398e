-- SQLite twin of migrations/postgres/0017_password_resets.sql: the same tables, INTEGER for BIGINT.
--
-- Password reset by email (accounts service). A reset token is stored only as its SHA-256: the
-- token itself exists in the mail and nowhere else. One live token per account: a new request
-- replaces the previous one. The mails to send are jobs that hold the email asked about and no
-- token: the worker that sends a mail makes its token at that moment (see
-- services/accounts/src/password_reset.rs).

CREATE TABLE password_resets (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    -- SHA-256 (hex) of the token mailed
    token_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX password_resets_token ON password_resets (token_hash);
CREATE INDEX password_resets_expires ON password_resets (expires_at);

CREATE TABLE password_reset_mails (
    id            TEXT PRIMARY KEY,
    -- the normalised email asked about, whether or not an account has it
    email         TEXT NOT NULL,
    requested_at  INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at       INTEGER NOT NULL,
    -- a worker's lease: other workers leave the row alone until then
    claimed_until INTEGER
);
CREATE INDEX password_reset_mails_due ON password_reset_mails (next_at);
