-- The admin API: named server keys with scopes (platform), the audit log of admin actions
-- (platform), and account-wide bans (accounts service).

-- Server keys made through `POST /v1/admin/keys`. The key itself is shown once, at creation, and
-- never stored: 256 random bits, so its SHA-256 is enough (nothing to brute-force). The
-- bootstrap key (GUILDHALL_ADMIN_KEY) is configuration, not a row.
CREATE TABLE admin_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    -- the key's first characters ('ghk_' and 8 more), shown in lists to tell keys apart
    prefix     TEXT NOT NULL,
    -- SHA-256 of the whole key, hex
    key_hash   TEXT NOT NULL UNIQUE,
    -- space-separated scope names, e.g. 'accounts leaderboards'
    scopes     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- the key that made it: 'bootstrap' or another key's id
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

-- One row per admin action, written in the action's own transaction where it has one.
CREATE TABLE admin_audit (
    -- UUIDv7: time-ordered, the list's cursor
    id         TEXT PRIMARY KEY,
    at         BIGINT NOT NULL,
    -- 'bootstrap' or the key's id, and its name then (kept after the key is revoked)
    key_id     TEXT NOT NULL,
    key_name   TEXT NOT NULL,
    -- e.g. 'accounts.ban', 'leaderboards.record_delete'
    action     TEXT NOT NULL,
    -- what it acted on, e.g. 'account:<id>', 'leaderboard:<id>', 'asset:<id>', 'key:<id>'
    target     TEXT NOT NULL,
    -- JSON object: the action's parameters and what it changed
    detail     TEXT NOT NULL,
    -- the request's x-request-id
    request_id TEXT
);
CREATE INDEX admin_audit_key ON admin_audit (key_id, id);
CREATE INDEX admin_audit_action ON admin_audit (action, id);
CREATE INDEX admin_audit_target ON admin_audit (target, id);

-- Account-wide bans (accounts service): sign-in and refresh are refused while one is in force.
CREATE TABLE account_bans (
    account_id TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    reason     TEXT,
    -- Unix ms; NULL for good
    until      BIGINT,
    -- the key that issued it: 'bootstrap' or a key id, and its name
    issued_by  TEXT NOT NULL,
    issued_by_name TEXT NOT NULL,
    issued_at  BIGINT NOT NULL
);

-- Admin search by username or email prefix (`LIKE 'prefix%'`): with the database's own collation a
-- plain b-tree index cannot serve LIKE; text_pattern_ops compares bytes, which it can.
CREATE INDEX accounts_username_prefix ON accounts (username_key text_pattern_ops);
CREATE INDEX accounts_email_prefix ON accounts (email text_pattern_ops);
